//! A capturing fake TLS server: after a failed certificate verification the client has
//! sent not one byte of its request (nor of its API token). The same server with the
//! right pin does receive the request, which shows the capture would see it. A
//! capturing plain-TCP server never receives a byte of the token, and what a fake Host
//! writes in its `ERROR` line reaches the terminal with every escape made visible.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hakuriver_tunnel::tls::Fingerprint;

const CLIENT: &str = env!("CARGO_BIN_EXE_hakuriver-ssh");
const TASK: &str = "7323718749301768192";
const WAIT: Duration = Duration::from_secs(20);

/// What the fake server saw: every raw byte, and the plaintext it decrypted.
struct Capture {
    raw: Vec<u8>,
    plaintext: Vec<u8>,
}

/// Reads from the socket and keeps a copy of every byte.
struct Tee<'a> {
    sock: &'a mut TcpStream,
    raw: &'a mut Vec<u8>,
}

impl std::io::Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.raw.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl std::io::Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

/// A one-connection TLS server with a fresh self-signed certificate. It answers nothing
/// and records until the client goes away or has sent its request line.
fn fake_server() -> (u16, Fingerprint, JoinHandle<Capture>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let fingerprint = Fingerprint::of(certified.cert.der());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut conn = rustls::ServerConnection::new(Arc::new(config)).expect("conn");
        let (mut raw, mut plaintext) = (Vec::new(), Vec::new());
        loop {
            let mut io = Tee {
                sock: &mut sock,
                raw: &mut raw,
            };
            match conn.complete_io(&mut io) {
                Ok((0, 0)) | Err(_) => break,
                Ok(_) => {}
            }
            let mut buf = [0u8; 4096];
            match conn.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    plaintext.extend_from_slice(&buf[..n]);
                    // The request line is all a client sends before the reply.
                    if plaintext.ends_with(b"\n") {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        Capture { raw, plaintext }
    });
    (port, fingerprint, server)
}

fn client(port: u16, pin: &str) -> Output {
    client_with(port, &["--tls", "--fingerprint", pin], &[])
}

/// The client at `127.0.0.1:port` with `flags`, `env` and a fresh `$HOME`.
fn client_with(port: u16, flags: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().expect("home");
    let port = port.to_string();
    Command::new(CLIENT)
        .args(["--host", "127.0.0.1", "--proxy-port", &port])
        // The lines compared here are the token's path; a resume offer (a public key)
        // would only add a word to them.
        .arg("--no-resume")
        .args(flags)
        .arg(TASK)
        .env("HOME", home.path())
        .env_remove("HAKURIVER_CONFIG")
        .env_remove("KOHAKURIVER_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run hakuriver-ssh")
}

/// A KohakuRiver API token as `kohakuriver auth login` stores it.
const TOKEN: &str = "kr-secret-9fQ2vL7xW1mZ4cR8tB6nK3pJ0sD5hG";

/// A one-connection plain-TCP server that records every byte until the first newline,
/// then answers `reply` and closes.
fn plain_server(reply: &'static [u8]) -> (u16, JoinHandle<Vec<u8>>) {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.contains(&b'\n') {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = sock.write_all(reply);
        let _ = sock.shutdown(std::net::Shutdown::Write);
        // Read on until the client closes, so our close is a FIN, not a reset.
        while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
        seen
    });
    (port, server)
}

#[test]
fn a_token_never_crosses_plain_tcp() {
    let (port, server) =
        plain_server(b"ERROR Authentication required: this Host admits KohakuRiver users only.\n");
    let out = client_with(port, &["-vv"], &[("KOHAKURIVER_TOKEN", TOKEN)]);
    let seen = server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The plain request, as HakuRiver's host would get it; no byte of the token.
    assert_eq!(
        seen,
        format!("REQUEST_TUNNEL {TASK}\n").as_bytes(),
        "{stderr}"
    );
    assert!(!contains(&seen, TOKEN.as_bytes()));
    assert!(!contains(&seen, b"kr-secret"));
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    let refusal = stderr
        .lines()
        .find(|l| l.starts_with("Proxy Error: "))
        .unwrap_or_else(|| panic!("no refusal line: {stderr}"));
    assert!(refusal.contains("add --tls"), "{refusal}");
    assert!(!stderr.contains(TOKEN), "the token was logged: {stderr}");
}

#[test]
fn a_wrong_pin_sees_no_byte_of_the_token() {
    let (port, presented, server) = fake_server();
    let wrong = format!("sha256:{}", "cd".repeat(32));
    let out = client_with(
        port,
        &["-vv", "--tls", "--fingerprint", &wrong],
        &[("KOHAKURIVER_TOKEN", TOKEN)],
    );
    let capture = server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains(&presented.to_string()), "{stderr}");
    assert!(capture.plaintext.is_empty(), "decrypted something");
    assert!(!contains(&capture.raw, TOKEN.as_bytes()));
    assert!(!stderr.contains(TOKEN), "the token was logged: {stderr}");

    // With the right pin the token is in the (decrypted) request, and only there.
    let (port, presented, server) = fake_server();
    let out = client_with(
        port,
        &["-vv", "--tls", "--fingerprint", &presented.to_string()],
        &[("KOHAKURIVER_TOKEN", TOKEN)],
    );
    let capture = server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&capture.plaintext),
        format!("HAKURIVER_SSH/1 TUNNEL task={TASK} token={TOKEN}\n"),
        "{stderr}"
    );
    assert!(!contains(&capture.raw, TOKEN.as_bytes()));
    assert!(!stderr.contains(TOKEN), "the token was logged: {stderr}");
}

#[test]
fn escapes_from_a_hostile_host_never_reach_the_terminal() {
    let (port, server) = plain_server(
        b"ERROR \x1b]0;owned\x07\x1b[2J\x1b[31mTask\r 1\x08\x00 not found.\x9b\xe2\x80\xae\n",
    );
    let out = client_with(port, &[], &[]);
    server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        !stderr
            .trim_end_matches('\n')
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'),
        "control characters on the terminal: {stderr:?}"
    );
    assert!(
        stderr.starts_with("Proxy Error: \\033]0;owned\\007\\033[2J"),
        "{stderr:?}"
    );
    assert!(out.stdout.is_empty());

    // A reply that is not the protocol at all is quoted the same way.
    let (port, server) = plain_server(b"\x1b[2JHTTP/1.1 400 Bad\x1b]0;x\x07\n");
    let out = client_with(port, &[], &[]);
    server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr
            .trim_end_matches('\n')
            .chars()
            .any(|c| c.is_control()),
        "{stderr:?}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn nothing_about_the_task_is_sent_after_a_failed_verification() {
    let (port, presented, server) = fake_server();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = client(port, &wrong);
    let capture = server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&presented.to_string()) && stderr.contains(&wrong),
        "{stderr}"
    );
    assert!(
        capture.plaintext.is_empty(),
        "decrypted {:?}",
        String::from_utf8_lossy(&capture.plaintext)
    );
    assert!(!capture.raw.is_empty(), "the client did reach the server");
    assert!(!contains(&capture.raw, TASK.as_bytes()));
    assert!(out.stdout.is_empty());
}

#[test]
fn the_same_capture_sees_the_request_once_the_pin_matches() {
    let (port, presented, server) = fake_server();
    let out = client(port, &presented.to_string());
    let capture = server.join().expect("server");
    assert_eq!(
        String::from_utf8_lossy(&capture.plaintext),
        format!("REQUEST_TUNNEL {TASK}\n"),
        "client stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Encrypted on the wire all the same.
    assert!(!contains(&capture.raw, b"REQUEST_TUNNEL"));
}
