//! TLS listeners of the real binary: certificate rotation by SIGHUP without dropping
//! open tunnels, a broken new certificate keeping the old one, and the wrong protocol on
//! either kind of port. Certificates are minted by rcgen at test time.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use hakuriver_tunnel::tls::{client_config, ClientTrust, Fingerprint};

mod common;
use common::*;

/// A fresh self-signed certificate for `localhost`, written as PEM files.
fn mint(cert: &Path, key: &Path) -> Fingerprint {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    std::fs::write(cert, certified.cert.pem()).expect("write cert");
    std::fs::write(key, certified.key_pair.serialize_pem()).expect("write key");
    Fingerprint::of(certified.cert.der())
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: &str, pin: Fingerprint) -> std::io::Result<Tls> {
    let config = client_config(&ClientTrust {
        pins: vec![pin],
        ..Default::default()
    })
    .expect("config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::clone(&config), name).expect("client");
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake now so a wrong pin fails here.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn echo(stream: &mut Tls, text: &[u8]) {
    stream.write_all(text).expect("write");
    stream.flush().expect("flush");
    let mut back = vec![0u8; text.len()];
    stream.read_exact(&mut back).expect("echo");
    assert_eq!(back, text);
}

fn open_tunnel(addr: &str, pin: Fingerprint) -> Tls {
    let mut stream = tls_connect(addr, pin).expect("TLS handshake with the pinned certificate");
    stream.write_all(b"REQUEST_TUNNEL 5\n").expect("request");
    stream.flush().expect("flush");
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply, b"SUCCESS\n");
    stream
}

struct Setup {
    _dir: tempfile::TempDir,
    proxy: Killed,
    lines: Lines,
    plain: String,
    tls: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    first: Fingerprint,
}

fn start(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database(dir.path(), echo_runner());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = mint(&cert, &key);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[ssh_proxy]\ntls_handshake_timeout_secs = 0.5\n").expect("config");
    let mut child = Command::new(PROXY)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(extra)
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let mut lines = Lines::of(&mut child);
    let plain = addr_field(&lines.wait_for("transport=plain"));
    let tls = addr_field(&lines.wait_for("transport=tls"));
    lines.wait_for(&format!("TLS certificate loaded fingerprint={first}"));
    Setup {
        _dir: dir,
        proxy: Killed(child),
        lines,
        plain,
        tls,
        cert,
        key,
        first,
    }
}

#[test]
fn sighup_rotates_the_certificate_without_dropping_tunnels() {
    let mut s = start(&[]);
    let mut old_tunnel = open_tunnel(&s.tls, s.first);
    echo(&mut old_tunnel, b"before rotation");

    let second = mint(&s.cert, &s.key);
    signal(&s.proxy.0, "HUP");
    s.lines
        .wait_for(&format!("TLS certificate reloaded fingerprint={second}"));

    // The tunnel opened before the reload keeps flowing...
    echo(&mut old_tunnel, b"after rotation, same tunnel");
    // ...new handshakes see the new certificate, and the old pin no longer matches.
    let mut new_tunnel = open_tunnel(&s.tls, second);
    echo(&mut new_tunnel, b"new tunnel");
    let err = tls_connect(&s.tls, s.first)
        .map(|_| ())
        .expect_err("old pin must fail");
    let text = hakuriver_ssh::tls_errors::describe_tls_error(&err);
    assert!(
        text.contains(&second.to_string()) && text.contains(&s.first.to_string()),
        "{text}"
    );
}

#[test]
fn a_broken_new_certificate_keeps_the_old_one() {
    let mut s = start(&[]);
    std::fs::write(
        &s.cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    signal(&s.proxy.0, "HUP");
    let line = s
        .lines
        .wait_for("TLS certificate reload failed; keeping the current one");
    assert!(line.contains("cert.pem"), "names the file: {line}");
    let mut tunnel = open_tunnel(&s.tls, s.first);
    echo(&mut tunnel, b"still served with the first certificate");
    // A key that does not match the certificate is refused the same way.
    let other = tempfile::tempdir().expect("tempdir");
    mint(&other.path().join("c.pem"), &s.key);
    mint(&s.cert, &other.path().join("k.pem"));
    signal(&s.proxy.0, "HUP");
    s.lines
        .wait_for("TLS certificate reload failed; keeping the current one");
    open_tunnel(&s.tls, s.first);
}

#[test]
fn plain_client_on_the_tls_port_gets_no_plaintext_and_a_log_line() {
    let mut s = start(&[]);
    let mut plain = TcpStream::connect(&s.tls).expect("connect");
    plain.set_read_timeout(Some(WAIT)).expect("timeout");
    plain.write_all(b"REQUEST_TUNNEL 5\n").expect("write");
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(
        !reply.starts_with(b"SUCCESS") && !reply.starts_with(b"ERROR"),
        "no plaintext reply: {reply:?}"
    );
    // Whatever came back is a TLS record (an alert), not protocol text.
    assert!(
        reply.is_empty() || reply[0] == 0x15,
        "TLS alert or nothing: {reply:?}"
    );
    s.lines.wait_for("TLS handshake failed");
}

#[test]
fn tls_client_on_the_plain_port_is_told_in_its_terms() {
    let mut s = start(&[]);
    let err = tls_connect(&s.plain, s.first)
        .map(|_| ())
        .expect_err("plain port does not speak TLS");
    let text = hakuriver_ssh::tls_errors::describe_tls_error(&err);
    assert!(text.contains("did not answer with TLS"), "{text}");
    s.lines.wait_for("TLS ClientHello on a plain port");
}

#[test]
fn silent_tls_client_is_cut_after_the_handshake_timeout() {
    let mut s = start(&[]);
    let mut silent = TcpStream::connect(&s.tls).expect("connect");
    silent.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = Vec::new();
    let read = silent.read_to_end(&mut buf);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "closed: {read:?} {buf:?}"
    );
    s.lines.wait_for("TLS handshake timed out");
}
