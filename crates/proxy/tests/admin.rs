//! The admin listener of the real binary: `/metrics` numbers after tunnels and
//! refusals, parsed as an exposition; `/readyz` while the database is missing and while
//! draining; 404/405; a non-loopback admin address refused at start.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// One HTTP/1.1 exchange: (status code, body).
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect admin");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// A parsed exposition: the type of each family and the value of each sample
/// (`name{labels}` as written).
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: HashMap<String, f64>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        let mut helped = std::collections::HashSet::new();
        let mut eof = false;
        for line in text.lines() {
            assert!(!eof, "text after # EOF: {line:?}");
            if line == "# EOF" {
                eof = true;
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "empty help for {name}");
                helped.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "summary",
                        "unknown"
                    ]
                    .contains(&kind),
                    "type {kind:?}"
                );
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                out.types.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with("# UNIT ") {
            } else {
                assert!(!line.starts_with('#'), "unknown comment {line:?}");
                let (key, value) = line.rsplit_once(' ').expect("sample value");
                let name = key.split('{').next().unwrap();
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                    "metric name {name:?}"
                );
                if let Some(labels) = key.strip_prefix(name) {
                    if !labels.is_empty() {
                        assert!(labels.starts_with('{') && labels.ends_with('}'), "{key}");
                        for pair in labels[1..labels.len() - 1].split(',') {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'));
                        }
                    }
                }
                let family = ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| out.types.contains_key(*f)))
                    .unwrap_or(name);
                assert!(
                    out.types.contains_key(family),
                    "sample without TYPE: {line}"
                );
                let value: f64 = value.parse().expect("numeric value");
                assert!(
                    out.samples.insert(key.to_owned(), value).is_none(),
                    "sample twice: {key}"
                );
            }
        }
        assert!(eof, "no # EOF");
        out
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}; have {:?}", self.samples.keys()))
    }

    fn kind(&self, family: &str) -> &str {
        self.types.get(family).map(String::as_str).unwrap_or("none")
    }
}

fn metrics(admin: &str) -> Exposition {
    let (status, body) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    Exposition::parse(&body)
}

const P: &str = "hakuriver_ssh_proxy_";

struct Running {
    proxy: Killed,
    lines: Lines,
    plain: String,
    tls: String,
    admin: String,
}

fn start(dir: &Path, db: &Path) -> Running {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[ssh_proxy]\nshutdown_grace_secs = 30\ntls_handshake_timeout_secs = 5\n",
    )
    .expect("config");
    let mut child = Command::new(PROXY)
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args([
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "text"])
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(db)
        .arg("--state-dir")
        .arg(dir)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let mut lines = Lines::of(&mut child);
    let plain = addr_field(&lines.wait_for("transport=plain"));
    let tls = addr_field(&lines.wait_for("transport=tls"));
    let admin = addr_field(&lines.wait_for("admin listening"));
    Running {
        proxy: Killed(child),
        lines,
        plain,
        tls,
        admin,
    }
}

/// Sends `request` on the plain port and returns the reply line.
fn refused_with(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(request).expect("request");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

#[test]
fn metrics_count_tunnels_refusals_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let mut r = start(dir.path(), &db);

    let before = metrics(&r.admin);
    assert_eq!(before.kind(&format!("{P}open_tunnels")), "gauge");
    assert_eq!(before.kind(&format!("{P}tunnels_opened")), "counter");
    assert_eq!(before.kind(&format!("{P}refusals")), "counter");
    assert_eq!(before.kind(&format!("{P}relayed_bytes")), "counter");
    assert_eq!(
        before.kind(&format!("{P}setup_duration_seconds")),
        "histogram"
    );
    assert_eq!(
        before.kind(&format!("{P}lookup_duration_seconds")),
        "histogram"
    );
    assert_eq!(
        before.kind(&format!("{P}tls_handshake_failures")),
        "counter"
    );
    assert_eq!(before.kind(&format!("{P}database_errors")), "counter");
    assert_eq!(before.kind(&format!("{P}accept_errors")), "counter");
    assert_eq!(before.kind(&format!("{P}build")), "info");
    assert_eq!(
        before.get(&format!(
            "{P}build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(
        before.get(&format!("{P}open_tunnels{{transport=\"plain\"}}")),
        0.0
    );

    // One tunnel, open during a scrape.
    let mut tunnel = TcpStream::connect(&r.plain).expect("connect");
    tunnel.set_read_timeout(Some(WAIT)).expect("timeout");
    tunnel.write_all(b"REQUEST_TUNNEL 5\n").expect("request");
    let mut reply = [0u8; 8];
    tunnel.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply, b"SUCCESS\n");
    let payload = vec![7u8; 10_000];
    tunnel.write_all(&payload).expect("write");
    let mut back = vec![0u8; payload.len()];
    tunnel.read_exact(&mut back).expect("echo");
    let during = metrics(&r.admin);
    assert_eq!(
        during.get(&format!("{P}open_tunnels{{transport=\"plain\"}}")),
        1.0
    );
    assert_eq!(
        during.get(&format!("{P}open_tunnels{{transport=\"tls\"}}")),
        0.0
    );
    assert_eq!(
        during.get(&format!("{P}tunnels_opened_total{{transport=\"plain\"}}")),
        1.0
    );
    assert_eq!(during.get(&format!("{P}setup_duration_seconds_count")), 1.0);
    tunnel.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).expect("EOF");
    r.lines.wait_for("tunnel closed");

    // Refusals of several reasons, each answered before the client reads its line.
    let cases: [(&[u8], &str, &str); 4] = [
        (
            b"REQUEST_TUNNEL 99\n",
            "not_found",
            "ERROR Task 99 not found.\n",
        ),
        (
            b"HELLO\n",
            "invalid_request",
            "ERROR Invalid request format.\n",
        ),
        (
            b"REQUEST_TUNNEL x1\n",
            "invalid_task_id",
            "ERROR Invalid task ID format.\n",
        ),
        (
            b"\x16\x03\x01\x00\x05hello",
            "tls_on_plain_port",
            "ERROR Invalid request format.\n",
        ),
    ];
    for (request, _, reply) in cases {
        assert_eq!(refused_with(&r.plain, request), reply);
    }
    // Not a ClientHello on the TLS port.
    let mut bad_tls = TcpStream::connect(&r.tls).expect("connect tls");
    bad_tls.write_all(b"REQUEST_TUNNEL 5\n").expect("write");
    r.lines.wait_for("TLS handshake failed");

    let after = metrics(&r.admin);
    assert_eq!(
        after.get(&format!("{P}open_tunnels{{transport=\"plain\"}}")),
        0.0
    );
    let moved = payload.len() as f64;
    assert_eq!(
        after.get(&format!("{P}relayed_bytes_total{{direction=\"up\"}}")),
        moved
    );
    assert_eq!(
        after.get(&format!("{P}relayed_bytes_total{{direction=\"down\"}}")),
        moved
    );
    for (_, reason, _) in cases {
        assert_eq!(
            after.get(&format!("{P}refusals_total{{reason=\"{reason}\"}}")),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        after.get(&format!("{P}refusals_total{{reason=\"not_allowed\"}}")),
        0.0
    );
    assert_eq!(
        after.get(&format!(
            "{P}tls_handshake_failures_total{{kind=\"error\"}}"
        )),
        1.0
    );
    assert_eq!(
        after.get(&format!(
            "{P}tls_handshake_failures_total{{kind=\"timeout\"}}"
        )),
        0.0
    );
    // Lookups: task 5 and task 99 (the others were refused before a lookup).
    assert_eq!(after.get(&format!("{P}lookup_duration_seconds_count")), 2.0);
    assert_eq!(after.get(&format!("{P}setup_duration_seconds_count")), 1.0);
    assert_eq!(after.get(&format!("{P}database_errors_total")), 0.0);
    assert_eq!(after.get(&format!("{P}accept_errors_total")), 0.0);
    // No label carries a task id or an address.
    for key in after.samples.keys() {
        assert!(!key.contains("99") && !key.contains("127.0.0.1"), "{key}");
    }
    // Every metric the dashboard and the README name is served.
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for doc in ["packaging/grafana/hakuriver-ssh-proxy.json", "README.md"] {
        let text = std::fs::read_to_string(top.join(doc)).expect("doc");
        let mut named = 0;
        for (at, _) in text.match_indices(P) {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named += 1;
            assert!(
                after.types.contains_key(&name)
                    || after
                        .samples
                        .keys()
                        .any(|k| k.split('{').next() == Some(name.as_str())),
                "{doc} names {name}, which /metrics does not serve"
            );
        }
        assert!(named >= 8, "{doc} names only {named} metrics");
    }
    drop(r.proxy);
}

#[test]
fn readyz_follows_the_database_and_draining() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let mut r = start(dir.path(), &db);

    assert_eq!(http(&r.admin, "GET", "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(
        http(&r.admin, "GET", "/readyz"),
        (200, "ready\n".to_owned())
    );

    let away = dir.path().join("hakuriver.db.away");
    std::fs::rename(&db, &away).expect("hide db");
    let (status, body) = http(&r.admin, "GET", "/readyz");
    assert_eq!(status, 503);
    assert!(body.starts_with("database not readable"), "{body}");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    std::fs::rename(&away, &db).expect("restore db");
    assert_eq!(
        http(&r.admin, "GET", "/readyz"),
        (200, "ready\n".to_owned())
    );

    // Only three paths, only GET.
    assert_eq!(http(&r.admin, "GET", "/").0, 404);
    assert_eq!(http(&r.admin, "GET", "/metrics/x").0, 404);
    assert_eq!(http(&r.admin, "GET", "/debug/pprof").0, 404);
    assert_eq!(http(&r.admin, "POST", "/metrics").0, 405);
    assert_eq!(http(&r.admin, "DELETE", "/readyz").0, 405);

    // Draining: an open tunnel keeps the process up after SIGTERM.
    let mut tunnel = TcpStream::connect(&r.plain).expect("connect");
    tunnel.set_read_timeout(Some(WAIT)).expect("timeout");
    tunnel.write_all(b"REQUEST_TUNNEL 5\n").expect("request");
    let mut reply = [0u8; 8];
    tunnel.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply, b"SUCCESS\n");
    signal(&r.proxy.0, "TERM");
    r.lines.wait_for("draining open connections");
    assert_eq!(
        http(&r.admin, "GET", "/readyz"),
        (503, "draining\n".to_owned())
    );
    assert_eq!(http(&r.admin, "GET", "/healthz").0, 200);
    tunnel.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).expect("EOF");
    r.lines.wait_for("stopped");
}

#[test]
fn non_loopback_admin_address_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("config");
    for addr in ["0.0.0.0:0", "192.0.2.1:9102", "[::]:0"] {
        let out = Command::new(PROXY)
            .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "text"])
            .args(["--admin-listen", addr])
            .arg("--db")
            .arg(&db)
            .env_remove("JOURNAL_STREAM")
            .arg("--config")
            .arg(&empty)
            .stdin(Stdio::null())
            .output()
            .expect("run proxy");
        assert!(!out.status.success(), "{addr}: started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{addr}: {stderr}");
        assert!(lines[0].contains("not a loopback address"), "{stderr}");
        assert!(lines[0].contains("allow_remote"), "{stderr}");
    }
    // allow_remote = true lets it start (on an address that exists here).
    let config = dir.path().join("remote.toml");
    std::fs::write(
        &config,
        "[ssh_proxy.admin]\nallow_remote = true\nlisten = [\"0.0.0.0:0\"]\n",
    )
    .expect("config");
    let mut child = Command::new(PROXY)
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "text"])
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = Lines::of(&mut child);
    let _proxy = Killed(child);
    let line = lines.wait_for("admin listening");
    assert!(line.contains("0.0.0.0:"), "{line}");
}
