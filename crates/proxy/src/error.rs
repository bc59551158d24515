//! Why a connection was refused. `Display` is exactly the text after `ERROR ` on the
//! wire, in HakuRiver's wording: users and HakuRiver's Python client see it. Internals
//! (paths, SQLite messages, OS errors) go to the log only, through [`Refusal::detail`].

use hakuriver_tunnel::{RequestError, TaskId};

use crate::directory::{DbError, Denied};

/// A refusal sent to the client as `ERROR <Display>\n`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The request line itself was bad, late or unreadable.
    #[error("{0}")]
    Request(#[from] RequestError),
    /// A TLS ClientHello arrived on a plain listener.
    #[error("Invalid request format.")]
    TlsOnPlainPort,
    /// No such task.
    #[error("Task {0} not found.")]
    NotFound(TaskId),
    /// The task is a batch command, not a VPS.
    #[error("Task {0} is not a VPS task.")]
    NotVps(TaskId),
    /// The VPS is not `running` or `paused`.
    #[error("VPS task {0} is not active (status: {1}).")]
    Inactive(TaskId, String),
    /// The task has no runner.
    #[error("VPS task {0} has no assigned node.")]
    NoNode(TaskId),
    /// The task has no published SSH port.
    #[error("VPS task {0} has no SSH port assigned.")]
    NoSshPort(TaskId),
    /// The runner is not `online` (or its node row is gone).
    #[error("Assigned node for VPS task {0} is not online.")]
    NodeOffline(TaskId),
    /// The node's URL has no usable host.
    #[error("Error parsing runner URL for node {0}.")]
    BadRunnerUrl(String),
    /// The task's `ssh_port` does not fit a port number: HakuRiver's connect would fail.
    #[error("Failed to connect to Runner for task {0}.")]
    PortOutOfRange(TaskId, i64),
    /// The database could not be read.
    #[error("Internal server error during task lookup.")]
    Database(#[source] DbError),
    /// Any other internal failure during lookup.
    #[error("Internal server error during task lookup.")]
    Internal(String),
    /// The runner did not accept within the connect timeout.
    #[error("Timeout connecting to Runner for task {0}.")]
    ConnectTimeout(TaskId),
    /// The runner actively refused (sshd not running in the container).
    #[error("Connection refused by VPS task {0} on node {1}.")]
    ConnectRefused(TaskId, String),
    /// Any other connect failure (unreachable, bad port, name resolution).
    #[error("Failed to connect to Runner for task {0}.")]
    ConnectFailed(TaskId),
    /// The proxy is at `max_connections`.
    #[error("Too many connections; try again later.")]
    TooManyConnections,
    /// This client address used up its `lookups_per_minute_per_ip`.
    #[error("Too many requests from your address; try again later.")]
    TooManyLookups,
    /// This client address is not in `allowed_clients`.
    #[error("Connections from your address are not allowed.")]
    NotAllowed,
    /// This client address is at `max_connections_per_ip`.
    #[error("Too many connections from your address; try again later.")]
    TooManyFromPeer,
}

impl Refusal {
    /// The full cause chain, for the log.
    pub fn detail(&self) -> String {
        match self {
            Refusal::Database(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(cause) = source {
                    text.push_str(": ");
                    text.push_str(&cause.to_string());
                    source = cause.source();
                }
                text
            }
            Refusal::Internal(detail) => detail.clone(),
            Refusal::PortOutOfRange(id, port) => {
                format!("ssh_port {port} of VPS task {id} is out of range")
            }
            Refusal::TlsOnPlainPort => {
                "TLS ClientHello on a plain port (the client should use a TLS port, or no TLS)"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<Denied> for Refusal {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::NotFound(id) => Refusal::NotFound(id),
            Denied::NotVps(id) => Refusal::NotVps(id),
            Denied::Inactive(id, status) => Refusal::Inactive(id, status),
            Denied::NoNode(id) => Refusal::NoNode(id),
            Denied::NoSshPort(id) => Refusal::NoSshPort(id),
            Denied::NodeOffline(id) => Refusal::NodeOffline(id),
            Denied::BadRunnerUrl(node) => Refusal::BadRunnerUrl(node),
            Denied::PortOutOfRange(id, port) => Refusal::PortOutOfRange(id, port),
            Denied::Database(e) => Refusal::Database(e),
            Denied::Internal(detail) => Refusal::Internal(detail),
        }
    }
}
