//! TLS handshakes between our server and client configurations: pinning, CA
//! verification, trust-on-first-use capture, certificate rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use hakuriver_tunnel::tls::{
    pin_mismatch, probe_config, rustls_error, server_config, Fingerprint, ServerCertStore,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[tokio::test]
async fn pinned_fingerprint_is_accepted_whatever_the_name() {
    let pair = self_signed_pair();
    let fp = pair.fingerprint().unwrap();
    let other = Fingerprint::of(b"an older certificate");
    let (c, s) = handshake(
        serving(pair),
        pinned(vec![other, fp]),
        "not-in-the-cert.test",
    )
    .await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    ping(&mut c, &mut s).await;
}

#[tokio::test]
async fn pinned_tls12_handshake_verifies_signatures() {
    // The server speaks TLS 1.2 only, so the pinned client verifies a TLS 1.2 handshake
    // signature.
    let pair = self_signed_pair();
    let fp = pair.fingerprint().unwrap();
    let tls12_only = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ServerCertStore::new(pair).unwrap()));
    let (c, s) = handshake(Arc::new(tls12_only), pinned(vec![fp]), "localhost").await;
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    ping(&mut c, &mut s).await;
}

#[tokio::test]
async fn pin_of_a_certificate_without_its_key_is_refused() {
    // A server that presents the pinned certificate but signs with another key must
    // fail the handshake signature check; rustls refuses to build such a server, so
    // present the pinned certificate through a resolver that lies.
    #[derive(Debug)]
    struct Impostor(Arc<CertifiedKey>);
    impl ResolvesServerCert for Impostor {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let real = self_signed_pair();
    let impostor = self_signed_pair();
    let signer = provider()
        .key_provider
        .load_private_key(impostor.key)
        .unwrap();
    let lying = CertifiedKey::new(real.chain.clone(), signer);
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Impostor(Arc::new(lying))));
    let err = refused(
        Arc::new(server),
        pinned(vec![real.fingerprint().unwrap()]),
        "localhost",
    )
    .await;
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn probe_captures_the_fingerprint_without_trusting() {
    let pair = self_signed_pair();
    let fp = pair.fingerprint().unwrap();
    let (config, captured) = probe_config().unwrap();
    assert_eq!(captured.get(), None);
    let (c, s) = handshake(serving(pair), config, "anything.test").await;
    c.unwrap();
    s.unwrap();
    assert_eq!(captured.get(), Some(fp));
}

#[tokio::test]
async fn ca_signed_certificate_verifies_by_name_and_ip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = mint_ca("test ca");
    let server = serving(valid_leaf(&ca, &["proxy.test", "127.0.0.1"]));
    let client = ca_trust(dir.path(), &ca);
    for name in ["proxy.test", "127.0.0.1"] {
        let (c, s) = handshake(server.clone(), client.clone(), name).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        ping(&mut c, &mut s).await;
    }
}

#[tokio::test]
async fn ca_verification_follows_an_intermediate_from_the_chain_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = mint_ca("root");
    let intermediate = mint_ca_signed_by("intermediate", Some(&root));
    let mut pair = valid_leaf(&intermediate, &["proxy.test"]);
    pair.chain.push(intermediate.cert.der().clone());
    let cert = write(dir.path(), "chain.pem", &chain_pem(&pair.chain));
    let key = write(dir.path(), "key.pem", &key_pem(&pair.key));
    let store = Arc::new(ServerCertStore::from_files(&cert, &key).unwrap());
    let (c, s) = handshake(
        server_config(store).unwrap(),
        ca_trust(dir.path(), &root),
        "proxy.test",
    )
    .await;
    c.unwrap();
    s.unwrap();
}

#[tokio::test]
async fn replace_serves_new_handshakes_and_keeps_old_sessions() {
    let first = self_signed_pair();
    let second = self_signed_pair();
    let (fp1, fp2) = (first.fingerprint().unwrap(), second.fingerprint().unwrap());
    let store = Arc::new(ServerCertStore::new(first).unwrap());
    let server = server_config(store.clone()).unwrap();
    assert_eq!(store.fingerprint(), fp1);

    let (c, s) = handshake(server.clone(), pinned(vec![fp1]), "localhost").await;
    let (mut old_client, mut old_server) = (c.unwrap(), s.unwrap());

    assert_eq!(store.replace(second).unwrap(), fp2);
    assert_eq!(store.fingerprint(), fp2);
    let (probe, captured) = probe_config().unwrap();
    let (c, s) = handshake(server.clone(), probe, "localhost").await;
    c.unwrap();
    s.unwrap();
    assert_eq!(captured.get(), Some(fp2));
    let err = refused(server, pinned(vec![fp1]), "localhost").await;
    assert_eq!(pin_mismatch(&err).map(|p| p.presented), Some(fp2));

    ping(&mut old_client, &mut old_server).await;
}

#[tokio::test]
async fn tls_over_real_tcp_on_loopback() {
    let pair = self_signed_pair();
    let fp = pair.fingerprint().unwrap();
    let acceptor = TlsAcceptor::from(serving(pair));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut line = [0u8; 5];
        tls.read_exact(&mut line).await.unwrap();
        tls.write_all(&line).await.unwrap();
        tls.shutdown().await.unwrap();
    });
    let result = tokio::time::timeout(WAIT, async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = TlsConnector::from(pinned(vec![fp]))
            .connect(ServerName::from(addr.ip()), tcp)
            .await
            .unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        tls.read_to_end(&mut back).await.unwrap();
        back
    })
    .await
    .unwrap();
    assert_eq!(result, b"hello");
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}
