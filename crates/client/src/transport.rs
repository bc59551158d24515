//! How the bytes travel to the proxy once TCP is up: plain, or TLS whose certificate is
//! verified (pinned fingerprint, CA file, system roots, or the trust-on-first-use store)
//! before anything about the task is sent.

use std::sync::Arc;

use hakuriver_tunnel::relay::ReadAhead;
use hakuriver_tunnel::tls::{
    client_config, probe_config, CapturedFingerprint, ClientTrust, Fingerprint,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use crate::config::TlsSettings;
use crate::error::ClientError;
use crate::tls_errors::describe_tls_error;
use crate::trust::KnownProxies;
use crate::tunnel::{Target, TunnelIo};

/// A stream ready for the request, and (trust on first use) the certificate to record
/// before anything about the task is sent.
pub struct Established {
    /// The plain or verified TLS stream.
    pub stream: Box<dyn TunnelIo>,
    /// The store and the fingerprint the proxy presented, when trusting on first use.
    pub first_use: Option<(KnownProxies, Fingerprint)>,
}

/// The transport to the Host proxy.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP, as HakuRiver's own host proxy speaks.
    Plain,
    /// TLS (hakuriver-ssh-proxy with `--tls`).
    Tls(TlsTransport),
}

/// A ready TLS client configuration for one proxy.
#[derive(Debug)]
pub struct TlsTransport {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    /// Set when the certificate is being trusted on first use: whatever the handshake
    /// captured is recorded in the store.
    first_use: Option<(CapturedFingerprint, KnownProxies)>,
}

impl Transport {
    /// The transport the settings ask for. Trust order: `--fingerprint`/`fingerprints`,
    /// else `ca_file`, else a fingerprint stored by `trust` for this proxy, else (with
    /// `--trust-on-first-use`) accept and store the first certificate, else system roots.
    pub fn from_settings(
        tls: &TlsSettings,
        target: &Target,
        trust_on_first_use: bool,
    ) -> Result<Transport, ClientError> {
        if !tls.enable {
            return Ok(Transport::Plain);
        }
        let tls_error = |reason: String| ClientError::Tls {
            addr: target.to_string(),
            reason,
        };
        let mut pins = tls
            .fingerprints
            .iter()
            .map(|fp| {
                fp.parse::<Fingerprint>()
                    .map_err(|e| tls_error(format!("bad fingerprint {fp:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = tls.known_proxies_file.clone().map(KnownProxies::new);
        let mut first_use = None;
        if pins.is_empty() && tls.ca_file.is_none() {
            if let Some(store) = &store {
                pins = store
                    .lookup(&target.to_string())
                    .map_err(ClientError::TrustStore)?;
                if pins.is_empty() && trust_on_first_use {
                    first_use = Some(store.clone());
                }
            } else if trust_on_first_use {
                return Err(tls_error(
                    "--trust-on-first-use needs a known_proxies file (no $HOME?)".to_owned(),
                ));
            }
        }
        let server_name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| target.host.clone());
        let server_name = ServerName::try_from(server_name.clone())
            .map_err(|e| tls_error(format!("invalid server name {server_name:?}: {e}")))?;
        let (config, first_use) = match first_use {
            Some(store) => {
                let (config, captured) = probe_config().map_err(|e| tls_error(e.to_string()))?;
                (config, Some((captured, store)))
            }
            None => {
                let trust = ClientTrust {
                    pins,
                    ca_file: tls.ca_file.clone(),
                };
                (
                    client_config(&trust).map_err(|e| tls_error(e.to_string()))?,
                    None,
                )
            }
        };
        Ok(Transport::Tls(TlsTransport {
            config,
            server_name,
            first_use,
        }))
    }

    /// Turns a connected socket into the stream the request goes over. For TLS this is
    /// where the handshake and certificate verification happen, bounded by `deadline`;
    /// an unverified server never sees the request.
    pub async fn establish(
        &self,
        tcp: TcpStream,
        target: &Target,
        deadline: Instant,
    ) -> Result<Established, ClientError> {
        let tls = match self {
            Transport::Plain => {
                return Ok(Established {
                    stream: Box::new(tcp),
                    first_use: None,
                })
            }
            Transport::Tls(tls) => tls,
        };
        let tls_error = |reason: String| ClientError::Tls {
            addr: target.to_string(),
            reason,
        };
        let connector = TlsConnector::from(Arc::clone(&tls.config));
        // ReadAhead: rustls reads its socket 4 KiB at a time otherwise.
        let tcp = ReadAhead::new(tcp);
        let stream = timeout_at(deadline, connector.connect(tls.server_name.clone(), tcp))
            .await
            .map_err(|_| tls_error("the TLS handshake did not finish in time".to_owned()))?
            .map_err(|e| tls_error(describe_tls_error(&e)))?;
        let first_use = match &tls.first_use {
            Some((captured, store)) => {
                let fingerprint = captured
                    .get()
                    .ok_or_else(|| tls_error("the proxy presented no certificate".to_owned()))?;
                Some((store.clone(), fingerprint))
            }
            None => None,
        };
        tracing::debug!(proxy = %target, "TLS verified");
        Ok(Established {
            stream: Box::new(stream),
            first_use,
        })
    }
}

/// Connects with TLS accepting any certificate and returns the fingerprint the proxy
/// presented, for the `trust` command. Nothing is sent over this connection.
pub async fn fetch_fingerprint(
    target: &Target,
    server_name: Option<&str>,
    timeout: std::time::Duration,
) -> Result<Fingerprint, ClientError> {
    let tls_error = |reason: String| ClientError::Tls {
        addr: target.to_string(),
        reason,
    };
    let deadline = Instant::now() + timeout;
    let tcp = crate::dial::connect_tcp(target, deadline, timeout).await?;
    let name = server_name.map_or_else(|| target.host.clone(), str::to_owned);
    let name = ServerName::try_from(name.clone())
        .map_err(|e| tls_error(format!("invalid server name {name:?}: {e}")))?;
    let (config, captured) = probe_config().map_err(|e| tls_error(e.to_string()))?;
    let stream = timeout_at(deadline, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| tls_error("the TLS handshake did not finish in time".to_owned()))?
        .map_err(|e| tls_error(describe_tls_error(&e)))?;
    drop(stream);
    captured
        .get()
        .ok_or_else(|| tls_error("the proxy presented no certificate".to_owned()))
}
