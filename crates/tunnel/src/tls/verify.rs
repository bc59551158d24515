//! The client's certificate verifiers.
//!
//! One `TrustVerifier` implements rustls' `ServerCertVerifier` once: what differs
//! between pinning, CA/system-root verification and trust-on-first-use capture is only
//! how the end-entity certificate is judged (`Check`); the handshake signatures are
//! always verified the same way, with the provider's algorithms, so a server proves it
//! holds the key of the certificate it presented.

use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use super::{rustls_error, Fingerprint};

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

/// How a [`TrustVerifier`] judges the server's end-entity certificate.
#[derive(Debug)]
pub(crate) enum Check {
    /// Accept exactly these certificates (name, chain and validity not checked).
    Pins(Vec<Fingerprint>),
    /// Standard WebPKI verification; only an unknown issuer is reported differently,
    /// with the presented fingerprint, so the user can compare it with
    /// `hakuriver-ssh-proxy fingerprint`.
    Roots(Arc<WebPkiServerVerifier>),
    /// Record the fingerprint and accept: only for trust-on-first-use probing (see
    /// [`probe_config`](super::probe_config)).
    Capture(CapturedFingerprint),
}

/// The one verifier behind every client configuration: a [`Check`] of the certificate
/// plus the shared handshake-signature check.
#[derive(Debug)]
pub(crate) struct TrustVerifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustVerifier {
    /// A verifier applying `check`, verifying signatures with `provider`'s algorithms.
    pub(crate) fn new(check: Check, provider: &CryptoProvider) -> Self {
        TrustVerifier {
            check,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for TrustVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Pins(pins) => {
                let presented = Fingerprint::of(end_entity);
                if pins.contains(&presented) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(certificate_error(PinMismatch {
                        expected: pins.clone(),
                        presented,
                    }))
                }
            }
            Check::Roots(webpki) => webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|err| match err {
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                        certificate_error(UntrustedCertificate {
                            fingerprint: Fingerprint::of(end_entity),
                        })
                    }
                    other => other,
                }),
            Check::Capture(captured) => {
                *captured.0.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Fingerprint::of(end_entity));
                Ok(ServerCertVerified::assertion())
            }
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

/// The fingerprint a [`probe_config`](super::probe_config) connection saw; empty until the server's
/// certificate arrived.
#[derive(Debug, Clone, Default)]
pub struct CapturedFingerprint(Arc<Mutex<Option<Fingerprint>>>);

impl CapturedFingerprint {
    /// The fingerprint of the last certificate presented, if any.
    pub fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
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
