//! End to end: the built `hakuriver-ssh-proxy` routing to a real OpenSSH sshd (the
//! VPS) by rows that HakuRiver 0.3.0's own models wrote, used by HakuRiver's own client,
//! by `ssh` with an independent ProxyCommand, and by raw sockets for exact reply bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_OK, TASK_PAUSED, TASK_SNOWFLAKE};
use hakuriver_ssh_tests::{
    connect, exchange_until_eof, json, random_bytes, read_line, request_tunnel, run, run_proxy_cli,
    run_python_client, sha256_hex, ssh_via_tunnel, HakuDb, Proxy, RefusedPort, Sshd,
};

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

struct World {
    sshd: Sshd,
    _refused: RefusedPort,
    db: HakuDb,
    proxy: Proxy,
}

fn world_with(config: &str) -> World {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    let proxy = Proxy::builder(db.path()).config(config).start().unwrap();
    World {
        sshd,
        _refused: refused,
        db,
        proxy,
    }
}

fn world() -> World {
    world_with("")
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn python_client_runs_commands_through_our_proxy() {
    let w = world();
    let out = run_python_client(
        w.proxy.addr(),
        &TASK_OK.to_string(),
        &w.sshd,
        b"echo marker-$((6*7)); hostname >/dev/null\nexit\n",
        SSH_TIMEOUT,
    )
    .unwrap();
    let stdout = utf8(&out.stdout);
    assert!(
        stdout.contains("marker-42\n"),
        "stdout:\n{stdout}\nstderr:\n{}\nproxy log:\n{}",
        utf8(&out.stderr),
        w.proxy.logs()
    );
}

#[test]
fn python_client_reads_our_error_replies() {
    // HakuRiver's client can only parse `ERROR ` (its own host's b'ERROR ' defeats it).
    let w = world();
    let out = run_python_client(w.proxy.addr(), "424242", &w.sshd, b"", SSH_TIMEOUT).unwrap();
    let stdout = utf8(&out.stdout);
    assert!(
        stdout.contains("Host proxy returned error: Task 424242 not found."),
        "stdout:\n{stdout}"
    );
}

#[test]
fn ssh_reaches_running_paused_and_snowflake_tasks() {
    let w = world();
    for task in [TASK_OK, TASK_PAUSED, TASK_SNOWFLAKE] {
        let out = run(
            ssh_via_tunnel(&w.sshd, w.proxy.addr(), &task.to_string())
                .arg("echo via-proxy-$((1+1))"),
            b"",
            SSH_TIMEOUT,
        )
        .unwrap();
        assert!(
            out.status.success(),
            "task {task}: ssh {}: {}\nproxy log:\n{}",
            out.status,
            utf8(&out.stderr),
            w.proxy.logs()
        );
        assert_eq!(utf8(&out.stdout), "via-proxy-2\n");
    }
}

#[test]
fn transfer_50_mib_each_way_keeps_sha256() {
    let w = world();
    let data = random_bytes(50 << 20, 0x5eed);
    let expected = sha256_hex(&data);

    let up = run(
        ssh_via_tunnel(&w.sshd, w.proxy.addr(), &TASK_OK.to_string()).arg("sha256sum"),
        &data,
        SSH_TIMEOUT,
    )
    .unwrap();
    assert!(up.status.success(), "upload: {}", utf8(&up.stderr));
    assert_eq!(
        utf8(&up.stdout),
        format!("{expected}  -\n"),
        "upload checksum"
    );

    // The "VPS" shares our filesystem, so the download source is a file we wrote.
    let file = w.sshd.dir().join("download.bin");
    std::fs::write(&file, &data).unwrap();
    let down = run(
        ssh_via_tunnel(&w.sshd, w.proxy.addr(), &TASK_OK.to_string())
            .arg(format!("cat {}", file.display())),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert!(down.status.success(), "download: {}", utf8(&down.stderr));
    assert_eq!(down.stdout.len(), data.len(), "download length");
    assert_eq!(sha256_hex(&down.stdout), expected, "download checksum");
}

#[test]
fn refusals_reply_exact_error_line_then_close() {
    let w = world();
    for (request, message) in fixtures::refusals() {
        let reply = exchange_until_eof(w.proxy.addr(), &request, false).unwrap();
        assert_eq!(
            utf8(&reply),
            format!("ERROR {message}\n"),
            "request {:?}",
            utf8(&request)
        );
    }
}

#[test]
fn overflowing_task_id_is_an_invalid_format() {
    let w = world();
    for id in ["99999999999999999999999", "9223372036854775808"] {
        let reply = exchange_until_eof(
            w.proxy.addr(),
            format!("REQUEST_TUNNEL {id}\n").as_bytes(),
            false,
        )
        .unwrap();
        assert_eq!(utf8(&reply), "ERROR Invalid task ID format.\n", "id {id}");
    }
}

#[test]
fn eof_before_newline_is_a_processing_error() {
    let w = world();
    assert_eq!(
        utf8(&exchange_until_eof(w.proxy.addr(), b"", true).unwrap()),
        "ERROR Error processing request.\n"
    );
}

#[test]
fn oversized_request_line_is_refused() {
    let w = world();
    let mut stream = connect(w.proxy.addr()).unwrap();
    let junk = vec![b'7'; 70 * 1024];
    // The proxy may close while we are still writing; only its reply matters.
    let _ = stream
        .write_all(b"REQUEST_TUNNEL ")
        .and_then(|()| stream.write_all(&junk));
    assert_eq!(
        utf8(&read_line(&mut stream).unwrap()),
        "ERROR Error processing request.\n"
    );
}

#[test]
fn lenient_request_forms_succeed_and_no_banner_byte_is_lost() {
    let w = world();
    for line in [
        "REQUEST_TUNNEL 1\n",
        "REQUEST_TUNNEL  1 \n",
        "REQUEST_TUNNEL 1\r\n",
        "REQUEST_TUNNEL 0001\n",
    ] {
        let mut stream = connect(w.proxy.addr()).unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        assert_eq!(
            utf8(&read_line(&mut stream).unwrap()),
            "SUCCESS\n",
            "request {line:?}"
        );
        // sshd speaks first: its banner must follow SUCCESS intact.
        let banner = utf8(&read_line(&mut stream).unwrap());
        assert!(
            banner.starts_with("SSH-2.0-OpenSSH"),
            "after {line:?}: banner {banner:?}"
        );
    }
}

#[test]
fn request_timeout_from_config() {
    let w = world_with("[ssh_proxy]\nrequest_timeout_secs = 1\n");
    let mut stream = connect(w.proxy.addr()).unwrap();
    stream.write_all(b"REQUEST_TUN").unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(utf8(&reply), "ERROR Timeout waiting for request.\n");
}

#[test]
fn database_changes_apply_to_the_next_request() {
    let w = world();
    let ok = format!("REQUEST_TUNNEL {TASK_OK}\n");
    assert_eq!(request_tunnel(w.proxy.addr(), &ok).unwrap(), "SUCCESS\n");

    w.db.update_task(TASK_OK, json!({"status": "completed"}))
        .unwrap();
    assert_eq!(
        request_tunnel(w.proxy.addr(), &ok).unwrap(),
        format!("ERROR VPS task {TASK_OK} is not active (status: completed).\n")
    );

    w.db.update_task(TASK_OK, json!({"status": "running"}))
        .unwrap();
    w.db.update_node("n1", json!({"status": "offline"}))
        .unwrap();
    assert_eq!(
        request_tunnel(w.proxy.addr(), &ok).unwrap(),
        format!("ERROR Assigned node for VPS task {TASK_OK} is not online.\n")
    );

    w.db.update_node("n1", json!({"status": "online"})).unwrap();
    w.db.apply(
        &json!({"tasks": [{"task_id": 555, "task_type": "vps", "status": "running",
        "assigned_node": "n1", "ssh_port": w.sshd.port()}]}),
    )
    .unwrap();
    assert_eq!(request_tunnel(w.proxy.addr(), &ok).unwrap(), "SUCCESS\n");
    assert_eq!(
        request_tunnel(w.proxy.addr(), "REQUEST_TUNNEL 555\n").unwrap(),
        "SUCCESS\n"
    );
}

#[test]
fn half_close_passes_both_ways() {
    // A runner that reads to EOF, then answers and closes: works only if our FIN reaches
    // it and its reply and FIN come back (HakuRiver's Python host fails this).
    let w = world();
    let runner = TcpListener::bind("127.0.0.1:0").unwrap();
    let runner_port = runner.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = runner.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(format!("got {} bytes {}", got.len(), sha256_hex(&got)).as_bytes())
            .unwrap();
    });
    w.db.apply(
        &json!({"tasks": [{"task_id": 600, "task_type": "vps", "status": "running",
        "assigned_node": "n1", "ssh_port": runner_port}]}),
    )
    .unwrap();

    let mut stream = connect(w.proxy.addr()).unwrap();
    stream.write_all(b"REQUEST_TUNNEL 600\n").unwrap();
    assert_eq!(utf8(&read_line(&mut stream).unwrap()), "SUCCESS\n");
    let payload = random_bytes(1 << 20, 600);
    stream.write_all(&payload).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply,
        format!("got {} bytes {}", payload.len(), sha256_hex(&payload))
    );
    server.join().unwrap();
}

#[test]
fn concurrent_ssh_sessions() {
    let w = world();
    let sessions: Vec<_> = (0..8)
        .map(|i| {
            let mut cmd = ssh_via_tunnel(&w.sshd, w.proxy.addr(), &TASK_OK.to_string());
            cmd.arg(format!("echo session-{i}"));
            std::thread::spawn(move || (i, run(&mut cmd, b"", SSH_TIMEOUT).unwrap()))
        })
        .collect();
    for handle in sessions {
        let (i, out) = handle.join().unwrap();
        assert!(out.status.success(), "session {i}: {}", utf8(&out.stderr));
        assert_eq!(utf8(&out.stdout), format!("session-{i}\n"));
    }
}

#[test]
fn sigterm_drains_open_tunnel_then_exits_zero() {
    let w = world_with("[ssh_proxy]\nshutdown_grace_secs = 120\n");
    let mut stream = connect(w.proxy.addr()).unwrap();
    stream
        .write_all(format!("REQUEST_TUNNEL {TASK_OK}\n").as_bytes())
        .unwrap();
    assert_eq!(utf8(&read_line(&mut stream).unwrap()), "SUCCESS\n");
    assert!(utf8(&read_line(&mut stream).unwrap()).starts_with("SSH-2.0-"));

    w.proxy
        .signal(hakuriver_ssh_tests::Signal::SIGTERM)
        .unwrap();
    // The open tunnel still relays: sshd answers our banner with its key exchange init.
    stream.write_all(b"SSH-2.0-hakuriver_test\r\n").unwrap();
    let mut kexinit = [0u8; 64];
    stream.read_exact(&mut kexinit).unwrap();
    assert!(
        w.proxy.wait_exit(Duration::from_millis(1)).is_err(),
        "exited with a tunnel open"
    );

    // Closing the last tunnel ends the drain long before the 120 s grace period.
    drop(stream);
    let status = w.proxy.wait_exit(EXIT_TIMEOUT).unwrap();
    assert!(
        status.success(),
        "exit status {status}\nlog:\n{}",
        w.proxy.logs()
    );
}

#[test]
fn sigterm_when_idle_exits_zero() {
    let w = world();
    let status = w.proxy.terminate(EXIT_TIMEOUT).unwrap();
    assert!(
        status.success(),
        "exit status {status}\nlog:\n{}",
        w.proxy.logs()
    );
}

#[test]
fn health_subcommand_checks_a_live_proxy() {
    let w = world();
    let out = run_proxy_cli(
        ["health", "--addr", &w.proxy.addr().to_string()],
        EXIT_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.status.success(),
        "health: {}{}",
        utf8(&out.stdout),
        utf8(&out.stderr)
    );
    assert_eq!(
        utf8(&out.stdout).lines().count(),
        1,
        "one line: {:?}",
        utf8(&out.stdout)
    );

    let refused = RefusedPort::new().unwrap();
    let out = run_proxy_cli(
        ["health", "--addr", &format!("127.0.0.1:{}", refused.port())],
        EXIT_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "health against a closed port: {}",
        utf8(&out.stdout)
    );
}

#[test]
fn check_subcommand_accepts_hakuriver_config() {
    let w = world();
    let config = w.proxy.config_path().to_str().unwrap().to_string();
    let db = w.db.path().to_str().unwrap().to_string();
    let out = run_proxy_cli(["check", "-c", &config, "--db", &db], EXIT_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "check: {}{}",
        utf8(&out.stdout),
        utf8(&out.stderr)
    );
    assert!(
        utf8(&out.stdout).contains(&db),
        "check names the DB: {}",
        utf8(&out.stdout)
    );
}
