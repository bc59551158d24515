//! The bad-input corpus (`tests/corpus/bad-input/manifest.json`) against the built
//! proxy, while a real ssh session through it carries data into a real sshd: every
//! class gets exactly its reply (or, on the TLS port, no plaintext at all), the
//! 2000-half-open-connections class included, the running transfer ends with the right
//! SHA-256, and the proxy still opens new tunnels afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hakuriver_ssh_tests::fixtures::{self, TASK_OK};
use hakuriver_ssh_tests::robust::ssh_via_client;
use hakuriver_ssh_tests::{
    connect, random_bytes, read_line, run, HakuDb, LogBuffer, Process, Proxy, RefusedPort, Sshd,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Short timeouts so the timeout classes finish in seconds; no lookup rate limit and a
/// per-address cap above the 2000 half-open connections (all come from 127.0.0.1).
const CONFIG: &str = "[ssh_proxy]\n\
    request_timeout_secs = 3\n\
    tls_handshake_timeout_secs = 3\n\
    max_connections_per_ip = 4096\n\
    lookups_per_minute_per_ip = 0\n";
const SSH_TIMEOUT: Duration = Duration::from_secs(120);
/// One class, timeouts included, must be answered well within this.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/bad-input")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(corpus_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// How the proxy ended the connection after its reply.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    Eof,
    Reset,
}

/// Everything the proxy sent until it closed, and how it closed. Fails on a hang.
fn read_to_close(stream: &mut TcpStream, mut got: Vec<u8>) -> Result<(Vec<u8>, Ending), String> {
    stream.set_read_timeout(Some(CASE_TIMEOUT)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((got, Ending::Eof)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok((got, Ending::Reset)),
            Err(e) => {
                return Err(format!(
                    "no close within {CASE_TIMEOUT:?} ({e}); got {:?}",
                    String::from_utf8_lossy(&got)
                ))
            }
        }
    }
}

/// Sends one class as its manifest entry says and returns what came back.
fn send_case(addr: SocketAddr, case: &Value, data: Vec<u8>) -> Result<(Vec<u8>, Ending), String> {
    let mut stream = connect(addr).map_err(|e| e.to_string())?;
    match case["send"].as_str().unwrap() {
        "all" => {
            // A writer of its own: the proxy may reply (and stop reading) mid-way
            // through a large input, and we must be reading by then.
            let mut writer = stream.try_clone().unwrap();
            let half_close = case["then"] == "half-close";
            let handle = std::thread::spawn(move || {
                let _ = writer.write_all(&data);
                if half_close {
                    let _ = writer.shutdown(Shutdown::Write);
                }
            });
            let out = read_to_close(&mut stream, Vec::new());
            handle.join().unwrap();
            out
        }
        "one-byte-per-second" => {
            // One byte, then up to a second waiting for a reply, and so on: the read
            // timeout paces the trickle and notices an early reply at once.
            stream
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let mut got = Vec::new();
            for byte in data {
                if stream.write_all(&[byte]).is_err() {
                    break;
                }
                let mut buf = [0u8; 256];
                match stream.read(&mut buf) {
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        break;
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(format!("trickle: {e}")),
                }
            }
            read_to_close(&mut stream, got)
        }
        other => panic!("unknown send mode {other:?}"),
    }
}

/// Only TLS alert records (type 21), if anything: never a plaintext reply.
fn only_tls_alerts(mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let [21, 3, _, hi, lo, ref rest @ ..] = *bytes else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if rest.len() < len {
            return false;
        }
        bytes = &rest[len..];
    }
    true
}

/// Checks one class; `Err` describes the mismatch.
fn check_case(proxy: &Proxy, case: &Value) -> Result<Duration, String> {
    let name = case["name"].as_str().unwrap();
    let data = std::fs::read(corpus_dir().join(case["file"].as_str().unwrap()))
        .map_err(|e| format!("{name}: {e}"))?;
    let sent = data.len();
    let addr = match case["transport"].as_str().unwrap() {
        "plain" => proxy.addr(),
        "tls" => proxy.tls_addr(),
        other => panic!("unknown transport {other:?}"),
    };
    let started = Instant::now();
    let (reply, ending) = send_case(addr, case, data).map_err(|e| format!("{name}: {e}"))?;
    let elapsed = started.elapsed();
    match case["expect"].as_str().unwrap() {
        "reply" => {
            let want = case["reply"].as_str().unwrap();
            if reply != want.as_bytes() {
                return Err(format!(
                    "{name}: reply {:?}, want {want:?}",
                    String::from_utf8_lossy(&reply)
                ));
            }
            // A reset is fine only when we sent more than the proxy drains after its
            // reply (64 KiB): the kernel resets a socket closed with unread input.
            if ending == Ending::Reset && sent <= 64 * 1024 {
                return Err(format!("{name}: connection reset instead of closed"));
            }
        }
        "closed-without-plaintext" => {
            if !only_tls_alerts(&reply) {
                return Err(format!(
                    "{name}: plaintext on the TLS port: {:?}",
                    String::from_utf8_lossy(&reply)
                ));
            }
        }
        other => panic!("unknown expectation {other:?}"),
    }
    Ok(elapsed)
}

/// 2000 connections that never send: all get the timeout reply, and while they are
/// pending the proxy still answers a real request at once.
fn half_open(proxy: &Proxy, spec: &Value) -> Result<(), String> {
    let n = usize::try_from(spec["connections"].as_u64().unwrap()).unwrap();
    let want = spec["reply"].as_str().unwrap();
    let mut streams: Vec<TcpStream> = (0..n).map(|_| connect(proxy.addr()).unwrap()).collect();
    let started = Instant::now();
    let mut probe = connect(proxy.addr()).unwrap();
    probe
        .write_all(format!("REQUEST_TUNNEL {TASK_OK}\n").as_bytes())
        .unwrap();
    let reply = String::from_utf8_lossy(&read_line(&mut probe).unwrap()).into_owned();
    if reply != "SUCCESS\n" {
        return Err(format!("with {n} half-open connections: {reply:?}"));
    }
    let probe_time = started.elapsed();
    drop(probe);
    for (i, stream) in streams.iter_mut().enumerate() {
        let (got, ending) =
            read_to_close(stream, Vec::new()).map_err(|e| format!("half-open #{i}: {e}"))?;
        if got != want.as_bytes() || ending != Ending::Eof {
            return Err(format!(
                "half-open #{i}: {:?} {ending:?}",
                String::from_utf8_lossy(&got)
            ));
        }
    }
    eprintln!(
        "half-open: {n} connections all got {want:?}; a request among them took {probe_time:?}"
    );
    Ok(())
}

#[test]
fn corpus_gets_exact_replies_while_a_tunnel_carries_data() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "only {} classes", cases.len());

    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    let proxy = Proxy::builder(db.path())
        .config(CONFIG)
        .args(["--tls-listen", "127.0.0.1:0"])
        .listeners(2)
        .start()
        .unwrap();
    let home = tempfile::tempdir().unwrap();

    // The tunnel under test: ssh through our client's ProxyCommand mode into sshd,
    // `sha256sum` of a stream we keep feeding until the corpus is done.
    let mut cmd = ssh_via_client(&sshd, proxy.addr(), &TASK_OK.to_string(), &[], home.path());
    cmd.arg("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ssh = Process::spawn("ssh", &mut cmd).unwrap();
    let ssh_out = LogBuffer::drain(ssh.take_stdout().unwrap(), None);
    let ssh_err = LogBuffer::drain(ssh.take_stderr().unwrap(), Some("[ssh] ".into()));
    let mut stdin = ssh.take_stdin().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        let mut hasher = Sha256::new();
        let mut sent = 0usize;
        for chunk in 0u64.. {
            let data = random_bytes(256 << 10, chunk);
            stdin.write_all(&data).unwrap();
            hasher.update(&data);
            sent += data.len();
            // Paces the stream (and ends it once the corpus is done); a bound keeps a
            // stuck test from feeding forever.
            match done_rx.recv_timeout(Duration::from_millis(20)) {
                Err(mpsc::RecvTimeoutError::Timeout) if chunk < 20_000 => {}
                _ => break,
            }
        }
        drop(stdin);
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (sent, digest)
    });
    proxy
        .wait_for_log("tunnel opened", SSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nssh: {}", ssh_err.text()));

    // Every class at once (each on its own thread), then the half-open flood.
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|case| {
                let proxy = &proxy;
                scope.spawn(move || (case, check_case(proxy, case)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let half_open_result = half_open(&proxy, &manifest["half_open"]);

    done_tx.send(()).unwrap();
    let (sent, digest) = feeder.join().unwrap();
    let status = ssh.wait_timeout(SSH_TIMEOUT).unwrap();
    let out = ssh_out.wait_eof(SSH_TIMEOUT).unwrap();

    let mut failures = Vec::new();
    for (case, result) in &results {
        match result {
            Ok(elapsed) => eprintln!("ok {:<40} {elapsed:?}", case["name"].as_str().unwrap()),
            Err(e) => failures.push(e.clone()),
        }
    }
    if let Err(e) = half_open_result {
        failures.push(e);
    }
    assert!(
        failures.is_empty(),
        "{} of {} classes failed:\n{}\nproxy log tail:\n{}",
        failures.len(),
        cases.len() + 1,
        failures.join("\n"),
        tail(&proxy.logs(), 40)
    );

    assert!(status.success(), "ssh: {status}: {}", ssh_err.text());
    assert_eq!(
        out,
        format!("{digest}  -\n"),
        "tunnel checksum over {sent} bytes"
    );
    eprintln!("tunnel carried {sent} bytes during the corpus, sha256 {digest}");

    // Still serving: a fresh ssh session through a new tunnel.
    let fresh = run(
        ssh_via_client(&sshd, proxy.addr(), &TASK_OK.to_string(), &[], home.path())
            .arg("echo still-serving"),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert!(
        fresh.status.success(),
        "after the corpus: {}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&fresh.stdout), "still-serving\n");
    assert!(
        proxy.wait_exit(Duration::from_millis(1)).is_err(),
        "proxy exited"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
