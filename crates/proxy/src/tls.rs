//! The serving certificate: PEM files or a self-signed certificate kept in the state
//! directory, behind a resolver that SIGHUP can swap without touching open tunnels.

use std::sync::Arc;

use anyhow::{Context, Result};
use hakuriver_tunnel::tls::{self as shared, Fingerprint, ServerCertStore};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsAcceptor, TlsConnector};

use crate::config::{CertSource, Settings};

/// The certificate TLS listeners serve, and the acceptor that serves it.
#[derive(Clone)]
pub struct ServingCert {
    store: Arc<ServerCertStore>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.store.fmt(f)
    }
}

impl ServingCert {
    /// Loads the configured certificate, generating the self-signed one on first use.
    pub fn load(settings: &Settings) -> Result<Self> {
        let store = match &settings.cert {
            CertSource::Files { cert, key } => ServerCertStore::from_files(cert, key),
            CertSource::SelfSigned { state_dir, names } => {
                ServerCertStore::self_signed(state_dir, names)
            }
            CertSource::Memory => anyhow::bail!("no TLS certificate configured"),
        }
        .context("cannot load the TLS certificate")?;
        let store = Arc::new(store);
        let acceptor = TlsAcceptor::from(shared::server_config(Arc::clone(&store))?);
        Ok(ServingCert { store, acceptor })
    }

    /// Fingerprint of the certificate served now.
    pub fn fingerprint(&self) -> Fingerprint {
        self.store.fingerprint()
    }

    /// An acceptor whose new handshakes always see the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the certificate again (SIGHUP). On error the current one stays in service.
    pub fn reload(&self) -> Result<Fingerprint> {
        Ok(self.store.reload()?)
    }
}

/// A TLS client connection that trusts exactly `pin` (for `health`).
pub async fn connect_pinned(tcp: TcpStream, pin: Fingerprint) -> Result<TlsStream<TcpStream>> {
    let trust = shared::ClientTrust {
        pins: vec![pin],
        ..Default::default()
    };
    let config = shared::client_config(&trust)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}
