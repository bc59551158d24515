//! Socket options for both legs of a tunnel.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first keepalive probe. SSH sessions idle for hours are normal;
/// keepalive is what notices a peer that vanished without a FIN.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// Interval between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered probes before the kernel gives the connection up.
pub const KEEPALIVE_RETRIES: u32 = 4;

/// Sets `TCP_NODELAY` (interactive SSH keystrokes must not wait for Nagle) and TCP
/// keepalive on a tunnel socket.
pub fn tune_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
