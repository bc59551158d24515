//! Certificates minted with rcgen and TLS handshakes over an in-memory pipe, for the TLS
//! tests of `hakuriver-tunnel` (and, through `#[path]`, the client's error-text tests).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hakuriver_tunnel::tls::{
    client_config, server_config, CertPair, ClientTrust, Fingerprint, ServerCertStore,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// Upper bound of every wait.
pub const WAIT: Duration = Duration::from_secs(10);
/// One day.
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);

// ---- certificate minting ----

/// A certificate authority (root or intermediate).
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

pub fn mint_ca(name: &str) -> Ca {
    mint_ca_signed_by(name, None)
}

pub fn mint_ca_signed_by(name: &str, issuer: Option<&Ca>) -> Ca {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (SystemTime::now() - 60 * DAY).into();
    params.not_after = (SystemTime::now() + 60 * DAY).into();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, &issuer.cert, &issuer.key).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    Ca { cert, key }
}

fn pair(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> CertPair {
    CertPair {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

pub fn mint_leaf(
    ca: &Ca,
    names: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertPair {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    pair(&cert, &key)
}

pub fn valid_leaf(ca: &Ca, names: &[&str]) -> CertPair {
    mint_leaf(
        ca,
        names,
        SystemTime::now() - DAY,
        SystemTime::now() + 30 * DAY,
    )
}

/// A fresh self-signed ECDSA P-256 certificate for `localhost`.
pub fn self_signed_pair() -> CertPair {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    pair(&cert, &key_pair)
}

// ---- PEM files ----

pub fn pem(label: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(label, der))
}

pub fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
}

pub fn key_pem(key: &PrivateKeyDer<'_>) -> String {
    pem("PRIVATE KEY", key.secret_der())
}

pub fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

// ---- configurations ----

pub fn ca_trust(dir: &Path, ca: &Ca) -> Arc<ClientConfig> {
    let ca_file = write(dir, "ca.pem", &ca.cert.pem());
    client_config(&ClientTrust {
        pins: vec![],
        ca_file: Some(ca_file),
    })
    .unwrap()
}

pub fn pinned(pins: Vec<Fingerprint>) -> Arc<ClientConfig> {
    client_config(&ClientTrust {
        pins,
        ca_file: None,
    })
    .unwrap()
}

pub fn serving(pair: CertPair) -> Arc<ServerConfig> {
    server_config(Arc::new(ServerCertStore::new(pair).unwrap())).unwrap()
}

// ---- handshakes over an in-memory pipe ----

pub type Handshake = (
    io::Result<client::TlsStream<DuplexStream>>,
    io::Result<server::TlsStream<DuplexStream>>,
);

pub async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Handshake {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let accept = TlsAcceptor::from(server).accept(server_io);
    let connect = TlsConnector::from(client).connect(name, client_io);
    tokio::time::timeout(WAIT, async { tokio::join!(connect, accept) })
        .await
        .expect("handshake finished in time")
}

/// Handshake expected to fail on the client side; returns the client's error.
pub async fn refused(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> io::Error {
    let (client_side, server_side) = handshake(server, client, name).await;
    assert!(server_side.is_err(), "server saw the client give up");
    match client_side {
        Ok(_) => panic!("client accepted the server"),
        Err(e) => e,
    }
}

pub async fn ping(
    client: &mut client::TlsStream<DuplexStream>,
    server: &mut server::TlsStream<DuplexStream>,
) {
    tokio::time::timeout(WAIT, async {
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    })
    .await
    .expect("data exchanged in time");
}
