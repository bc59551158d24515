//! The client's side: what it trusts ([`ClientTrust`]) and its rustls configurations.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};

use super::verify::{Check, TrustVerifier};
use super::{
    load_cert_chain, provider, CapturedFingerprint, Fingerprint, TlsError, PROTOCOL_VERSIONS,
};

/// What the client trusts. Pins win over the CA file, which wins over the system roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTrust {
    /// Accept a server iff its end-entity certificate has one of these fingerprints (its
    /// name, chain and validity dates are then not checked).
    pub pins: Vec<Fingerprint>,
    /// PEM file of CA certificates to verify the server's chain and name against.
    pub ca_file: Option<PathBuf>,
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
        return client_builder(Arc::new(TrustVerifier::new(
            Check::Pins(trust.pins.clone()),
            &provider,
        )));
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
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    client_builder(Arc::new(TrustVerifier::new(
        Check::Roots(webpki),
        &provider,
    )))
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
    let config = client_builder(Arc::new(TrustVerifier::new(
        Check::Capture(captured.clone()),
        &provider(),
    )))?;
    Ok((config, captured))
}
