//! Certificate chains and private keys from PEM files.

use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{provider, Fingerprint, TlsError};

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
pub(crate) fn certified_key(pair: &CertPair) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let signing_key = provider()
        .key_provider
        .load_private_key(pair.key.clone_key())?;
    let certified = CertifiedKey::new(pair.chain.clone(), signing_key);
    // Unlike `CertifiedKey::from_der`, "cannot tell" is an error too: with ring every key
    // type exposes its public key, so an unknown answer means something is wrong.
    certified.keys_match()?;
    Ok(Arc::new(certified))
}
