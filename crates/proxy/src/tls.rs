//! The serving certificate: PEM files or a self-signed certificate kept in the state
//! directory, behind a resolver that SIGHUP can swap without touching open tunnels.

use std::sync::Arc;

use hakuriver_tunnel::tls::{self as shared, Fingerprint, ServerCertStore, TlsError};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsAcceptor, TlsConnector};

use crate::config::{CertSource, Settings};

/// Why the serving certificate could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or generating the certificate failed.
    #[error("cannot load the TLS certificate")]
    Load(#[source] TlsError),
    /// Only in-memory test settings have no certificate source.
    #[error("cannot load the TLS certificate: no TLS certificate configured")]
    NotConfigured,
    /// The certificate does not make a server configuration.
    #[error(transparent)]
    Config(#[from] TlsError),
}

/// Why a pinned TLS connection (`health`) failed.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    /// The client configuration could not be built.
    #[error(transparent)]
    Config(#[from] TlsError),
    /// The server name is not valid.
    #[error(transparent)]
    Name(#[from] rustls::pki_types::InvalidDnsNameError),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] std::io::Error),
}

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
    pub fn load(settings: &Settings) -> Result<Self, CertError> {
        let store = match &settings.cert {
            CertSource::Files { cert, key } => ServerCertStore::from_files(cert, key),
            CertSource::SelfSigned { state_dir, names } => {
                ServerCertStore::self_signed(state_dir, names)
            }
            CertSource::Memory => return Err(CertError::NotConfigured),
        }
        .map_err(CertError::Load)?;
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
    pub fn reload(&self) -> Result<Fingerprint, TlsError> {
        self.store.reload()
    }
}

/// A TLS client connection that trusts exactly `pin` (for `health`).
pub async fn connect_pinned(
    tcp: TcpStream,
    pin: Fingerprint,
) -> Result<TlsStream<TcpStream>, PinnedError> {
    let trust = shared::ClientTrust {
        pins: vec![pin],
        ..Default::default()
    };
    let config = shared::client_config(&trust)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}
