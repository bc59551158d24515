//! ProxyCommand mode: the tunnel on stdin/stdout, for ssh, scp, rsync, sftp and
//! anything else that runs `ProxyCommand hakuriver-ssh --stdio %n`.

use hakuriver_tunnel::protocol::TaskRef;
use hakuriver_tunnel::relay;

use crate::error::ClientError;
use crate::tunnel::{Connector, Opened};

/// Prefix of the host names `ssh-config` sets up (`Host hakuriver-*`).
pub const HOST_PREFIX: &str = "hakuriver-";

/// The task from `%n`: `hakuriver-<id>`, `hakuriver-<name>` or a bare `<id>`.
pub fn task_from_host(name: &str) -> &str {
    name.strip_prefix(HOST_PREFIX).unwrap_or(name)
}

/// Opens the tunnel and relays it to stdin/stdout until both directions end.
/// Exit status 0 for a clean end; errors (the proxy's refusal included) are returned.
pub async fn run(connector: Connector, task: TaskRef) -> Result<u8, ClientError> {
    // stdin EOF is passed on as a write shutdown of the tunnel, so the VPS sees the
    // end of input while its output keeps flowing back (scp and rsync rely on it).
    let mut stdio = tokio::io::join(tokio::io::stdin(), ClosingStdout(tokio::io::stdout()));
    let mut tunnel = match connector.open_any(&task).await? {
        Opened::Plain(tunnel) => tunnel,
        // Survives dropped connections to the Host; ssh on our stdio never notices.
        // ssh sends its ProxyCommand SIGHUP when it exits: the Host is told the tunnel
        // is over instead of holding it for a resume.
        Opened::Resumable(tunnel) => {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangup = signal(SignalKind::hangup()).ok();
            let mut terminate = signal(SignalKind::terminate()).ok();
            let stop = async move {
                tokio::select! {
                    Some(()) = async { hangup.as_mut()?.recv().await } => {}
                    Some(()) = async { terminate.as_mut()?.recv().await } => {}
                    else => std::future::pending::<()>().await,
                }
            };
            return crate::resumable::drive_until(&connector, *tunnel, &mut stdio, stop)
                .await
                .map(|()| 0);
        }
    };
    let outcome = relay(&mut tunnel, &mut stdio).await;
    tracing::debug!(
        to_vps = outcome.stats.b_to_a,
        from_vps = outcome.stats.a_to_b,
        "tunnel closed"
    );
    match outcome.result {
        Ok(()) => Ok(0),
        // ssh closing its end first is the normal way a session ends.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(source) => Err(ClientError::Relay {
            task: task.to_string(),
            source,
        }),
    }
}

/// stdout whose shutdown really ends it. tokio's `Stdout` only flushes on shutdown, so
/// when the VPS side closed (sshd gone) while ssh, blocked on a full channel window,
/// sent nothing more, ssh never learned the connection was over and waited forever.
/// Like `nc` or `socat`, we now close our end of ssh's pipe when the tunnel's read side
/// ends.
struct ClosingStdout(tokio::io::Stdout);

impl tokio::io::AsyncWrite for ClosingStdout {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::ready!(std::pin::Pin::new(&mut self.0).poll_flush(cx))?;
        std::task::Poll::Ready(end_stdout())
    }
}

/// Points fd 1 at /dev/null (`dup2(2)` through rustix), which closes our end of the pipe
/// to ssh (its reader sees EOF) without leaving fd 1 free for some later `open` to take.
/// Nothing else writes to stdout after the relay's flush above (in --stdio mode stdout is
/// the data channel, used only by the relay).
fn end_stdout() -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_map_to_ids() {
        assert_eq!(task_from_host("hakuriver-42"), "42");
        assert_eq!(task_from_host("42"), "42");
        assert_eq!(task_from_host("hakuriver-abc"), "abc");
        assert_eq!(task_from_host("other-42"), "other-42");
    }
}
