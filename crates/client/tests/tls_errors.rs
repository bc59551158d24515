//! The one-line explanations of failed TLS handshakes, against real handshakes between
//! the shared crate's server and client configurations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tunnel/tests/common/mod.rs"]
mod common;

use std::time::SystemTime;

use common::*;
use hakuriver_ssh::tls_errors::describe_tls_error;
use hakuriver_tunnel::tls::{
    client_config, pin_mismatch, self_signed, ClientTrust, Fingerprint, PinMismatch,
    SELF_SIGNED_CERT_FILE, SELF_SIGNED_DIR,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// The date part (`YYYY-MM-DD`) of a time, as the explanations print it.
fn utc_date(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_owned()
}

#[tokio::test]
async fn self_signed_certificate_carries_the_requested_names() {
    let state = tempfile::tempdir().unwrap();
    let names = vec!["proxy.test".to_owned(), "127.0.0.1".to_owned()];
    let pair = self_signed(state.path(), &names).unwrap();
    // Trusting the self-signed certificate as its own CA makes WebPKI check its names.
    let client = client_config(&ClientTrust {
        pins: vec![],
        ca_file: Some(
            state
                .path()
                .join(SELF_SIGNED_DIR)
                .join(SELF_SIGNED_CERT_FILE),
        ),
    })
    .unwrap();
    let server = serving(pair);
    for name in ["proxy.test", "127.0.0.1"] {
        let (c, s) = handshake(server.clone(), client.clone(), name).await;
        c.unwrap_or_else(|e| panic!("{name}: {}", describe_tls_error(&e)));
        s.unwrap();
    }
    let err = refused(server, client, "elsewhere.test").await;
    assert!(describe_tls_error(&err).contains("elsewhere.test"), "{err}");
}

#[tokio::test]
async fn pin_mismatch_reports_both_fingerprints() {
    let pair = self_signed_pair();
    let presented = pair.fingerprint().unwrap();
    let expected = Fingerprint::of(b"the pinned one");
    let err = refused(serving(pair), pinned(vec![expected]), "localhost").await;
    let text = describe_tls_error(&err);
    assert!(text.contains(&presented.to_string()), "{text}");
    assert!(text.contains(&expected.to_string()), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(
        pin_mismatch(&err),
        Some(&PinMismatch {
            expected: vec![expected],
            presented
        })
    );
}

#[tokio::test]
async fn ca_verification_refuses_a_wrong_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = mint_ca("test ca");
    let server = serving(valid_leaf(&ca, &["proxy.test"]));
    let err = refused(server, ca_trust(dir.path(), &ca), "other.test").await;
    let text = describe_tls_error(&err);
    assert!(text.contains("\"other.test\""), "{text}");
    assert!(text.contains("proxy.test"), "{text}");
    assert!(text.contains("--server-name"), "{text}");
}

#[tokio::test]
async fn ca_verification_refuses_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = mint_ca("test ca");
    let not_after = SystemTime::now() - DAY;
    let server = serving(mint_leaf(
        &ca,
        &["proxy.test"],
        SystemTime::now() - 30 * DAY,
        not_after,
    ));
    let err = refused(server, ca_trust(dir.path(), &ca), "proxy.test").await;
    let text = describe_tls_error(&err);
    assert!(text.contains("expired on"), "{text}");
    assert!(text.contains(&utc_date(not_after)), "{text}");
}

#[tokio::test]
async fn ca_verification_refuses_a_not_yet_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = mint_ca("test ca");
    let start = SystemTime::now() + DAY;
    let server = serving(mint_leaf(&ca, &["proxy.test"], start, start + 30 * DAY));
    let err = refused(server, ca_trust(dir.path(), &ca), "proxy.test").await;
    let text = describe_tls_error(&err);
    assert!(text.contains("not valid until"), "{text}");
}

#[tokio::test]
async fn ca_verification_refuses_an_unknown_ca_and_suggests_pinning() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = mint_ca("trusted ca");
    let other = mint_ca("other ca");
    let pair = valid_leaf(&other, &["proxy.test"]);
    let fp = pair.fingerprint().unwrap();
    let err = refused(serving(pair), ca_trust(dir.path(), &trusted), "proxy.test").await;
    let text = describe_tls_error(&err);
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    assert!(text.contains(&fp.to_string()), "{text}");
    assert!(
        text.contains("hakuriver-ssh-proxy fingerprint") && text.contains("--fingerprint"),
        "{text}"
    );
}

#[tokio::test]
async fn plain_text_reply_is_described_as_not_tls() {
    for reply in [
        &b"ERROR Timeout waiting for request.\n"[..],
        b"b'ERROR 'Task 1 not found.\n",
        b"SUCCESS\n",
    ] {
        let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
        let plain_server = tokio::spawn(async move {
            server_io.write_all(reply).await.unwrap();
            // Hold the connection open until the client gives up.
            let mut sink = Vec::new();
            let _ = server_io.read_to_end(&mut sink).await;
        });
        let connect = TlsConnector::from(pinned(vec![Fingerprint::of(b"x")]))
            .connect(ServerName::try_from("localhost").unwrap(), client_io);
        let err = tokio::time::timeout(WAIT, connect)
            .await
            .unwrap()
            .map(drop)
            .expect_err("handshake fails");
        let text = describe_tls_error(&err);
        assert!(
            text.contains("did not answer with TLS"),
            "{reply:?}: {text} ({err:?})"
        );
        tokio::time::timeout(WAIT, plain_server)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn eof_during_handshake_is_described() {
    // Like a server that reads the ClientHello and hangs up without answering.
    let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
    let hang_up = tokio::spawn(async move {
        let mut first = [0u8; 1];
        server_io.read_exact(&mut first).await.unwrap();
    });
    let connect = TlsConnector::from(pinned(vec![Fingerprint::of(b"x")]))
        .connect(ServerName::try_from("localhost").unwrap(), client_io);
    let err = tokio::time::timeout(WAIT, connect)
        .await
        .unwrap()
        .map(drop)
        .expect_err("handshake fails");
    let text = describe_tls_error(&err);
    assert!(
        text.contains("closed the connection during the TLS handshake"),
        "{text} ({err:?})"
    );
    tokio::time::timeout(WAIT, hang_up).await.unwrap().unwrap();
}
