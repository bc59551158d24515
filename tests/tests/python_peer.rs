//! The reference behaviour: HakuRiver 0.3.0's own host proxy and client, run with the
//! same harness and fixtures as our proxy's tests. Documents the exact bytes the Python
//! host sends (its `b'ERROR '` prefix bug included) and proves the harness works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_OK, TASK_PAUSED};
use hakuriver_ssh_tests::{
    exchange_until_eof, random_bytes, request_tunnel, run, run_python_client, sha256_hex,
    ssh_via_tunnel, HakuDb, PyHostProxy, RefusedPort, Sshd,
};

const SSH_TIMEOUT: Duration = Duration::from_secs(60);

struct World {
    sshd: Sshd,
    _refused: RefusedPort,
    _db: HakuDb,
    host: PyHostProxy,
}

fn world() -> World {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    let host = PyHostProxy::start(db.path()).unwrap();
    World {
        sshd,
        _refused: refused,
        _db: db,
        host,
    }
}

#[test]
fn sshd_harness_accepts_direct_login() {
    let sshd = Sshd::start().unwrap();
    let out = run(
        sshd.ssh_direct().arg("echo direct-ok; id -u"),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "direct-ok\n0\n");
}

#[test]
fn python_host_refusals_use_bytes_repr_prefix() {
    let w = world();
    for (request, message) in fixtures::refusals() {
        let reply = exchange_until_eof(w.host.addr(), &request, false).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply),
            format!("b'ERROR '{message}\n"),
            "request {:?}",
            String::from_utf8_lossy(&request)
        );
    }
    // Python's int() takes any size; peewee then fails on the overflow.
    assert_eq!(
        request_tunnel(w.host.addr(), "REQUEST_TUNNEL 99999999999999999999999\n").unwrap(),
        "b'ERROR 'Internal server error during task lookup.\n"
    );
    // EOF before a newline.
    assert_eq!(
        exchange_until_eof(w.host.addr(), b"", true).unwrap(),
        b"b'ERROR 'Error processing request.\n"
    );
}

#[test]
fn python_host_tunnels_ssh_to_running_and_paused_tasks() {
    let w = world();
    for task in [TASK_OK, TASK_PAUSED, fixtures::TASK_SNOWFLAKE] {
        let out = run(
            ssh_via_tunnel(&w.sshd, w.host.addr(), &task.to_string()).arg("echo via-python-host"),
            b"",
            SSH_TIMEOUT,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "task {task}: {}\nhost log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            w.host.logs()
        );
        assert_eq!(out.stdout, b"via-python-host\n");
    }
}

#[test]
fn python_host_transfer_keeps_checksum() {
    let w = world();
    let data = random_bytes(8 << 20, 7);
    let out = run(
        ssh_via_tunnel(&w.sshd, w.host.addr(), &TASK_OK.to_string()).arg("sha256sum"),
        &data,
        SSH_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}  -\n", sha256_hex(&data))
    );
}

#[test]
fn python_client_through_python_host_runs_stdin_commands() {
    let w = world();
    let out = run_python_client(
        w.host.addr(),
        &TASK_OK.to_string(),
        &w.sshd,
        b"echo marker-$((6*7))\nexit\n",
        SSH_TIMEOUT,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("marker-42\n"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_client_cannot_read_python_host_errors() {
    // The documented bug: the client checks startswith(b"ERROR") and the host sends b'ERROR '.
    let w = world();
    let out = run_python_client(w.host.addr(), "424242", &w.sshd, b"", SSH_TIMEOUT).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "Received unexpected response from Host proxy: b'ERROR 'Task 424242 not found."
        ),
        "stdout:\n{stdout}"
    );
    assert!(out.status.success(), "the 0.3.0 client always exits 0");
}
