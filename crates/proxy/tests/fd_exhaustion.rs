//! Out of file descriptors: the accept loop backs off instead of spinning, and the
//! daemon serves again by itself once descriptors free up.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// Descriptors the proxy gets: enough to start and serve a few, far fewer than the
/// clients the test opens.
const NOFILE: u32 = 40;

#[test]
fn accept_backs_off_when_out_of_fds_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let config = dir.path().join("config.toml");
    // Held connections must not time out while the test looks at the log.
    std::fs::write(&config, "[ssh_proxy]\nrequest_timeout_secs = 60\n").expect("config");
    let mut child = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(PROXY)
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "text"])
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux)");
    let mut lines = Lines::of(&mut child);
    let proxy = Killed(child);
    let addr = addr_field(&lines.wait_for("listening"));

    // Silent clients occupy one descriptor each in the proxy until it runs out; the
    // kernel still completes their handshakes into the listen backlog.
    let held: Vec<TcpStream> = (0..NOFILE)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    lines.wait_for("accept failed; backing off");
    // An observation window, not synchronisation: while out of descriptors, a loop that
    // backs off 100 ms fails about 10 times a second; a spinning one, thousands of times.
    std::thread::sleep(std::time::Duration::from_secs(1));
    lines.drain_now();
    let failures = lines
        .seen
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        failures <= 30,
        "{failures} failed accepts in 1 s: the accept loop spins"
    );

    let mut late = TcpStream::connect(&addr).expect("connect (queued in the backlog)");
    late.set_read_timeout(Some(WAIT)).expect("timeout");
    late.write_all(b"REQUEST_TUNNEL 424242\n").expect("request");
    drop(held);
    let mut reply = String::new();
    late.read_to_string(&mut reply)
        .expect("reply once descriptors are free");
    assert_eq!(reply, "ERROR Task 424242 not found.\n");
    drop(proxy);
}
