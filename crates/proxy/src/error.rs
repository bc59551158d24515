//! Why a connection was refused. `Display` is exactly the text after `ERROR ` on the
//! wire, in HakuRiver's wording: users and HakuRiver's Python client see it. Internals
//! (paths, SQLite messages, OS errors) go to the log only, through [`Refusal::detail`].

use hakuriver_tunnel::{RequestError, TaskId};

use crate::directory::{DbError, Denied, Role, SchemaKind};

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
    /// The API token is unknown or revoked.
    #[error("Invalid or revoked API token. Log in again with 'kohakuriver auth login' (hakuriver-ssh reads the token from --token-file, $KOHAKURIVER_TOKEN or ~/.kohakuriver/auth.json).")]
    BadToken,
    /// The token's KohakuRiver account is disabled (the username, for the log).
    #[error("Your KohakuRiver account is disabled; ask an administrator to reactivate it.")]
    AccountDisabled(String),
    /// The user's role is below `user`.
    #[error("Your KohakuRiver role ({0}) may not open SSH sessions; ask an administrator for the user role.")]
    RoleTooLow(Role),
    /// Missing or not the user's: the same text, so a refusal never tells whether a task
    /// exists (`true`: it exists; the log only).
    #[error("Task {0} not found, or you may not reach it (only its owner, users assigned to it and operators may).")]
    NotFoundOrForbidden(TaskId, bool),
    /// No VPS of that name among those the user may reach.
    #[error("No VPS named {0:?} that you may reach; 'hakuriver-ssh list' shows yours.")]
    NoSuchName(String),
    /// Several VPS of that name among those the user may reach (the name, how many).
    #[error("{1} VPS tasks named {0:?} that you may reach; use the task ID ('hakuriver-ssh list' shows them).")]
    AmbiguousName(String, usize),
    /// A task name sent to a Host whose database has none.
    #[error("Task names need a KohakuRiver 1.0 Host; use the task ID.")]
    NamesUnsupported,
    /// Auth mode on a database without users: a setup error, not the user's.
    #[error("Internal server error during task lookup.")]
    AuthUnsupported(SchemaKind),
    /// The runner did not accept within the connect timeout.
    #[error("Timeout connecting to Runner for task {0}.")]
    ConnectTimeout(TaskId),
    /// The runner actively refused (sshd not running in the container).
    #[error("Connection refused by VPS task {0} on node {1}.")]
    ConnectRefused(TaskId, String),
    /// Any other connect failure (unreachable, bad port, name resolution).
    #[error("Failed to connect to Runner for task {0}.")]
    ConnectFailed(TaskId),
    /// `[ssh_proxy.auth] mode = "kohakuriver"` and no token came with the request.
    #[error("Authentication required: this Host admits KohakuRiver users only. Log in with 'kohakuriver auth login' (hakuriver-ssh reads the token from --token-file, $KOHAKURIVER_TOKEN or ~/.kohakuriver/auth.json) and connect with --tls.")]
    AuthRequired,
    /// A token arrived on a plain listener: it crossed the network in clear.
    #[error("API tokens are accepted only over TLS; connect to this Host's TLS port with --tls (and revoke this token if the network is not trusted).")]
    TokenOverPlain,
    /// A name or LIST request while neither auth nor `allow_listing` is on.
    #[error("Task names and lists are not enabled on this Host; use the task ID.")]
    ListingDisabled,
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
    /// A RESUME for a tunnel this Host does not hold (it ended, its grace period passed,
    /// the proxy crashed since, or it never existed).
    #[error("Resume refused: this Host holds no such tunnel (it ended, it waited longer than its grace period, or the proxy crashed and lost it).")]
    ResumeUnknown,
    /// A RESUME whose proof, generation or transport does not match the tunnel.
    #[error("Resume refused: the resume proof does not match this tunnel.")]
    ResumeRefused(&'static str),
}

impl Refusal {
    /// Whether this refusal is a failed credential check (unknown, revoked or
    /// disabled): those spend a second lookup from the client's budget.
    pub fn is_failed_credential(&self) -> bool {
        matches!(
            self,
            Refusal::BadToken | Refusal::AccountDisabled(_) | Refusal::ResumeRefused(_)
        )
    }

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
            Refusal::BadToken => "API token unknown or revoked".to_owned(),
            Refusal::AccountDisabled(user) => format!("account {user} is disabled"),
            Refusal::RoleTooLow(role) => format!("role {role} may not open SSH sessions"),
            Refusal::NotFoundOrForbidden(id, true) => format!("task {id} is not theirs to reach"),
            Refusal::NotFoundOrForbidden(id, false) => format!("task {id} not found"),
            Refusal::AuthUnsupported(kind) => {
                format!("auth mode needs a KohakuRiver 1.0 database; this one is {kind}")
            }
            Refusal::ResumeRefused(why) => format!("resume refused: {why}"),
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
            Denied::BadToken => Refusal::BadToken,
            Denied::AccountDisabled(user) => Refusal::AccountDisabled(user),
            Denied::RoleTooLow(role) => Refusal::RoleTooLow(role),
            Denied::NotFoundOrForbidden { id, exists } => Refusal::NotFoundOrForbidden(id, exists),
            Denied::NoSuchName(name) => Refusal::NoSuchName(name),
            Denied::AmbiguousName(name, count) => Refusal::AmbiguousName(name, count),
            Denied::NamesUnsupported => Refusal::NamesUnsupported,
            Denied::AuthUnsupported(kind) => Refusal::AuthUnsupported(kind),
        }
    }
}
