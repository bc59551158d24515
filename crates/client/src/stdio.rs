//! ProxyCommand mode: the tunnel on stdin/stdout, for ssh, scp, rsync, sftp and
//! anything else that runs `ProxyCommand hakuriver-ssh --stdio %n`.

use hakuriver_tunnel::{relay, TaskId};

use crate::error::ClientError;
use crate::tunnel::Connector;

/// Prefix of the host names `ssh-config` sets up (`Host hakuriver-*`).
pub const HOST_PREFIX: &str = "hakuriver-";

/// The task ID from `%n`: `hakuriver-<id>` or a bare `<id>`.
pub fn task_from_host(name: &str) -> &str {
    name.strip_prefix(HOST_PREFIX).unwrap_or(name)
}

/// Opens the tunnel and relays it to stdin/stdout until both directions end.
/// Exit status 0 for a clean end; errors (the proxy's refusal included) are returned.
pub async fn run(connector: Connector, task: TaskId) -> Result<u8, ClientError> {
    let mut tunnel = connector.open(task).await?;
    // stdin EOF is passed on as a write shutdown of the tunnel, so the VPS sees the
    // end of input while its output keeps flowing back (scp and rsync rely on it).
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
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
