//! Everything that can stop the client before or instead of `ssh`, each with the one
//! line the user sees on stderr.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Exit status for our own failures (connection, proxy, configuration): the same value
/// `ssh` uses for its connection errors, so scripts see one code for "could not connect".
pub const EXIT_CONNECT_FAILED: u8 = 255;

/// A failure of the client itself. `Display` is the whole message line (without the
/// program-name prefix, which [`ClientError::user_line`] adds where it belongs).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The task given on the command line is neither a task ID nor a usable name.
    #[error("Invalid task ID format: {0:?} (a task ID is digits only, e.g. 7323718749301768192; names need a KohakuRiver API token).")]
    InvalidTaskId(String),
    /// The API token could not be read (the message names the source, never the token).
    #[error("{0}")]
    Token(String),
    /// The proxy speaks only HakuRiver's protocol, without this feature.
    #[error("the proxy at {addr} does not support {what} (it speaks only HakuRiver's protocol); use the task ID")]
    Unsupported {
        /// `host:port` as configured.
        addr: String,
        /// The feature asked for.
        what: &'static str,
    },
    /// The config file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither the config file nor `--host` names the Host.
    #[error("no Host address: set [network] host_reachable_address in {0}, pass --host HOST, or set $KOHAKURIVER_HOST")]
    NoHost(String),
    /// Name resolution, TCP connect or its timeout failed.
    #[error("cannot reach the HakuRiver proxy at {addr}: {reason}")]
    Unreachable {
        /// `host:port` as configured.
        addr: String,
        /// Why, in words.
        reason: String,
    },
    /// The TLS handshake or certificate verification failed.
    #[error("TLS with the HakuRiver proxy at {addr} failed: {reason}")]
    Tls {
        /// `host:port` as configured.
        addr: String,
        /// Why, in words.
        reason: String,
    },
    /// The proxy refused the tunnel; the message is the proxy's own text.
    #[error("Proxy Error: {0}")]
    Proxy(String),
    /// No reply line within the response timeout.
    #[error("the HakuRiver proxy at {addr} did not answer within {}", secs(*.after))]
    ResponseTimeout {
        /// `host:port` as configured.
        addr: String,
        /// The timeout that expired.
        after: Duration,
    },
    /// The proxy closed the connection before a complete reply line.
    #[error(
        "the HakuRiver proxy at {addr} closed the connection without a reply \
         (is {addr} the Host SSH proxy port? if it speaks TLS, add --tls)"
    )]
    NoReply {
        /// `host:port` as configured.
        addr: String,
    },
    /// The reply line is neither `SUCCESS` nor an error.
    #[error("unexpected reply from {addr}: {line:?} (is {addr} really the Host SSH proxy port?)")]
    UnexpectedReply {
        /// `host:port` as configured.
        addr: String,
        /// The start of the line received.
        line: String,
    },
    /// Writing the request or reading the reply failed.
    #[error("connection to the HakuRiver proxy at {addr} failed: {source}")]
    Io {
        /// `host:port` as configured.
        addr: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The local listener for `ssh` could not be opened.
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    LocalListen {
        /// The requested local port (0 = any).
        port: u16,
        /// The I/O error.
        source: io::Error,
    },
    /// The `ssh` program could not be started.
    #[error("cannot run {program:?}: {source}")]
    SpawnSsh {
        /// The program as configured (`[ssh_client] ssh_program`).
        program: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Wrong combination of arguments that clap cannot express (exit status 2).
    #[error("{0}")]
    Arguments(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    /// `ssh-config` needs this program's path for the ProxyCommand.
    #[error("cannot find this program's path: {0}")]
    OwnPath(io::Error),
    /// `man` could not render the page.
    #[error("cannot render the man page: {0}")]
    ManPage(io::Error),
    /// `list --json` could not encode the list.
    #[error("cannot print the list: {0}")]
    ListJson(serde_json::Error),
    /// A resumable tunnel's connection to the Host dropped and no resume succeeded
    /// within the Host's grace period.
    #[error("lost the connection to the HakuRiver proxy at {addr} and could not resume the session within its {grace_secs}s grace period ({last}); the session is gone")]
    ResumeExpired {
        /// `host:port`.
        addr: String,
        /// The Host's grace period.
        grace_secs: u64,
        /// The last attempt's failure.
        last: String,
    },
    /// The Host refused to resume the tunnel (its text).
    #[error("lost the connection to the HakuRiver proxy at {addr}; it refused to resume the session: {message}")]
    ResumeRefused {
        /// `host:port`.
        addr: String,
        /// The proxy's refusal, made safe to print.
        message: String,
    },
    /// The Host ended a resumable tunnel (the VPS side failed, or a protocol error).
    #[error("the HakuRiver proxy ended the tunnel: {0}")]
    TunnelAborted(String),
    /// A relay in `--stdio` mode ended with an error.
    #[error("tunnel to task {task} failed: {source}")]
    Relay {
        /// The task ID.
        task: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The trust-on-first-use store could not be read or written.
    #[error(transparent)]
    TrustStore(#[from] crate::trust::StoreError),
    /// The fingerprint given to `trust` does not parse.
    #[error("bad fingerprint {text:?}: {reason}")]
    BadFingerprint {
        /// As given.
        text: String,
        /// What is wrong with it.
        reason: hakuriver_tunnel::tls::FingerprintParseError,
    },
    /// `trust` has nowhere to store the fingerprint.
    #[error("no known_proxies file (is $HOME set?)")]
    NoTrustStore,
    /// `trust FINGERPRINT`: the proxy presents another certificate.
    #[error("the proxy at {target} presents certificate {got}, not {want}; nothing saved")]
    FingerprintMismatch {
        /// `host:port` as configured.
        target: String,
        /// What the proxy presents.
        got: hakuriver_tunnel::tls::Fingerprint,
        /// What the user expected.
        want: hakuriver_tunnel::tls::Fingerprint,
    },
    /// `trust`: the user said no.
    #[error("not trusted; nothing saved")]
    NotTrusted,
}

/// Exit status for command-line mistakes, as clap uses.
pub const EXIT_USAGE: u8 = 2;

impl ClientError {
    /// The exit status this failure gives: 2 for argument mistakes, else 255.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Arguments(_) => EXIT_USAGE,
            _ => EXIT_CONNECT_FAILED,
        }
    }

    /// The line printed on stderr. `Proxy Error: ...` stands alone as HakuRiver's
    /// client prints it; everything else names the program that failed.
    pub fn user_line(&self, program: &str) -> String {
        match self {
            ClientError::Proxy(_) => self.to_string(),
            _ => format!("{program}: {self}"),
        }
    }
}

/// `15 s`, `0.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{s} s")
    }
}

/// A short, lowercase reason for a failed TCP connect, with a hint for the usual cases.
pub(crate) fn connect_reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused (is hakuriver-ssh-proxy or the HakuRiver Host running, \
             and is host_ssh_proxy_port right?)"
                .to_owned()
        }
        io::ErrorKind::TimedOut => "connection timed out".to_owned(),
        _ => match rustix::io::Errno::from_io_error(err) {
            Some(rustix::io::Errno::HOSTUNREACH) => "no route to host".to_owned(),
            Some(rustix::io::Errno::NETUNREACH) => "network is unreachable".to_owned(),
            _ => lowercase_first(&err.to_string()),
        },
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_read_like_hakurivers_client() {
        let e = ClientError::Proxy("Task 42 not found.".into());
        assert_eq!(
            e.user_line("hakuriver-ssh"),
            "Proxy Error: Task 42 not found."
        );
        let e = ClientError::Unreachable {
            addr: "h:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.user_line("hakuriver-ssh"),
            "hakuriver-ssh: cannot reach the HakuRiver proxy at h:1: connection refused"
        );
    }

    #[test]
    fn durations_print_plainly() {
        assert_eq!(secs(Duration::from_secs(15)), "15 s");
        assert_eq!(secs(Duration::from_millis(500)), "0.5 s");
    }

    #[test]
    fn connect_reasons_are_one_line() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(connect_reason(&refused).starts_with("connection refused"));
        let unreach = io::Error::from(rustix::io::Errno::HOSTUNREACH);
        assert_eq!(connect_reason(&unreach), "no route to host");
        assert!(!connect_reason(&io::Error::other("Boom\nx")).starts_with('B'));
    }
}
