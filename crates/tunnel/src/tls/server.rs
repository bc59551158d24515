//! The proxy's side: the reloadable [`ServerCertStore`] and [`server_config`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::pem::certified_key;
use super::{
    load_cert_pair, provider, self_signed, CertPair, Fingerprint, TlsError, PROTOCOL_VERSIONS,
};

/// Where a [`ServerCertStore`] gets its certificate from on [`ServerCertStore::reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files (re-read on reload, which is how a renewed certificate is picked up).
    Files {
        /// Certificate chain file.
        cert: PathBuf,
        /// Private key file.
        key: PathBuf,
    },
    /// The self-signed certificate in a state directory (see [`self_signed()`](super::self_signed())).
    SelfSigned {
        /// The state directory.
        state_dir: PathBuf,
        /// Names used if the certificate has to be generated.
        names: Vec<String>,
    },
    /// A pair handed over in memory; reload keeps it.
    Memory,
}

struct Current {
    key: Arc<CertifiedKey>,
    fingerprint: Fingerprint,
}

/// The certificate the proxy serves, swappable at run time.
///
/// Each handshake takes the certificate current at that moment; sessions already
/// established keep theirs, so a reload never drops a tunnel.
pub struct ServerCertStore {
    current: RwLock<Current>,
    source: CertSource,
}

impl ServerCertStore {
    /// A store serving `pair`; [`reload`](Self::reload) keeps it.
    pub fn new(pair: CertPair) -> Result<Self, TlsError> {
        Self::with_source(pair, CertSource::Memory)
    }

    /// A store serving the PEM files `cert` and `key`, re-read on every reload.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pair = load_cert_pair(cert, key)?;
        Self::with_source(
            pair,
            CertSource::Files {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
        )
    }

    /// A store serving the self-signed certificate of `state_dir` (generated if needed).
    pub fn self_signed(state_dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let pair = self_signed(state_dir, names)?;
        Self::with_source(
            pair,
            CertSource::SelfSigned {
                state_dir: state_dir.to_owned(),
                names: names.to_vec(),
            },
        )
    }

    fn with_source(pair: CertPair, source: CertSource) -> Result<Self, TlsError> {
        let current = Self::prepare(&pair)?;
        Ok(ServerCertStore {
            current: RwLock::new(current),
            source,
        })
    }

    fn prepare(pair: &CertPair) -> Result<Current, TlsError> {
        let key = certified_key(pair).map_err(TlsError::InvalidPair)?;
        let fingerprint = pair.fingerprint().ok_or(TlsError::InvalidPair(
            rustls::Error::NoCertificatesPresented,
        ))?;
        Ok(Current { key, fingerprint })
    }

    /// Where reloads read from.
    pub fn source(&self) -> &CertSource {
        &self.source
    }

    /// Serves `pair` from the next handshake on; returns its fingerprint. On error the
    /// previous certificate stays in service.
    pub fn replace(&self, pair: CertPair) -> Result<Fingerprint, TlsError> {
        let next = Self::prepare(&pair)?;
        let fingerprint = next.fingerprint;
        // A panic while holding the lock cannot leave `Current` half-written (it is
        // replaced whole), so a poisoned lock is still safe to use.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(fingerprint)
    }

    /// Reads the certificate again from its [`source`](Self::source) and serves it
    /// (the SIGHUP path). Returns the fingerprint now served; on error the previous
    /// certificate stays in service.
    pub fn reload(&self) -> Result<Fingerprint, TlsError> {
        match &self.source {
            CertSource::Files { cert, key } => self.replace(load_cert_pair(cert, key)?),
            CertSource::SelfSigned { state_dir, names } => {
                self.replace(self_signed(state_dir, names)?)
            }
            CertSource::Memory => Ok(self.fingerprint()),
        }
    }

    /// The fingerprint of the certificate new handshakes get.
    pub fn fingerprint(&self) -> Fingerprint {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fingerprint
    }
}

impl fmt::Debug for ServerCertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertStore")
            .field("fingerprint", &self.fingerprint())
            .field("source", &self.source)
            .finish()
    }
}

impl ResolvesServerCert for ServerCertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()).key,
        ))
    }
}

/// The proxy's rustls configuration: TLS 1.2/1.3, ring, no client certificates, the
/// certificate taken from `store` at each handshake.
///
/// Returns a `Result` (rather than panicking) although the fixed ring/TLS-version
/// combination cannot fail today.
pub fn server_config(store: Arc<ServerCertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    Ok(Arc::new(config))
}
