//! Socket options for both legs of a tunnel, and [`HostPort`], the one `host:port` type
//! (IPv6 in brackets when printed, brackets stripped when parsed).

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Idle time before the first keepalive probe. SSH sessions idle for hours are normal;
/// keepalive is what notices a peer that vanished without a FIN.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// Interval between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered probes before the kernel gives the connection up.
pub const KEEPALIVE_RETRIES: u32 = 4;

/// Sets `TCP_NODELAY` (interactive SSH keystrokes must not wait for Nagle) and TCP
/// keepalive on a tunnel socket.
///
/// On a listening socket it tunes every connection the listener accepts: Linux copies
/// these options from the listener to each accepted socket, which saves five system
/// calls per connection (the proxy relies on this; a test below checks it).
pub fn tune_tcp<S: AsFd>(socket: &S) -> io::Result<()> {
    let socket = SockRef::from(socket);
    socket.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)
}

/// A TCP endpoint by name or address: `host` holds an IPv6 address without brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Name or IP address, IPv6 without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// Why a `host:port` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    /// No `:port` at the end.
    #[error("needs a port (host:port or [v6]:port)")]
    NoPort,
    /// The part after the last `:` is not a port number.
    #[error("has an invalid port")]
    BadPort,
}

impl HostPort {
    /// An endpoint from a host as users write it (`[::1]` or `::1`) and a port.
    pub fn new(host: &str, port: u16) -> Self {
        HostPort {
            host: strip_brackets(host).to_owned(),
            port,
        }
    }

    /// Parses `host:port`, `ip:port` or `[v6]:port` (brackets are stripped from `host`).
    pub fn parse(text: &str) -> Result<Self, HostPortError> {
        let (host, port) = text.rsplit_once(':').ok_or(HostPortError::NoPort)?;
        let port = port.parse().map_err(|_| HostPortError::BadPort)?;
        Ok(HostPort::new(host, port))
    }

    /// Prints `host` and `port` as [`HostPort`] does, without building one.
    pub fn display(host: &str, port: u16) -> impl fmt::Display + '_ {
        Bracketed { host, port }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Bracketed {
            host: &self.host,
            port: self.port,
        }
        .fmt(f)
    }
}

struct Bracketed<'a> {
    host: &'a str,
    port: u16,
}

impl fmt::Display for Bracketed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[::1]` → `::1`; anything else unchanged.
pub fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_brackets_ipv6_both_ways() {
        let v6 = HostPort::parse("[::1]:8002").expect("parse");
        assert_eq!(v6, HostPort::new("::1", 8002));
        assert_eq!(v6.to_string(), "[::1]:8002");
        let name = HostPort::parse("runner-3:22").expect("parse");
        assert_eq!(name.host, "runner-3");
        assert_eq!(name.to_string(), "runner-3:22");
        assert_eq!(HostPort::display("10.0.0.5", 22).to_string(), "10.0.0.5:22");
        assert_eq!(HostPort::new("[fd00::5]", 1).host, "fd00::5");
        assert_eq!(HostPort::parse("nohost"), Err(HostPortError::NoPort));
        assert_eq!(HostPort::parse("h:99999"), Err(HostPortError::BadPort));
    }

    /// The proxy does not tune accepted sockets itself: they must inherit the options.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        tune_tcp(&listener).expect("tune listener");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let sock = SockRef::from(&accepted);
        assert!(sock.nodelay().expect("nodelay"));
        assert!(sock.keepalive().expect("keepalive"));
        assert_eq!(sock.keepalive_time().expect("idle"), KEEPALIVE_TIME);
        assert_eq!(
            sock.keepalive_interval().expect("interval"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(sock.keepalive_retries().expect("count"), KEEPALIVE_RETRIES);
        // The connecting side is untouched: the options are the listener's, not global.
        assert!(!SockRef::from(&client).nodelay().expect("nodelay"));
    }
}
