//! PROXY protocol v1 and v2, inbound (HAProxy's `send-proxy` / `send-proxy-v2`): a
//! load balancer in front of the proxy prefixes each connection with the real client's
//! address. Only peers in `[ssh_proxy] trusted_proxies` may (and must) send it; the
//! address it carries is then the client for limits, the allowlist, logs and metrics.
//!
//! The header is read byte-exactly, so what follows it (a request line or a TLS
//! ClientHello) stays in the socket and a plain tunnel keeps splice. Parsing is the
//! `ppp` crate's; [`decode`] frames it and is what the `proxy_header` fuzz target runs.

use std::net::SocketAddr;

use ppp::v1;
use ppp::v2;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature, the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// Largest v2 header we accept: addresses plus the TLVs a balancer adds (HAProxy's are
/// a few hundred bytes at most).
pub const MAX_V2_HEADER: usize = 4096;
/// The v1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Shortest v1 header: `PROXY UNKNOWN\r\n`.
const MIN_V1_HEADER: usize = 15;
/// Longest v1 header, `\r\n` included (the spec's 107 bytes).
pub const MAX_V1_HEADER: usize = 107;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A header, complete: its length and the client address it carries (`None` for a
    /// `LOCAL` v2 header, a v1 `UNKNOWN` or an address family without IP ports: the
    /// connection is the balancer's own, e.g. a health check).
    Complete {
        /// Bytes the header takes from the start of the input.
        len: usize,
        /// The real client.
        source: Option<SocketAddr>,
    },
    /// Not enough bytes yet: at least this many more are needed.
    Incomplete(usize),
    /// Not a PROXY header, or a broken one.
    Invalid(&'static str),
}

/// Decodes a PROXY header at the start of `input`. Never looks past the header's end,
/// and every proper prefix of a complete header is [`Decoded::Incomplete`] with a hint
/// that does not overshoot it, so reading exactly the hinted bytes ends on the header's
/// last byte.
pub fn decode(input: &[u8]) -> Decoded {
    if input.is_empty() {
        // Either version: no header is shorter than MIN_V1_HEADER, v2 ones are longer.
        return Decoded::Incomplete(MIN_V1_HEADER);
    }
    let probe = input.len().min(V2_SIGNATURE.len());
    if input[..probe] == V2_SIGNATURE[..probe] {
        return decode_v2(input);
    }
    let probe = input.len().min(V1_PREFIX.len());
    if input[..probe] == V1_PREFIX[..probe] {
        return decode_v1(input);
    }
    Decoded::Invalid("not a PROXY protocol header")
}

fn decode_v2(input: &[u8]) -> Decoded {
    if input.len() < V2_FIXED {
        return Decoded::Incomplete(V2_FIXED - input.len());
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([input[14], input[15]]));
    if len > MAX_V2_HEADER {
        return Decoded::Invalid("PROXY v2 header too long");
    }
    if input.len() < len {
        return Decoded::Incomplete(len - input.len());
    }
    match v2::Header::try_from(&input[..len]) {
        Ok(header) => {
            let source = match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, _) => None,
            };
            Decoded::Complete { len, source }
        }
        Err(_) => Decoded::Invalid("malformed PROXY v2 header"),
    }
}

fn decode_v1(input: &[u8]) -> Decoded {
    let window = &input[..input.len().min(MAX_V1_HEADER)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= MAX_V1_HEADER {
            return Decoded::Invalid("PROXY v1 header too long");
        }
        return Decoded::Incomplete(MIN_V1_HEADER.saturating_sub(window.len()).max(1));
    };
    let len = cr + 2;
    match v1::Header::try_from(&input[..len]) {
        Ok(header) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Decoded::Complete { len, source }
        }
        Err(_) => Decoded::Invalid("malformed PROXY v1 header"),
    }
}

/// Why no header could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The bytes are not a valid PROXY header.
    #[error("{0}")]
    Invalid(&'static str),
    /// The stream ended inside the header.
    #[error("connection closed inside the PROXY header")]
    Truncated,
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads exactly one PROXY header from `stream` (the caller bounds it with the request
/// timeout) and returns the client address it carries.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let need = match decode(&buf) {
            Decoded::Complete { source, .. } => return Ok(source),
            Decoded::Invalid(why) => return Err(HeaderError::Invalid(why)),
            Decoded::Incomplete(need) => need,
        };
        let start = buf.len();
        buf.resize(start + need, 0);
        match stream.read_exact(&mut buf[start..]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(HeaderError::Truncated)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let text = b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 8002\r\nREQUEST_TUNNEL 5\n";
        assert_eq!(
            decode(text),
            Decoded::Complete {
                len: 42,
                source: Some("192.0.2.7:50000".parse().unwrap())
            }
        );
        let text = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8002\r\n";
        assert!(
            matches!(decode(text), Decoded::Complete { source: Some(a), .. } if a.port() == 4000)
        );
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\n"),
            Decoded::Complete {
                len: 15,
                source: None
            }
        );
        assert_eq!(decode(b"PROXY TCP4 1.2"), Decoded::Incomplete(1));
        assert_eq!(decode(b"PRO"), Decoded::Incomplete(12));
        assert_eq!(decode(b""), Decoded::Incomplete(15));
        assert!(matches!(
            decode(b"PROXY TCP4 x y 1 2\r\n"),
            Decoded::Invalid(_)
        ));
        assert!(matches!(decode(&[b'P'; 200]), Decoded::Invalid(_)));
        assert!(matches!(decode(b"REQUEST_TUNNEL 5\n"), Decoded::Invalid(_)));
    }

    #[test]
    fn v2_proxy_and_local() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 10, 0, 0, 1, 0xC3, 0x50, 0x1F, 0x42,
        ]);
        assert_eq!(decode(&header[..10]), Decoded::Incomplete(6));
        assert_eq!(decode(&header[..16]), Decoded::Incomplete(12));
        assert_eq!(
            decode(&header),
            Decoded::Complete {
                len: 28,
                source: Some("192.0.2.9:50000".parse().unwrap())
            }
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            decode(&local),
            Decoded::Complete {
                len: 16,
                source: None
            }
        );
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend([0x31, 0x11, 0, 0]);
        assert!(matches!(decode(&bad_version), Decoded::Invalid(_)));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(decode(&huge), Decoded::Invalid(_)));
    }
}
