//! TLS for the client→Host hop: certificates, fingerprints, rustls configurations and
//! one-line explanations of handshake failures.
//!
//! # Trust model
//! - The proxy serves a certificate from PEM files (CA-issued, reloadable without dropping
//!   tunnels through [`ServerCertStore`]) or a self-signed one generated once by
//!   [`self_signed`] into its state directory.
//! - The client trusts, in this order of preference (see [`ClientTrust`]): pinned SHA-256
//!   [`Fingerprint`]s of the end-entity certificate (several, so a rotation can be
//!   announced ahead), a CA file, or the system roots.
//! - [`probe_config`] learns a server's fingerprint without trusting it, for
//!   trust-on-first-use; nothing may be sent on such a connection before the user agreed.
//!
//! Every configuration uses the `ring` provider explicitly and speaks TLS 1.2 and 1.3 only.

use std::error::Error as StdError;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Directory under the state directory that holds the self-signed certificate.
pub const SELF_SIGNED_DIR: &str = "tls";
/// File name of the self-signed certificate (PEM) inside [`SELF_SIGNED_DIR`].
pub const SELF_SIGNED_CERT_FILE: &str = "self-signed-cert.pem";
/// File name of the self-signed certificate's private key (PEM, PKCS#8, mode 0600).
pub const SELF_SIGNED_KEY_FILE: &str = "self-signed-key.pem";
/// How long a generated self-signed certificate stays valid. Pinning ignores validity,
/// so this only needs to outlive the installation.
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(10 * 366 * 24 * 60 * 60);
/// Subject common name of generated certificates.
const SELF_SIGNED_COMMON_NAME: &str = "hakuriver-ssh-proxy";

/// The TLS versions every configuration here allows.
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider both sides use (ring; chosen explicitly rather than through
/// the process-wide default, so a second provider linked in by accident changes nothing).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Fingerprints
// ---------------------------------------------------------------------------------------

/// SHA-256 of a certificate's DER encoding, the value users pin.
///
/// Displays as `sha256:<64 lowercase hex digits>`; parses that form, `SHA256:`, no prefix,
/// colon-separated bytes (as browsers and `openssl x509 -fingerprint` print them) and any
/// letter case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert_der).into())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Why a string is not a [`Fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {input:?}: {reason}; expected sha256: followed by 64 hex digits (colons between bytes allowed)")]
pub struct FingerprintParseError {
    input: String,
    reason: String,
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| FingerprintParseError {
            input: s.to_owned(),
            reason,
        };
        let trimmed = s.trim();
        let hex = match trimmed.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
            _ => trimmed,
        };
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
            return Err(fail(format!("{:?} is not a hex digit", char::from(*bad))));
        }
        if digits.len() != 64 {
            return Err(fail(format!("found {} hex digits", digits.len())));
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Fingerprint(out))
    }
}

/// Value of an ASCII hex digit already checked with `is_ascii_hexdigit`.
fn hex_value(digit: u8) -> u8 {
    char::from(digit).to_digit(16).map_or(0, |v| v as u8)
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Certificates and keys
// ---------------------------------------------------------------------------------------

/// A certificate chain (end-entity first) and its private key.
pub struct CertPair {
    /// The chain, end-entity certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl CertPair {
    /// The fingerprint of the end-entity certificate (what clients pin).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.chain.first().map(|cert| Fingerprint::of(cert))
    }
}

impl Clone for CertPair {
    fn clone(&self) -> Self {
        CertPair {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for CertPair {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPair")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every `CERTIFICATE` section of a PEM file, in order (end-entity first for a
/// server chain). Other sections (a key in the same file, say) are ignored.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(source) => Err(TlsError::Pem {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads a certificate chain and its key from PEM files and checks that the key belongs
/// to the end-entity certificate, so a broken pair is refused now rather than at the
/// first handshake.
pub fn load_cert_pair(cert_path: &Path, key_path: &Path) -> Result<CertPair, TlsError> {
    let pair = CertPair {
        chain: load_cert_chain(cert_path)?,
        key: load_private_key(key_path)?,
    };
    certified_key(&pair).map_err(|source| TlsError::KeyMismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })?;
    Ok(pair)
}

/// Turns a pair into what rustls serves, refusing an unusable key or a key that does not
/// match the certificate's public key.
fn certified_key(pair: &CertPair) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let signing_key = provider()
        .key_provider
        .load_private_key(pair.key.clone_key())?;
    let certified = CertifiedKey::new(pair.chain.clone(), signing_key);
    // Unlike `CertifiedKey::from_der`, "cannot tell" is an error too: with ring every key
    // type exposes its public key, so an unknown answer means something is wrong.
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// Loads the proxy's self-signed certificate from `state_dir/tls/`, generating it on first
/// use.
///
/// Generation uses ECDSA P-256 with `names` as subject alternative names (each an IP
/// address if it parses as one, else a DNS name), valid for [`SELF_SIGNED_VALIDITY`].
/// The key file is created with mode 0600 (never readable by others, not even briefly),
/// the certificate with 0644, the `tls` directory with 0700. Later calls reuse the files
/// as they are, whatever `names` says: delete both files to regenerate.
pub fn self_signed(state_dir: &Path, names: &[String]) -> Result<CertPair, TlsError> {
    let dir = state_dir.join(SELF_SIGNED_DIR);
    let cert_path = dir.join(SELF_SIGNED_CERT_FILE);
    let key_path = dir.join(SELF_SIGNED_KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let pair = load_cert_pair(&cert_path, &key_path)?;
        tracing::debug!(cert = %cert_path.display(), fingerprint = ?pair.fingerprint(), "reusing self-signed certificate");
        return Ok(pair);
    }

    let (cert_pem, key_pem) = generate_self_signed(names)?;
    create_private_dir(&dir)?;
    // Write both under temporary names and rename the certificate last, so a crash never
    // leaves a certificate next to a key it does not belong to from a fresh generation.
    let key_tmp = dir.join(format!("{SELF_SIGNED_KEY_FILE}.tmp"));
    let cert_tmp = dir.join(format!("{SELF_SIGNED_CERT_FILE}.tmp"));
    write_new_file(&key_tmp, key_pem.as_bytes(), 0o600)?;
    write_new_file(&cert_tmp, cert_pem.as_bytes(), 0o644)?;
    rename(&key_tmp, &key_path)?;
    rename(&cert_tmp, &cert_path)?;

    let pair = load_cert_pair(&cert_path, &key_path)?;
    tracing::info!(cert = %cert_path.display(), fingerprint = ?pair.fingerprint(), "generated self-signed certificate");
    Ok(pair)
}

/// Mints a self-signed ECDSA P-256 certificate; returns (certificate PEM, PKCS#8 key PEM).
fn generate_self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let mut params = rcgen::CertificateParams::default();
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|source| {
                TlsError::InvalidName {
                    name: name.clone(),
                    source,
                }
            })?),
        };
        params.subject_alt_names.push(san);
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SELF_SIGNED_COMMON_NAME);
    let now = SystemTime::now();
    // A day of slack for clients whose clock runs behind.
    params.not_before = (now - Duration::from_secs(24 * 60 * 60)).into();
    params.not_after = (now + SELF_SIGNED_VALIDITY).into();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Creates `path` with `mode` from the start (a leftover from an interrupted run is
/// replaced) and writes `contents` durably.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let wrap = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(wrap(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(wrap)?;
    file.write_all(contents).map_err(wrap)?;
    file.sync_all().map_err(wrap)
}

fn rename(from: &Path, to: &Path) -> Result<(), TlsError> {
    fs::rename(from, to).map_err(|source| TlsError::Write {
        path: to.to_owned(),
        source,
    })
}

// ---------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------

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
    /// The self-signed certificate in a state directory (see [`self_signed`]).
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

// ---------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------

/// What the client trusts. Pins win over the CA file, which wins over the system roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTrust {
    /// Accept a server iff its end-entity certificate has one of these fingerprints (its
    /// name, chain and validity dates are then not checked).
    pub pins: Vec<Fingerprint>,
    /// PEM file of CA certificates to verify the server's chain and name against.
    pub ca_file: Option<PathBuf>,
}

/// The server presented a certificate whose fingerprint is not pinned.
///
/// Carried inside the handshake error (see [`pin_mismatch`]) so the client can show both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "certificate fingerprint {presented} is not pinned (pinned: {})",
    list(expected)
)]
pub struct PinMismatch {
    /// The pinned fingerprints.
    pub expected: Vec<Fingerprint>,
    /// The fingerprint of the certificate the server presented.
    pub presented: Fingerprint,
}

/// The server's certificate does not chain to a trusted root (a self-signed certificate
/// looks like this); carries its fingerprint so the user can compare and pin it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate {fingerprint} is not issued by a trusted certificate authority")]
pub struct UntrustedCertificate {
    /// The fingerprint of the certificate the server presented.
    pub fingerprint: Fingerprint,
}

fn list(fingerprints: &[Fingerprint]) -> String {
    fingerprints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn certificate_error(err: impl StdError + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

/// Accepts exactly the pinned end-entity certificates, still checking the handshake
/// signatures so the server proves it holds the pinned certificate's key.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if self.pins.contains(&presented) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(certificate_error(PinMismatch {
                expected: self.pins.clone(),
                presented,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Standard WebPKI verification; only an unknown issuer is reported differently, with the
/// presented fingerprint, so the user can compare it with `hakuriver-ssh-proxy fingerprint`.
#[derive(Debug)]
struct RootsVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for RootsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|err| match err {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    certificate_error(UntrustedCertificate {
                        fingerprint: Fingerprint::of(end_entity),
                    })
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Records the presented end-entity certificate's fingerprint and accepts it. Only for
/// trust-on-first-use probing (see [`probe_config`]).
#[derive(Debug)]
struct CaptureVerifier {
    captured: CapturedFingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CaptureVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.captured.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Fingerprint::of(end_entity));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The fingerprint a [`probe_config`] connection saw; empty until the server's
/// certificate arrived.
#[derive(Debug, Clone, Default)]
pub struct CapturedFingerprint(Arc<Mutex<Option<Fingerprint>>>);

impl CapturedFingerprint {
    /// The fingerprint of the last certificate presented, if any.
    pub fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn client_builder(verifier: Arc<dyn ServerCertVerifier>) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        // "dangerous" only because the verifier is ours: each one below either delegates
        // to WebPKI or checks the pin and the handshake signatures itself.
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client's rustls configuration for `trust`: pins if any (name and chain not
/// checked), else the CA file (chain and name checked), else the system roots.
pub fn client_config(trust: &ClientTrust) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    if !trust.pins.is_empty() {
        return client_builder(Arc::new(PinVerifier {
            pins: trust.pins.clone(),
            algorithms: provider.signature_verification_algorithms,
        }));
    }
    let mut roots = RootCertStore::empty();
    match &trust.ca_file {
        Some(path) => {
            for cert in load_cert_chain(path)? {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let why = if native.errors.is_empty() {
                    "none found".to_owned()
                } else {
                    native
                        .errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                return Err(TlsError::NativeRoots(why));
            }
            for err in &native.errors {
                tracing::debug!(error = %err, "skipped part of the system root certificates");
            }
        }
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    client_builder(Arc::new(RootsVerifier { inner }))
}

/// A client configuration that accepts any server certificate and records its
/// fingerprint, for trust-on-first-use.
///
/// **Only for TOFU.** The connection is not authenticated: the caller must not send
/// anything on it (no tunnel request) before the user has seen the fingerprint and
/// accepted it, and should then pin it. The handshake signatures are still verified, so
/// the server did prove it holds the key of the certificate whose fingerprint is captured.
pub fn probe_config() -> Result<(Arc<ClientConfig>, CapturedFingerprint), TlsError> {
    let captured = CapturedFingerprint::default();
    let config = client_builder(Arc::new(CaptureVerifier {
        captured: captured.clone(),
        algorithms: provider().signature_verification_algorithms,
    }))?;
    Ok((config, captured))
}

// ---------------------------------------------------------------------------------------
// Explaining failures
// ---------------------------------------------------------------------------------------

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

/// The pin mismatch inside a handshake error, if that is why it failed.
pub fn pin_mismatch(err: &io::Error) -> Option<&PinMismatch> {
    match rustls_error(err)? {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PinMismatch>()
        }
        _ => None,
    }
}

const PIN_HINT: &str =
    "run `hakuriver-ssh-proxy fingerprint` on the Host and pass it with --fingerprint";

/// rustls describes presented names in debug form (`DnsName("a.example")`,
/// `IpAddress(192.0.2.1)`); users want the names.
fn plain_name(debug: &str) -> &str {
    for prefix in ["DnsName(", "IpAddress(", "Uri("] {
        if let Some(inner) = debug.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
            return inner.trim_matches('"');
        }
    }
    debug
}

/// A one-line explanation of a failed TLS connection to the proxy, for the user.
pub fn describe_tls_error(err: &io::Error) -> String {
    if let Some(tls) = rustls_error(err) {
        return describe_rustls_error(tls);
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => {
            "the proxy closed the connection during the TLS handshake; \
             is this a plain (non-TLS) port, or is the proxy overloaded?"
                .to_owned()
        }
        io::ErrorKind::ConnectionReset => {
            "the proxy reset the connection during the TLS handshake".to_owned()
        }
        io::ErrorKind::TimedOut => "the TLS handshake with the proxy timed out".to_owned(),
        _ => format!("TLS connection to the proxy failed: {err}"),
    }
}

/// [`describe_tls_error`] for a rustls error already taken out of its I/O error.
pub fn describe_rustls_error(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => describe_certificate_error(cert),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            "the proxy did not answer with TLS; is this a plain (non-TLS) port? (try --no-tls)"
                .to_owned()
        }
        E::AlertReceived(alert) => {
            format!("the proxy refused the TLS handshake (alert: {alert:?})")
        }
        E::PeerIncompatible(why) => {
            format!("the proxy and this client share no TLS version or cipher ({why:?})")
        }
        E::NoCertificatesPresented => "the proxy presented no certificate".to_owned(),
        other => format!("TLS error talking to the proxy: {other}"),
    }
}

fn describe_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the proxy's certificate expired on {}",
            format_utc(not_after.as_secs())
        ),
        CertificateError::Expired => "the proxy's certificate has expired".to_owned(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the proxy's certificate is not valid until {}; check the clocks on both machines",
            format_utc(not_before.as_secs())
        ),
        CertificateError::NotValidYet => {
            "the proxy's certificate is not valid yet; check the clocks on both machines".to_owned()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names = if presented.is_empty() {
                "no names".to_owned()
            } else {
                presented.iter().map(|n| plain_name(n)).collect::<Vec<_>>().join(", ")
            };
            format!(
                "the proxy's certificate is not valid for {:?} (it is for {names}); \
                 connect with one of those names or set --server-name",
                expected.to_str()
            )
        }
        CertificateError::NotValidForName => {
            "the proxy's certificate is not valid for the name connected to; set --server-name"
                .to_owned()
        }
        CertificateError::UnknownIssuer => format!(
            "the proxy's certificate is not signed by a trusted CA (self-signed?); to pin it, {PIN_HINT}"
        ),
        CertificateError::Other(other) => {
            if let Some(pin) = other.0.downcast_ref::<PinMismatch>() {
                format!(
                    "the proxy presented certificate {} but the pinned fingerprint is {}; \
                     if its certificate was replaced on purpose, check `hakuriver-ssh-proxy fingerprint` \
                     on the Host and update --fingerprint",
                    pin.presented,
                    pin.expected
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                )
            } else if let Some(untrusted) = other.0.downcast_ref::<UntrustedCertificate>() {
                format!(
                    "the proxy's certificate {} is not signed by a trusted CA (self-signed?); \
                     if that matches `hakuriver-ssh-proxy fingerprint` on the Host, pin it with --fingerprint",
                    untrusted.fingerprint
                )
            } else {
                format!("the proxy's certificate was rejected: {other}")
            }
        }
        other => format!("the proxy's certificate was rejected: {other}"),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
fn format_utc(secs: u64) -> String {
    let mut days = secs / 86_400;
    let rem = secs % 86_400;
    let mut year = 1970u64;
    loop {
        let len = if is_leap(year) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    let month_lengths = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 1;
    for len in month_lengths {
        if days < len {
            break;
        }
        days -= len;
        month += 1;
    }
    format!(
        "{year:04}-{month:02}-{:02} {:02}:{:02}:{:02} UTC",
        days + 1,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_leap(year: u64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_read_plainly() {
        assert_eq!(plain_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(plain_name("IpAddress(192.0.2.1)"), "192.0.2.1");
        assert_eq!(plain_name("something else"), "something else");
    }
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

    const WAIT: Duration = Duration::from_secs(10);
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    // ---- certificate minting (test time only) ----

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn mint_ca(name: &str) -> Ca {
        mint_ca_signed_by(name, None)
    }

    fn mint_ca_signed_by(name: &str, issuer: Option<&Ca>) -> Ca {
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

    fn mint_leaf(
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
        CertPair {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }

    fn valid_leaf(ca: &Ca, names: &[&str]) -> CertPair {
        mint_leaf(
            ca,
            names,
            SystemTime::now() - DAY,
            SystemTime::now() + 30 * DAY,
        )
    }

    fn self_signed_pair() -> CertPair {
        let (cert, key) = generate_self_signed(&["localhost".to_owned()]).unwrap();
        CertPair {
            chain: vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            key: PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        }
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = base64(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    fn base64(data: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
        chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    fn key_pem(key: &PrivateKeyDer<'_>) -> String {
        pem("PRIVATE KEY", key.secret_der())
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    fn ca_trust(dir: &Path, ca: &Ca) -> Arc<ClientConfig> {
        let ca_file = write(dir, "ca.pem", &ca.cert.pem());
        client_config(&ClientTrust {
            pins: vec![],
            ca_file: Some(ca_file),
        })
        .unwrap()
    }

    fn pinned(pins: Vec<Fingerprint>) -> Arc<ClientConfig> {
        client_config(&ClientTrust {
            pins,
            ca_file: None,
        })
        .unwrap()
    }

    fn serving(pair: CertPair) -> Arc<ServerConfig> {
        server_config(Arc::new(ServerCertStore::new(pair).unwrap())).unwrap()
    }

    // ---- handshakes over an in-memory pipe ----

    type Handshake = (
        io::Result<client::TlsStream<DuplexStream>>,
        io::Result<server::TlsStream<DuplexStream>>,
    );

    async fn handshake(
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
    async fn refused(
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

    async fn ping(
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

    // ---- fingerprints ----

    #[test]
    fn fingerprint_display_is_prefixed_lowercase_hex() {
        let fp = Fingerprint::from_bytes([0xAB; 32]);
        assert_eq!(fp.to_string(), format!("sha256:{}", "ab".repeat(32)));
        let of_empty = Fingerprint::of(b"");
        assert_eq!(
            of_empty.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn fingerprint_parses_every_accepted_form() {
        let fp = Fingerprint::of(b"hakuriver");
        let hex: String = fp.to_string()["sha256:".len()..].to_owned();
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        for form in [
            fp.to_string(),
            format!("SHA256:{hex}"),
            format!("Sha256:{}", hex.to_uppercase()),
            hex.clone(),
            hex.to_uppercase(),
            colons.clone(),
            colons.to_uppercase(),
            format!("sha256:{colons}"),
            format!("  {fp}\n"),
        ] {
            assert_eq!(form.parse::<Fingerprint>(), Ok(fp), "form {form:?}");
        }
    }

    #[test]
    fn fingerprint_rejects_malformed_input_clearly() {
        let hex = "ab".repeat(32);
        for (input, hint) in [
            (String::new(), "found 0 hex digits"),
            (hex[..62].to_owned(), "found 62 hex digits"),
            (format!("{hex}ab"), "found 66 hex digits"),
            (format!("{}zz", &hex[..62]), "'z' is not a hex digit"),
            (format!("sha1:{hex}"), "is not a hex digit"),
            (format!("md5 {hex}"), "is not a hex digit"),
        ] {
            let err = input.parse::<Fingerprint>().unwrap_err().to_string();
            assert!(err.contains(hint), "{input:?}: {err}");
            assert!(err.contains("expected sha256:"), "{err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "error quotes the input: {err}"
            );
        }
    }

    #[test]
    fn fingerprint_round_trips_through_toml() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Section {
            fingerprints: Vec<Fingerprint>,
        }
        let fp = Fingerprint::of(b"x");
        let text = format!("fingerprints = [\"{}\"]", fp.to_string().to_uppercase());
        let parsed: Section = toml::from_str(&text).unwrap();
        assert_eq!(parsed.fingerprints, vec![fp]);
        let out = toml::to_string(&parsed).unwrap();
        assert!(out.contains(&fp.to_string()), "{out}");
        let bad = toml::from_str::<Section>("fingerprints = [\"sha256:12\"]").unwrap_err();
        assert!(bad.to_string().contains("invalid fingerprint"), "{bad}");
    }

    #[test]
    fn utc_dates_are_formatted_correctly() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(951_868_800), "2000-03-01 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    // ---- loading and generating ----

    #[test]
    fn self_signed_generates_once_then_reuses() {
        let state = tempfile::tempdir().unwrap();
        let names = vec![
            "proxy.test".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let first = self_signed(state.path(), &names).unwrap();
        let second = self_signed(state.path(), &["other.test".to_owned()]).unwrap();
        assert!(first.fingerprint().is_some());
        assert_eq!(first.fingerprint(), second.fingerprint());

        let dir = state.path().join(SELF_SIGNED_DIR);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join(SELF_SIGNED_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir.join(SELF_SIGNED_CERT_FILE)), 0o644);
            assert_eq!(mode(&dir), 0o700);
        }
    }

    #[test]
    fn self_signed_regenerates_when_a_file_is_missing() {
        let state = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        let first = self_signed(state.path(), &names).unwrap();
        fs::remove_file(
            state
                .path()
                .join(SELF_SIGNED_DIR)
                .join(SELF_SIGNED_CERT_FILE),
        )
        .unwrap();
        let second = self_signed(state.path(), &names).unwrap();
        assert_ne!(first.fingerprint(), second.fingerprint());
        assert_eq!(
            self_signed(state.path(), &names).unwrap().fingerprint(),
            second.fingerprint()
        );
    }

    #[test]
    fn self_signed_rejects_an_invalid_name() {
        let state = tempfile::tempdir().unwrap();
        let err = self_signed(state.path(), &["bad name\u{7f}é".to_owned()]).unwrap_err();
        assert!(matches!(err, TlsError::InvalidName { .. }), "{err}");
        assert!(!state
            .path()
            .join(SELF_SIGNED_DIR)
            .join(SELF_SIGNED_KEY_FILE)
            .exists());
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

    #[test]
    fn load_cert_pair_reads_chain_and_pkcs8_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = mint_ca("root");
        let intermediate = mint_ca_signed_by("intermediate", Some(&root));
        let mut pair = valid_leaf(&intermediate, &["proxy.test"]);
        pair.chain.push(intermediate.cert.der().clone());
        let cert = write(dir.path(), "chain.pem", &chain_pem(&pair.chain));
        let key = write(dir.path(), "key.pem", &key_pem(&pair.key));
        let loaded = load_cert_pair(&cert, &key).unwrap();
        assert_eq!(loaded.chain, pair.chain);
        assert_eq!(loaded.fingerprint(), pair.fingerprint());
        assert_eq!(loaded.fingerprint(), Some(Fingerprint::of(&pair.chain[0])));
    }

    #[test]
    fn load_cert_pair_accepts_a_sec1_key() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed_pair();
        let sec1 = sec1_from_pkcs8(pair.key.secret_der());
        let cert = write(dir.path(), "cert.pem", &chain_pem(&pair.chain));
        let key = write(dir.path(), "key.pem", &pem("EC PRIVATE KEY", &sec1));
        let loaded = load_cert_pair(&cert, &key).unwrap();
        assert!(matches!(loaded.key, PrivateKeyDer::Sec1(_)));
    }

    /// Digs the SEC1 `ECPrivateKey` out of a PKCS#8 wrapper:
    /// SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey }.
    fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
        fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
            let tag = input[0];
            let (len, header) = if input[1] < 0x80 {
                (usize::from(input[1]), 2)
            } else {
                let n = usize::from(input[1] & 0x7f);
                let len = input[2..2 + n]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                (len, 2 + n)
            };
            (tag, &input[header..header + len], &input[header + len..])
        }
        let (tag, body, _) = tlv(pkcs8);
        assert_eq!(tag, 0x30);
        let (_version, _, rest) = tlv(body);
        let (_algorithm, _, rest) = tlv(rest);
        let (tag, private_key, _) = tlv(rest);
        assert_eq!(tag, 0x04);
        private_key.to_vec()
    }

    #[test]
    fn load_cert_pair_refuses_a_key_of_another_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let a = self_signed_pair();
        let b = self_signed_pair();
        let cert = write(dir.path(), "a-cert.pem", &chain_pem(&a.chain));
        let key = write(dir.path(), "b-key.pem", &key_pem(&b.key));
        let err = load_cert_pair(&cert, &key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("a-cert.pem") && msg.contains("b-key.pem"),
            "{msg}"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pair = self_signed_pair();
        let missing = dir.path().join("missing.pem");
        let empty = write(dir.path(), "empty.pem", "");
        let cert_only = write(dir.path(), "cert-only.pem", &chain_pem(&pair.chain));
        let garbled = write(
            dir.path(),
            "garbled.pem",
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        );

        let err = load_cert_chain(&missing).unwrap_err();
        assert!(
            matches!(err, TlsError::Read { .. }) && err.to_string().contains("missing.pem"),
            "{err}"
        );
        let err = load_cert_chain(&empty).unwrap_err();
        assert!(
            matches!(err, TlsError::NoCertificates { .. }) && err.to_string().contains("empty.pem"),
            "{err}"
        );
        let err = load_private_key(&cert_only).unwrap_err();
        assert!(
            matches!(err, TlsError::NoPrivateKey { .. })
                && err.to_string().contains("cert-only.pem"),
            "{err}"
        );
        let err = load_cert_chain(&garbled).unwrap_err();
        assert!(
            matches!(err, TlsError::Pem { .. }) && err.to_string().contains("garbled.pem"),
            "{err}"
        );
        let err = load_cert_pair(&cert_only, &missing).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn cert_pair_debug_hides_the_key() {
        let pair = self_signed_pair();
        let shown = format!("{pair:?}");
        assert!(shown.contains("sha256:"), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", pair.key.secret_der())),
            "{shown}"
        );
    }

    // ---- pinning ----

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
    async fn pinned_tls12_handshake_verifies_signatures() {
        let pair = self_signed_pair();
        let fp = pair.fingerprint().unwrap();
        let tls12_only = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pins: vec![fp],
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth();
        let (c, s) = handshake(serving(pair), Arc::new(tls12_only), "localhost").await;
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
            .with_protocol_versions(PROTOCOL_VERSIONS)
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

    // ---- CA verification ----

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
        let secs = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(text.contains("expired on"), "{text}");
        assert!(text.contains(&format_utc(secs)[..10]), "{text}");
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

    #[test]
    fn describe_unknown_issuer_without_context_suggests_pinning() {
        let err = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = describe_tls_error(&err);
        assert!(
            text.contains("not signed by a trusted CA") && text.contains("--fingerprint"),
            "{text}"
        );
    }

    #[test]
    fn client_config_reports_a_bad_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "ca.pem", "");
        let err = client_config(&ClientTrust {
            pins: vec![],
            ca_file: Some(empty),
        })
        .unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    // ---- reloading ----

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

    #[test]
    fn replace_with_a_broken_pair_keeps_the_current_certificate() {
        let good = self_signed_pair();
        let fp = good.fingerprint().unwrap();
        let store = ServerCertStore::new(good).unwrap();
        let mut broken = self_signed_pair();
        broken.key = self_signed_pair().key;
        assert!(matches!(
            store.replace(broken),
            Err(TlsError::InvalidPair(_))
        ));
        let empty = CertPair {
            chain: vec![],
            key: self_signed_pair().key,
        };
        assert!(store.replace(empty).is_err());
        assert_eq!(store.fingerprint(), fp);
    }

    #[test]
    fn reload_rereads_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed_pair();
        let second = self_signed_pair();
        let cert = write(dir.path(), "cert.pem", &chain_pem(&first.chain));
        let key = write(dir.path(), "key.pem", &key_pem(&first.key));
        let store = ServerCertStore::from_files(&cert, &key).unwrap();
        assert_eq!(store.fingerprint(), first.fingerprint().unwrap());
        assert_eq!(store.reload().unwrap(), first.fingerprint().unwrap());

        // Half-way through a rotation (new certificate, old key) the reload is refused and
        // the old certificate stays.
        write(dir.path(), "cert.pem", &chain_pem(&second.chain));
        let err = store.reload().unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert_eq!(store.fingerprint(), first.fingerprint().unwrap());

        write(dir.path(), "key.pem", &key_pem(&second.key));
        assert_eq!(store.reload().unwrap(), second.fingerprint().unwrap());
        assert_eq!(store.fingerprint(), second.fingerprint().unwrap());
    }

    #[test]
    fn reload_of_a_self_signed_store_keeps_the_certificate() {
        let state = tempfile::tempdir().unwrap();
        let store = ServerCertStore::self_signed(state.path(), &["localhost".to_owned()]).unwrap();
        let fp = store.fingerprint();
        assert_eq!(store.reload().unwrap(), fp);
        let memory = ServerCertStore::new(self_signed_pair()).unwrap();
        assert_eq!(memory.reload().unwrap(), memory.fingerprint());
    }

    // ---- peers that do not speak TLS ----

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
}
