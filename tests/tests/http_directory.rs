//! `[database] kind = "http"`: the proxy binary reads the task directory from HakuRiver
//! 0.3.0's own Host HTTP API (its FastAPI app from the venv, over a database its own
//! models wrote) and routes and refuses as over the SQLite file, but for the documented
//! differences (`/vps/status` lists only active VPS tasks).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_COMPLETED, TASK_NOT_VPS, TASK_OK};
use hakuriver_ssh_tests::haku::{HakuDb, PyHostApi};
use hakuriver_ssh_tests::net::http_get;
use hakuriver_ssh_tests::net::{connect, read_line, RefusedPort};
use hakuriver_ssh_tests::proxy::Proxy;
use hakuriver_ssh_tests::sshd::Sshd;

#[test]
fn tunnels_and_refusals_through_hakurivers_own_host_api() {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    let api = PyHostApi::start(db.path()).unwrap();
    // No database file for the proxy: the path it is given does not exist.
    let proxy = Proxy::builder(std::path::Path::new("/nonexistent/hakuriver.db"))
        .database_section(&format!(
            "[database]\nkind = \"http\"\nurl = \"http://{}\"\ncache_secs = 600\n",
            api.addr()
        ))
        .start()
        .unwrap();
    proxy
        .wait_for_log("Host API readable", Duration::from_secs(30))
        .unwrap();
    api.wait_for_requests("/vps/status", 1, Duration::from_secs(30))
        .unwrap();
    api.wait_for_requests("/nodes", 1, Duration::from_secs(30))
        .unwrap();

    // A tunnel: SUCCESS, then the VPS's sshd speaks.
    let mut stream = connect(proxy.addr()).unwrap();
    stream
        .write_all(format!("REQUEST_TUNNEL {TASK_OK}\n").as_bytes())
        .unwrap();
    assert_eq!(read_line(&mut stream).unwrap(), b"SUCCESS\n");
    let mut banner = [0u8; 8];
    stream.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    drop(stream);

    // Every refusal of the shared table, with the two documented differences.
    for (request, want) in fixtures::refusals() {
        let line = String::from_utf8_lossy(&request).into_owned();
        let id = line
            .strip_prefix("REQUEST_TUNNEL ")
            .and_then(|r| r.trim().parse::<i64>().ok());
        let want = match id {
            Some(id) if id == TASK_NOT_VPS || id == TASK_COMPLETED => {
                format!("Task {id} not found.")
            }
            _ => want,
        };
        let mut stream = connect(proxy.addr()).unwrap();
        stream.write_all(&request).unwrap();
        let got = String::from_utf8_lossy(&read_line(&mut stream).unwrap()).into_owned();
        assert_eq!(
            got,
            format!("ERROR {want}\n"),
            "{line:?}\nproxy log:\n{}",
            proxy.logs()
        );
    }

    // All of it from one fetch: cache_secs is far from over.
    let fetches = (api.requests("/vps/status"), api.requests("/nodes"));
    assert_eq!(fetches, (1, 1), "Host API log:\n{}", api.logs());
}

/// Asks `/readyz` until `done` holds for its answer, for at most 30 s: the cache and stale
/// periods are wall time, so the state changes with the clock, not with an event the
/// test could wait on.
fn readyz_until(addr: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
    hakuriver_ssh_tests::robust::wait_until(Duration::from_secs(30), "/readyz", || {
        let (status, body) = http_get(addr, "/readyz").unwrap();
        Ok(if done(status, &body) {
            Ok((status, body))
        } else {
            Err((status, body))
        })
    })
    .unwrap()
}

#[test]
fn readyz_says_stale_while_the_host_api_is_down_then_503() {
    let db = HakuDb::create(&fixtures::routing_db(1, 2)).unwrap();
    let api = PyHostApi::start(db.path()).unwrap();
    let proxy = Proxy::builder(std::path::Path::new("/nonexistent/hakuriver.db"))
        .args(["--admin-listen", "127.0.0.1:0"])
        .database_section(&format!(
            "[database]\nkind = \"http\"\nurl = \"http://{}\"\ncache_secs = 1\nstale_secs = 2\n",
            api.addr()
        ))
        .start()
        .unwrap();
    proxy
        .wait_for_log("Host API readable", Duration::from_secs(30))
        .unwrap();
    let admin = proxy.admin_addr(Duration::from_secs(30)).unwrap();
    assert_eq!(
        http_get(&admin, "/readyz").unwrap(),
        (200, "ready\n".to_owned())
    );
    drop(api);
    let (_, body) = readyz_until(&admin, |status, body| {
        status == 200 && body.contains("serving stale")
    });
    assert!(
        body.starts_with("ready; database: serving stale task data since "),
        "{body}"
    );
    proxy
        .wait_for_log("Host API unreachable", Duration::from_secs(30))
        .unwrap();
    let (_, body) = readyz_until(&admin, |status, _| status == 503);
    assert!(
        body.starts_with("database not readable: Host API http://"),
        "{body}"
    );
    // Lookups are refused now, as a database error.
    let mut stream = connect(proxy.addr()).unwrap();
    stream
        .write_all(format!("REQUEST_TUNNEL {TASK_OK}\n").as_bytes())
        .unwrap();
    assert_eq!(
        read_line(&mut stream).unwrap(),
        b"ERROR Internal server error during task lookup.\n"
    );
    assert_eq!(proxy.logs().matches("Host API unreachable").count(), 1);
}
