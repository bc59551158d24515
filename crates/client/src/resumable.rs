//! Driving a resumable tunnel on the client: relay over the current connection, and
//! when it drops, reconnect with backoff (TLS verified exactly as the first time),
//! resume, and carry on; ssh never notices. Each break and resume is logged at `-v`
//! with how long it took.
//!
//! The session ends as ssh would end a lost connection (exit 255, one line saying what
//! happened) when the Host refuses the resume (the tunnel is gone there) or no resume
//! succeeds within the Host's grace period.

use std::time::Duration;

use hakuriver_tunnel::resume::Ended;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::tunnel::{Connector, ResumableTunnel};

/// First pause between reconnect attempts; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a last ABORT may take to write.
const ABORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Relays `local` through `tunnel` until the tunnel ends, resuming it across dropped
/// connections. `Ok` for a clean end.
pub async fn drive<L>(
    connector: &Connector,
    tunnel: ResumableTunnel,
    local: &mut L,
) -> Result<(), ClientError>
where
    L: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    drive_until(connector, tunnel, local, std::future::pending()).await
}

/// [`drive`], ended early (the Host told with an ABORT, so it does not hold the tunnel
/// for a resume) when `stop` completes: ssh sends its ProxyCommand SIGHUP when it exits.
pub async fn drive_until<L>(
    connector: &Connector,
    mut tunnel: ResumableTunnel,
    local: &mut L,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ClientError>
where
    L: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    let addr = connector.target.to_string();
    let mut stop = std::pin::pin!(stop);
    loop {
        let ended = tokio::select! {
            ended = tunnel.session.run(local, &mut tunnel.leg) => ended,
            () = &mut stop => {
                tunnel.session.abort(&mut tunnel.leg, "the client closed", ABORT_TIMEOUT).await;
                return Ok(());
            }
        };
        let lost = match ended {
            Ended::Finished => return Ok(()),
            Ended::LegLost(e) => e,
            Ended::Local(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                // ssh closed its end first: the usual end of a session.
                tunnel
                    .session
                    .abort(&mut tunnel.leg, "the client closed", ABORT_TIMEOUT)
                    .await;
                return Ok(());
            }
            Ended::Local(source) => {
                let reason = format!("the client's side failed: {source}");
                tunnel
                    .session
                    .abort(&mut tunnel.leg, &reason, ABORT_TIMEOUT)
                    .await;
                return Err(ClientError::Relay {
                    task: tunnel.session.id.to_string(),
                    source,
                });
            }
            Ended::PeerAborted(reason) => return Err(ClientError::TunnelAborted(reason)),
            Ended::Protocol(why) => {
                let reason = format!("protocol error: {why}");
                tunnel
                    .session
                    .abort(&mut tunnel.leg, &reason, ABORT_TIMEOUT)
                    .await;
                return Err(ClientError::TunnelAborted(reason));
            }
        };
        let broke = Instant::now();
        tracing::info!(proxy = %addr, error = %lost, "connection to the Host lost; resuming");
        let deadline = broke + tunnel.grace;
        let mut backoff = BACKOFF_START;
        let mut attempts = 0u32;
        let mut last = String::from("no attempt finished");
        let last_error = loop {
            attempts += 1;
            let attempt =
                tokio::time::timeout_at(deadline, connector.resume(&mut tunnel.session)).await;
            match attempt {
                Ok(Ok((leg, resent))) => {
                    tunnel.leg = leg;
                    tracing::info!(
                        proxy = %addr,
                        after_ms = broke.elapsed().as_millis() as u64,
                        attempts,
                        bytes_resent = resent,
                        "tunnel resumed after {:.2}s",
                        broke.elapsed().as_secs_f64()
                    );
                    break None;
                }
                Ok(Err(ClientError::ResumeRefused { addr, message })) => {
                    // The Host forgot the tunnel: if nothing was left to say, that is
                    // just the end of it (its last acknowledgement was lost with the
                    // connection).
                    if tunnel.session.all_but_closed() {
                        return Ok(());
                    }
                    return Err(ClientError::ResumeRefused { addr, message });
                }
                Ok(Err(e)) => {
                    tracing::debug!(proxy = %addr, attempts, error = %e, "resume attempt failed");
                    if Instant::now() >= deadline {
                        break Some(e.to_string());
                    }
                    // Up to the deadline, where one last attempt times out at once.
                    tokio::time::sleep_until((Instant::now() + backoff).min(deadline)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    last = e.to_string();
                }
                Err(_) => break Some(std::mem::take(&mut last)),
            }
        };
        if let Some(last) = last_error {
            return Err(ClientError::ResumeExpired {
                addr,
                grace_secs: tunnel.grace.as_secs(),
                last,
            });
        }
    }
}
