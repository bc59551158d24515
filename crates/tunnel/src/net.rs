//! Socket options for both legs of a tunnel.

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

#[cfg(test)]
mod tests {
    use super::*;

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
