//! Where the proxy is and how to reach it over TCP: the [`Target`] and a connect that
//! tries each resolved address in turn under one deadline.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hakuriver_tunnel::net::tune_tcp;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::error::{connect_reason, secs, ClientError};

/// Where the Host proxy listens (IPv6 printed in brackets).
pub use hakuriver_tunnel::net::HostPort as Target;

/// Resolves `target` and connects to its addresses in turn until one answers or the
/// deadline passes.
pub async fn connect_tcp(
    target: &Target,
    deadline: Instant,
    budget: Duration,
) -> Result<TcpStream, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        addr: target.to_string(),
        reason,
    };
    let timed_out = || unreachable(format!("no connection within {}", secs(budget)));
    let addrs: Vec<SocketAddr> = match timeout_at(
        deadline,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => {
            return Err(unreachable(format!(
                "cannot resolve {:?}: {}",
                target.host,
                resolve_reason(&e)
            )))
        }
        Ok(Ok(addrs)) => addrs.collect(),
    };
    let mut last_error = None;
    for addr in addrs {
        tracing::debug!(%addr, "connecting");
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(stream)) => {
                if let Err(e) = tune_tcp(&stream) {
                    tracing::debug!(error = %e, "cannot set socket options");
                }
                return Ok(stream);
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                last_error = Some(e);
            }
        }
    }
    Err(unreachable(match last_error {
        Some(e) => connect_reason(&e),
        None => "the name resolved to no address".to_owned(),
    }))
}

fn resolve_reason(e: &io::Error) -> String {
    // getaddrinfo's text ("failed to lookup address information: Name or service not
    // known") is long; keep the part after the colon.
    let text = e.to_string();
    text.rsplit(": ").next().unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_print_with_brackets_for_ipv6() {
        let t = Target {
            host: "::1".into(),
            port: 8002,
        };
        assert_eq!(t.to_string(), "[::1]:8002");
    }
}
