//! systemd integration of the real binary: socket activation (as systemd passes fds, and
//! through Debian's `systemd-socket-activate`), sd_notify messages and watchdog pings on a
//! test `NOTIFY_SOCKET`, journald's native protocol field by field, and bad passed fds.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Starts the proxy the way systemd does: the sockets as fds 3 and 4, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`, and `LISTEN_PID` set to the proxy's own pid (the shell `exec`s it,
/// so `$$` is that pid).
fn socket_activated(
    fd3: OwnedFd,
    fd4: Option<OwnedFd>,
    names: &str,
    count: u32,
    args: &[&str],
) -> Child {
    let script = r#"exec 3<&0 </dev/null; if [ "$HAS_FD4" = 1 ]; then exec 4>&1; fi; exec >/dev/null; LISTEN_PID=$$ exec "$@""#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("sh").arg(PROXY).args(args);
    cmd.env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names)
        .stdin(Stdio::from(fd3));
    match fd4 {
        Some(fd4) => cmd.env("HAS_FD4", "1").stdout(Stdio::from(fd4)),
        None => cmd.env("HAS_FD4", "0").stdout(Stdio::null()),
    };
    cmd.stderr(Stdio::piped())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM");
    cmd.spawn().expect("spawn socket-activated proxy")
}

#[test]
fn adopts_named_plain_and_tls_sockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let state = dir.path().join("state");
    let plain = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tls = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (plain_addr, tls_addr) = (plain.local_addr().expect("a"), tls.local_addr().expect("a"));
    let db_arg = db.to_str().expect("utf8");
    let state_arg = state.to_str().expect("utf8");
    // --port 1 would fail to bind as non-root and collide as root: it must be ignored.
    let args = [
        "serve",
        "--db",
        db_arg,
        "--state-dir",
        state_arg,
        "--bind",
        "127.0.0.1",
        "--port",
        "1",
        "--log-format",
        "text",
    ];
    let mut proxy = Killed(socket_activated(
        plain.into(),
        Some(tls.into()),
        "plain:tls",
        2,
        &args,
    ));
    let mut lines = Lines::of(&mut proxy.0);
    lines.wait_for("using sockets passed by systemd");
    let first = lines.wait_for("listening");
    let second = lines.wait_for("listening");
    assert_eq!(addr_field(&first), plain_addr.to_string());
    assert!(first.contains("transport=plain"), "{first}");
    assert_eq!(addr_field(&second), tls_addr.to_string());
    assert!(second.contains("transport=tls"), "{second}");

    plain_round_trip(&plain_addr.to_string(), 5);
    tls_round_trip(&tls_addr.to_string(), fingerprint(&state), 5);
}

#[test]
fn systemd_socket_activate_starts_the_proxy_on_first_connection() {
    // systemd-socket-activate cannot bind port 0, so it runs in a private network
    // namespace of its own, where fixed ports collide with nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), 2222);
    let state = dir.path().join("state");
    let script = "ip link set lo up && exec systemd-socket-activate -l 127.0.0.1:8002 -l 127.0.0.1:8003 --fdname=plain:tls \"$@\"";
    let mut activator = Killed(
        Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                PROXY,
                "serve",
                "--log-format",
                "text",
                "--db",
            ])
            .arg(&db)
            .arg("--state-dir")
            .arg(&state)
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare + systemd-socket-activate (util-linux, systemd)"),
    );
    let mut lines = Lines::of(&mut activator.0);
    lines.wait_for("Listening on 127.0.0.1:8002");
    lines.wait_for("Listening on 127.0.0.1:8003");
    let netns = format!("--net=/proc/{}/ns/net", activator.0.id());
    let health = |extra: &[&str]| {
        let out = Command::new("nsenter")
            .arg(&netns)
            .arg("--")
            .arg(PROXY)
            .arg("health")
            .args(extra)
            .arg("--db")
            .arg(&db)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("nsenter");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The first connection makes systemd-socket-activate exec the proxy with both fds.
    let (ok, out) = health(&["--addr", "127.0.0.1:8002"]);
    assert!(ok, "plain socket: {out}\n{}", lines.seen.join("\n"));
    lines.wait_for("transport=tls");
    let (ok, out) = health(&["--tls", "--addr", "127.0.0.1:8003"]);
    assert!(ok, "tls socket: {out}\n{}", lines.seen.join("\n"));
}

/// Runs the socket-activated proxy with `fd3` and `LISTEN_FDS=count`; it must fail to
/// start. Returns its stderr.
fn startup_error(fd3: OwnedFd, names: &str, count: u32) -> String {
    let mut child = socket_activated(
        fd3,
        None,
        names,
        count,
        &["serve", "--db", "/nonexistent.db"],
    );
    // stderr closes when the process exits.
    let stderr = Lines::of(&mut child).rest();
    assert!(
        !child.wait().expect("wait").success(),
        "must not start: {stderr}"
    );
    stderr
}

#[test]
fn a_passed_udp_socket_is_a_clear_startup_error() {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let stderr = startup_error(udp.into(), "plain", 1);
    assert!(
        stderr.contains("fd 3") && stderr.contains("not a TCP socket"),
        "{stderr}"
    );
}

#[test]
fn a_closed_passed_fd_is_a_clear_startup_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    // LISTEN_FDS=2, but only fd 3 exists.
    let stderr = startup_error(listener.into(), "plain:tls", 2);
    assert!(
        stderr.contains("fd 4") && stderr.contains("not an open file descriptor"),
        "{stderr}"
    );
}

fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    (socket, path)
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("notify message before timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs the proxy with `envs`; `WATCHDOG_PID` is set to the proxy's own pid as systemd
/// does (the shell `exec`s it).
fn spawn_proxy(args: &[&str], envs: &[(&str, &str)]) -> Killed {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"WATCHDOG_PID=$$ exec "$@""#, "sh", PROXY])
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .env_remove("JOURNAL_STREAM");
    Killed(cmd.spawn().expect("spawn proxy"))
}

#[test]
fn notify_sequence_ready_status_reloading_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let (socket, path) = notify_socket(dir.path());
    let db_arg = db.to_str().expect("utf8");
    let mut proxy = spawn_proxy(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            db_arg,
            "--log-format",
            "text",
        ],
        &[("NOTIFY_SOCKET", path.to_str().expect("utf8"))],
    );
    let mut lines = Lines::of(&mut proxy.0);
    let addr = addr_field(&lines.wait_for("listening"));

    let ready = recv(&socket);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=0 open tunnels"), "{ready}");

    let stream = TcpStream::connect(&addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut stream = stream;
    stream.write_all(b"REQUEST_TUNNEL 5\n").expect("request");
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).expect("reply");
    let status = recv(&socket);
    assert!(
        status.starts_with("STATUS=1 open tunnels, 1 opened"),
        "{status}"
    );

    signal(&proxy.0, "HUP");
    let reloading = recv(&socket);
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let ready_again = recv(&socket);
    assert!(ready_again.lines().any(|l| l == "READY=1"), "{ready_again}");

    drop(stream);
    let closed = recv(&socket);
    assert!(
        closed.starts_with("STATUS=0 open tunnels, 1 opened"),
        "{closed}"
    );
    signal(&proxy.0, "TERM");
    let stopping = recv(&socket);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    lines.rest();
    assert!(
        proxy.0.wait().expect("wait").success(),
        "exit 0 after SIGTERM"
    );
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (socket, path) = notify_socket(dir.path());
    let mut proxy = spawn_proxy(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            "/nonexistent.db",
        ],
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf8")),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let _lines = Lines::of(&mut proxy.0);
    let mut pings = Vec::new();
    while pings.len() < 4 {
        let message = recv(&socket);
        if message.lines().any(|l| l == "WATCHDOG=1") {
            pings.push(Instant::now());
        }
    }
    // Expected every 1 s (half of WATCHDOG_USEC): 3 s for 3 intervals. Pinging at the
    // full interval would take 6 s; the bounds leave room for a loaded machine.
    let span = pings[3] - pings[0];
    assert!(
        span >= Duration::from_millis(2700),
        "pings too fast: {span:?} for 3 intervals"
    );
    assert!(
        span <= Duration::from_millis(4500),
        "pings too slow: {span:?} for 3 intervals"
    );
}

/// Decodes journald's native protocol: `KEY=value\n`, or `KEY\n` + u64 LE length + data + `\n`.
fn journal_fields(mut datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !datagram.is_empty() {
        let nl = datagram
            .iter()
            .position(|&b| b == b'\n')
            .expect("field ends");
        let line = &datagram[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            datagram = &datagram[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let len =
                u64::from_le_bytes(datagram[nl + 1..nl + 9].try_into().expect("len")) as usize;
            let value = &datagram[nl + 9..nl + 9 + len];
            fields.push((key, String::from_utf8_lossy(value).into_owned()));
            datagram = &datagram[nl + 9 + len + 1..];
        }
    }
    fields
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The proxy logging to journald, in a private mount namespace where
/// /run/systemd/journal (tracing-journald's fixed socket directory) is `journal_dir`.
fn with_journal_dir(journal_dir: &Path, db: &Path) -> Killed {
    std::fs::create_dir_all("/run/systemd/journal").expect("mkdir /run/systemd/journal");
    let script = r#"mount --bind "$0" /run/systemd/journal && exec "$@""#;
    Killed(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
            ])
            .arg(journal_dir)
            .arg(PROXY)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--log-format",
                "journald",
                "--db",
            ])
            .arg(db)
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)"),
    )
}

#[test]
fn journald_fields_of_a_tunnel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).expect("mkdir");
    let journal = UnixDatagram::bind(journal_dir.join("socket")).expect("bind journal socket");
    journal.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut proxy = with_journal_dir(&journal_dir, &db);
    let _stderr = Lines::of(&mut proxy.0);
    let next = || {
        let mut buf = vec![0u8; 65536];
        let n = journal
            .recv(&mut buf)
            .expect("journal datagram before timeout");
        journal_fields(&buf[..n])
    };
    let listening = loop {
        let fields = next();
        if field(&fields, "MESSAGE") == Some("listening") {
            break fields;
        }
    };
    assert_eq!(
        field(&listening, "SYSLOG_IDENTIFIER"),
        Some("hakuriver-ssh-proxy")
    );
    let addr = field(&listening, "ADDR").expect("ADDR field").to_owned();

    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let local = stream.local_addr().expect("local").to_string();
    stream.write_all(b"REQUEST_TUNNEL 5\nabc").expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read");
    assert_eq!(got, b"SUCCESS\nabc");

    let closed = loop {
        let fields = next();
        if field(&fields, "MESSAGE") == Some("tunnel closed") {
            break fields;
        }
    };
    assert_eq!(field(&closed, "TASK_ID"), Some("5"));
    assert_eq!(field(&closed, "PEER"), Some(local.as_str()));
    assert!(
        field(&closed, "RUNNER").is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{closed:?}"
    );
    assert_eq!(field(&closed, "BYTES_UP"), Some("3"));
    assert_eq!(field(&closed, "BYTES_DOWN"), Some("3"));
    assert!(
        field(&closed, "DURATION_MS").is_some_and(|d| d.parse::<u64>().is_ok()),
        "{closed:?}"
    );
    assert_eq!(field(&closed, "PRIORITY"), Some("6"), "info is LOG_INFO");
    assert_eq!(
        field(&closed, "SYSLOG_IDENTIFIER"),
        Some("hakuriver-ssh-proxy")
    );
}

#[test]
fn journald_missing_falls_back_to_stderr_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let mut proxy = with_journal_dir(&empty, Path::new("/nonexistent.db"));
    let mut lines = Lines::of(&mut proxy.0);
    lines.wait_for("journald socket unavailable; logging to stderr");
    lines.wait_for("listening");
}

/// A socket named `admin` serves the admin endpoints, not tunnels.
#[test]
fn adopts_a_socket_named_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let plain = TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (plain_addr, admin_addr) = (
        plain.local_addr().expect("a"),
        admin.local_addr().expect("a"),
    );
    let db_arg = db.to_str().expect("utf8");
    let args = ["serve", "--db", db_arg, "--log-format", "text"];
    let mut proxy = Killed(socket_activated(
        plain.into(),
        Some(admin.into()),
        "plain:admin",
        2,
        &args,
    ));
    let mut lines = Lines::of(&mut proxy.0);
    let tunnel = lines.wait_for("transport=plain");
    assert_eq!(addr_field(&tunnel), plain_addr.to_string());
    let line = lines.wait_for("admin listening");
    assert_eq!(addr_field(&line), admin_addr.to_string());

    let mut http = TcpStream::connect(admin_addr).expect("connect admin");
    http.set_read_timeout(Some(WAIT)).expect("timeout");
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    http.read_to_string(&mut reply).expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nok\n"), "{reply}");
    plain_round_trip(&plain_addr.to_string(), 5);
}
