//! Small network and data helpers.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use socket2::{Domain, Socket, Type};

/// Default deadline for one network exchange in tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to `addr` with [`IO_TIMEOUT`] for the connect and every read/write.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Reads one line (up to and including `\n`, or to EOF) byte by byte, so nothing after
/// it is consumed.
pub fn read_line(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match stream.read(&mut byte).context("reading reply line")? {
            0 => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(line)
}

/// Sends `line` verbatim (include the `\n`) and returns the reply line with its `\n`,
/// e.g. `request_tunnel(addr, "REQUEST_TUNNEL 5\n")` → `"ERROR Task 5 not found.\n"`.
pub fn request_tunnel(addr: SocketAddr, line: &str) -> Result<String> {
    let mut stream = connect(addr)?;
    stream.write_all(line.as_bytes())?;
    Ok(String::from_utf8_lossy(&read_line(&mut stream)?).into_owned())
}

/// Sends `request` (then half-closes if `shutdown_write`) and returns every byte the
/// server sends until it closes: proves an error reply is followed by EOF.
pub fn exchange_until_eof(
    addr: SocketAddr,
    request: &[u8],
    shutdown_write: bool,
) -> Result<Vec<u8>> {
    let mut stream = connect(addr)?;
    stream.write_all(request)?;
    if shutdown_write {
        stream.shutdown(Shutdown::Write)?;
    }
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .context("reading until EOF")?;
    Ok(reply)
}

/// A loopback port that refuses connections: a socket bound to `127.0.0.1:0` that never
/// listens, kept for the value's lifetime so no one else can take the port.
pub struct RefusedPort {
    _socket: Socket,
    port: u16,
}

impl RefusedPort {
    /// Binds it.
    pub fn new() -> Result<RefusedPort> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let port = socket
            .local_addr()?
            .as_socket()
            .context("bound address is not IP")?
            .port();
        Ok(RefusedPort {
            _socket: socket,
            port,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Lowercase hex SHA-256 of `data` (same format as `sha256sum`).
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` pseudo-random bytes, the same for the same `seed` (splitmix64).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Awaits `fut`, panicking with `what` if it takes longer than `timeout`.
pub async fn with_timeout<F: Future>(timeout: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(timeout, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// `GET path` over plain HTTP/1.1 at `addr` (an admin listener): (status code, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_is_deterministic_and_seeded() {
        assert_eq!(random_bytes(1000, 1), random_bytes(1000, 1));
        assert_ne!(random_bytes(1000, 1), random_bytes(1000, 2));
        assert_eq!(random_bytes(13, 1).len(), 13);
    }

    #[test]
    fn sha256_hex_matches_sha256sum() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
