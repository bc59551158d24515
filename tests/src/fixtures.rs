//! A HakuRiver database with one task per routing outcome, and the reply each must get.
//!
//! Both the reference peer (HakuRiver's own host proxy) and our proxy are checked
//! against the same table; they differ only in the error prefix (`b'ERROR '` vs `ERROR `).

use serde_json::{json, Value};

/// A running VPS task on an online node whose ssh_port is the test sshd.
pub const TASK_OK: i64 = 1;
/// A `command` task.
pub const TASK_NOT_VPS: i64 = 2;
/// A VPS task with status `completed`.
pub const TASK_COMPLETED: i64 = 3;
/// A running VPS task on an offline node.
pub const TASK_NODE_OFFLINE: i64 = 4;
/// A running VPS task with `ssh_port` NULL.
pub const TASK_NO_PORT: i64 = 5;
/// A running VPS task with no assigned node.
pub const TASK_NO_NODE: i64 = 6;
/// A running VPS task on a node whose url has no `://`.
pub const TASK_BAD_URL: i64 = 7;
/// A running VPS task whose ssh_port refuses connections.
pub const TASK_REFUSED: i64 = 8;
/// A `paused` VPS task routed to the test sshd (paused counts as active).
pub const TASK_PAUSED: i64 = 9;
/// A running VPS task with `ssh_port` 0.
pub const TASK_PORT_ZERO: i64 = 10;
/// A HakuRiver-style snowflake id (large i64) routed to the test sshd.
pub const TASK_SNOWFLAKE: i64 = 7_323_718_749_301_768_192;

/// The seed spec for [`crate::HakuDb::create`]: nodes `n1` (online, loopback), `down`
/// (offline), `weird` (url without scheme) and the tasks above. `sshd_port` is where
/// routable tasks point; `refused_port` a port that refuses ([`crate::RefusedPort`]).
pub fn routing_db(sshd_port: u16, refused_port: u16) -> Value {
    let vps = |id: i64, node: Value, port: Value, status: &str| json!({"task_id": id, "task_type": "vps", "status": status, "assigned_node": node, "ssh_port": port});
    json!({
        "nodes": [
            {"hostname": "n1", "url": "http://127.0.0.1:8001", "status": "online"},
            {"hostname": "down", "url": "http://127.0.0.1:8001", "status": "offline"},
            {"hostname": "weird", "url": "127.0.0.1:8001", "status": "online"},
        ],
        "tasks": [
            vps(TASK_OK, "n1".into(), sshd_port.into(), "running"),
            {"task_id": TASK_NOT_VPS, "task_type": "command", "status": "running", "assigned_node": "n1"},
            vps(TASK_COMPLETED, "n1".into(), sshd_port.into(), "completed"),
            vps(TASK_NODE_OFFLINE, "down".into(), sshd_port.into(), "running"),
            vps(TASK_NO_PORT, "n1".into(), Value::Null, "running"),
            vps(TASK_NO_NODE, Value::Null, sshd_port.into(), "running"),
            vps(TASK_BAD_URL, "weird".into(), sshd_port.into(), "running"),
            vps(TASK_REFUSED, "n1".into(), refused_port.into(), "running"),
            vps(TASK_PAUSED, "n1".into(), sshd_port.into(), "paused"),
            vps(TASK_PORT_ZERO, "n1".into(), 0.into(), "running"),
            vps(TASK_SNOWFLAKE, "n1".into(), sshd_port.into(), "running"),
        ],
    })
}

/// `(request bytes, error message)` for every refusal both proxies word the same way;
/// the reply is `<prefix><message>\n` followed by EOF.
pub fn refusals() -> Vec<(Vec<u8>, String)> {
    let req = |id: &str| format!("REQUEST_TUNNEL {id}\n").into_bytes();
    vec![
        (req("424242"), "Task 424242 not found.".into()),
        (
            req(&TASK_NOT_VPS.to_string()),
            format!("Task {TASK_NOT_VPS} is not a VPS task."),
        ),
        (
            req(&TASK_COMPLETED.to_string()),
            format!("VPS task {TASK_COMPLETED} is not active (status: completed)."),
        ),
        (
            req(&TASK_NODE_OFFLINE.to_string()),
            format!("Assigned node for VPS task {TASK_NODE_OFFLINE} is not online."),
        ),
        (
            req(&TASK_NO_PORT.to_string()),
            format!("VPS task {TASK_NO_PORT} has no SSH port assigned."),
        ),
        (
            req(&TASK_PORT_ZERO.to_string()),
            format!("VPS task {TASK_PORT_ZERO} has no SSH port assigned."),
        ),
        (
            req(&TASK_NO_NODE.to_string()),
            format!("VPS task {TASK_NO_NODE} has no assigned node."),
        ),
        (
            req(&TASK_BAD_URL.to_string()),
            "Error parsing runner URL for node weird.".into(),
        ),
        (
            req(&TASK_REFUSED.to_string()),
            format!("Connection refused by VPS task {TASK_REFUSED} on node n1."),
        ),
        (req("abc"), "Invalid task ID format.".into()),
        (req("-1"), "Invalid task ID format.".into()),
        (req(""), "Invalid task ID format.".into()),
        (
            b"request_tunnel 1\n".to_vec(),
            "Invalid request format.".into(),
        ),
        (
            b"GET / HTTP/1.1\r\n".to_vec(),
            "Invalid request format.".into(),
        ),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
            "Invalid request format.".into(),
        ),
    ]
}
