//! Frames of a resumable tunnel's connection to the host: every frame is a type byte, a
//! big-endian `u32` length and that many payload bytes.
//!
//! | type | name  | payload                                                          |
//! |------|-------|------------------------------------------------------------------|
//! | 1    | DATA  | bytes of the stream                                              |
//! | 2    | ACK   | `u64` bytes received and passed on, `u8` flags (1: EOF passed on)|
//! | 3    | FIN   | `u64` the stream's total length (the sender's EOF)               |
//! | 4    | PING  | nothing (keeps NAT mappings and the liveness check busy)         |
//! | 5    | ABORT | UTF-8 reason (at most [`MAX_ABORT`] bytes): the tunnel is over   |

/// Bytes before every payload.
pub const HEADER: usize = 5;
/// Largest DATA payload a sender puts in one frame.
pub const MAX_DATA: usize = 64 * 1024;
/// Largest DATA payload a receiver accepts (payloads are streamed, never held whole).
pub const MAX_ACCEPTED_DATA: u32 = 1 << 20;
/// Longest ABORT reason.
pub const MAX_ABORT: usize = 1024;

const DATA: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 3;
const PING: u8 = 4;
const ABORT: u8 = 5;

/// A frame other than DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The peer passed this many bytes on; `eof`: and the end of the stream.
    Ack {
        /// Bytes passed on.
        delivered: u64,
        /// EOF passed on too.
        eof: bool,
    },
    /// The peer's stream ends at `total` bytes.
    Fin {
        /// The stream's length.
        total: u64,
    },
    /// Nothing but a sign of life.
    Ping,
    /// The tunnel is over, for this reason.
    Abort(String),
}

/// What the start of a buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole header (or control frame) yet.
    Incomplete,
    /// A DATA header (already [`HEADER`] bytes long); `len` payload bytes follow.
    Data {
        /// Payload length.
        len: u32,
    },
    /// A whole control frame of `used` bytes.
    Control {
        /// The frame.
        frame: Control,
        /// Its length, header included.
        used: usize,
    },
}

/// A frame that breaks the rules: unknown type, bad length, bad payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct FrameError(pub &'static str);

/// Parses the frame at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, FrameError> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(Parsed::Incomplete);
    };
    let kind = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if kind == DATA {
        if len == 0 || len > MAX_ACCEPTED_DATA {
            return Err(FrameError("DATA length"));
        }
        return Ok(Parsed::Data { len });
    }
    let expected = match kind {
        ACK => 9,
        FIN => 8,
        PING => 0,
        ABORT if (len as usize) <= MAX_ABORT => len as usize,
        ABORT => return Err(FrameError("ABORT length")),
        _ => return Err(FrameError("unknown type")),
    };
    if len as usize != expected {
        return Err(FrameError("control length"));
    }
    let Some(payload) = buf.get(HEADER..HEADER + expected) else {
        return Ok(Parsed::Incomplete);
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let frame = match kind {
        ACK => {
            let flags = payload[8];
            if flags > 1 {
                return Err(FrameError("ACK flags"));
            }
            Control::Ack {
                delivered: u64_at(0),
                eof: flags == 1,
            }
        }
        FIN => Control::Fin { total: u64_at(0) },
        PING => Control::Ping,
        _ => Control::Abort(
            std::str::from_utf8(payload)
                .map_err(|_| FrameError("ABORT reason"))?
                .to_owned(),
        ),
    };
    Ok(Parsed::Control {
        frame,
        used: HEADER + expected,
    })
}

/// Appends a DATA header for `len` payload bytes.
pub fn push_data_header(out: &mut Vec<u8>, len: usize) {
    out.push(DATA);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a control frame.
pub fn push_control(out: &mut Vec<u8>, frame: &Control) {
    match frame {
        Control::Ack { delivered, eof } => {
            out.push(ACK);
            out.extend_from_slice(&9u32.to_be_bytes());
            out.extend_from_slice(&delivered.to_be_bytes());
            out.push(u8::from(*eof));
        }
        Control::Fin { total } => {
            out.push(FIN);
            out.extend_from_slice(&8u32.to_be_bytes());
            out.extend_from_slice(&total.to_be_bytes());
        }
        Control::Ping => {
            out.push(PING);
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        Control::Abort(reason) => {
            let mut end = reason.len().min(MAX_ABORT);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            out.push(ABORT);
            out.extend_from_slice(&(end as u32).to_be_bytes());
            out.extend_from_slice(&reason.as_bytes()[..end]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_round_trip_and_partial_input_waits() {
        let frames = [
            Control::Ack {
                delivered: 1 << 40,
                eof: true,
            },
            Control::Ack {
                delivered: 0,
                eof: false,
            },
            Control::Fin { total: 12345 },
            Control::Ping,
            Control::Abort("runner reset the connection".into()),
        ];
        for frame in frames {
            let mut buf = Vec::new();
            push_control(&mut buf, &frame);
            for cut in 0..buf.len() {
                assert_eq!(
                    parse(&buf[..cut]),
                    Ok(Parsed::Incomplete),
                    "{frame:?} at {cut}"
                );
            }
            assert_eq!(
                parse(&buf),
                Ok(Parsed::Control {
                    frame,
                    used: buf.len()
                })
            );
        }
        let mut buf = Vec::new();
        push_data_header(&mut buf, 300);
        assert_eq!(parse(&buf), Ok(Parsed::Data { len: 300 }));
    }

    #[test]
    fn broken_frames_are_errors() {
        for bad in [
            &[1u8, 0, 0, 0, 0][..],
            &[1, 0, 0x10, 0, 1],
            &[9, 0, 0, 0, 0],
            &[2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0],
            &[2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            &[5, 0, 0, 0x10, 0],
            &[5, 0, 0, 0, 1, 0xff],
            &[4, 0, 0, 0, 1, 0],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
