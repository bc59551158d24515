//! TLS for the client→Host hop: certificates, fingerprints and rustls configurations.
//!
//! # Trust model
//! - The proxy serves a certificate from PEM files (CA-issued, reloadable without dropping
//!   tunnels through [`ServerCertStore`]) or a self-signed one generated once by
//!   [`self_signed()`] into its state directory.
//! - The client trusts, in this order of preference (see [`ClientTrust`]): pinned SHA-256
//!   [`Fingerprint`]s of the end-entity certificate (several, so a rotation can be
//!   announced ahead), a CA file, or the system roots.
//! - [`probe_config`] learns a server's fingerprint without trusting it, for
//!   trust-on-first-use; nothing may be sent on such a connection before the user agreed.
//!
//! Every configuration uses the `ring` provider explicitly and speaks TLS 1.2 and 1.3 only.
//!
//! # Layout
//! - [`fingerprint`]: [`Fingerprint`], the SHA-256 value users pin.
//! - [`pem`]: [`CertPair`] and loading chains and keys from PEM files.
//! - [`self_signed`](mod@self_signed): the proxy's generated certificate in its state directory.
//! - [`server`]: [`ServerCertStore`] (reloadable) and [`server_config`].
//! - [`verify`]: the client's certificate verifiers (pins, CA/system roots, capture),
//!   sharing one handshake-signature check, and the errors they report.
//! - [`client`]: [`ClientTrust`], [`client_config`] and [`probe_config`].
//!
//! Everything is re-exported here, so callers write `hakuriver_tunnel::tls::X`.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub mod client;
pub mod fingerprint;
pub mod pem;
pub mod self_signed;
pub mod server;
pub mod verify;

pub use client::{client_config, probe_config, ClientTrust};
pub use fingerprint::{Fingerprint, FingerprintParseError};
pub use pem::{load_cert_chain, load_cert_pair, load_private_key, CertPair};
pub use self_signed::{
    self_signed, SELF_SIGNED_CERT_FILE, SELF_SIGNED_DIR, SELF_SIGNED_KEY_FILE, SELF_SIGNED_VALIDITY,
};
pub use server::{server_config, CertSource, ServerCertStore};
pub use verify::{pin_mismatch, CapturedFingerprint, PinMismatch, UntrustedCertificate};

/// The TLS versions every configuration here allows.
pub(crate) static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider both sides use (ring; chosen explicitly rather than through
/// the process-wide default, so a second provider linked in by accident changes nothing).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate, key or TLS configuration could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file or directory could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("invalid PEM in {}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    #[error("no PEM certificate found in {}", path.display())]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key section.
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) found in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate and the private key do not belong together (or one is unusable).
    #[error("the private key in {} does not match the certificate in {}: {source}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls found.
        source: rustls::Error,
    },
    /// An in-memory certificate and key do not form a usable pair.
    #[error("certificate and private key do not form a usable pair: {0}")]
    InvalidPair(#[source] rustls::Error),
    /// A CA file holds a certificate that cannot serve as a trust anchor.
    #[error("unusable CA certificate in {}: {source}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What rustls/webpki said.
        source: rustls::Error,
    },
    /// A name for the self-signed certificate is neither an IP address nor a DNS name.
    #[error("invalid certificate name {name:?}: {source}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[source] rcgen::Error),
    /// The system's root certificates could not be loaded.
    #[error("cannot load the system root certificates: {0}")]
    NativeRoots(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The rustls error inside an I/O error from a tokio-rustls handshake or stream, if any.
pub fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn StdError + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = current.source();
    }
    None
}
