//! The tunnel handshake, byte-compatible with HakuRiver 0.3.0.
//!
//! ```text
//! client → host:  REQUEST_TUNNEL <task_id>\n
//! host → client:  SUCCESS\n            (then raw bytes both ways)
//!              |  ERROR <message>\n    (then the host closes)
//! ```
//!
//! This module is pure (no sockets) except [`read_line`], which both sides use to
//! read exactly one capped line from a buffered stream without consuming the bytes that
//! follow it: those belong to the relay.
//!
//! - [`extended`]: hakuriver-ssh's own request line (`HAKURIVER_SSH/1 ...`): an API
//!   token, task names, the list of the user's VPS tasks.
//! - [`handshake`]: the handshake over a stream for both sides ([`Handshake`] for the
//!   proxy, [`request_tunnel`] for the client).

pub mod extended;
pub mod handshake;

pub use extended::{AnyRequest, Command, ExtendedRequest, ListReply, TaskListing, TaskRef, Token};
pub use handshake::{request_tunnel, Handshake, ReplyError};

use std::fmt;
use std::io;
use std::str::FromStr;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The literal prefix of a request line (with its single space).
pub const REQUEST_PREFIX: &[u8] = b"REQUEST_TUNNEL ";
/// The success reply, sent only once the runner connection is up.
pub const SUCCESS_LINE: &[u8] = b"SUCCESS\n";
/// Prefix of an error reply as the protocol intends it.
pub const ERROR_PREFIX: &str = "ERROR ";
/// Prefix HakuRiver 0.3.0's Python host actually sends (it formats a bytes object into a str).
pub const PYTHON_ERROR_PREFIX: &str = "b'ERROR '";
/// Longest request line accepted, newline included. A valid request is at most
/// 15 + 19 digits + CRLF; the slack covers the whitespace HakuRiver tolerates.
pub const MAX_REQUEST_LINE: usize = 1024;
/// Longest reply line a client accepts, newline included.
pub const MAX_RESPONSE_LINE: usize = 4096;

/// A HakuRiver task ID: ASCII digits that fit the signed 64-bit INTEGER column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(i64);

impl TaskId {
    /// The numeric value, as stored in `task.task_id`.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl From<TaskId> for i64 {
    fn from(id: TaskId) -> i64 {
        id.0
    }
}

impl TryFrom<i64> for TaskId {
    type Error = RequestError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if value < 0 {
            Err(RequestError::InvalidTaskId)
        } else {
            Ok(TaskId(value))
        }
    }
}

impl FromStr for TaskId {
    type Err = RequestError;

    /// Digits only (HakuRiver's `\d+`, ASCII), no sign, no whitespace, fits `i64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_task_id(s.as_bytes())
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn parse_task_id(digits: &[u8]) -> Result<TaskId, RequestError> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::InvalidTaskId);
    }
    // All ASCII digits, so this is valid UTF-8; i64 parsing rejects overflow.
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map(TaskId)
        .ok_or(RequestError::InvalidTaskId)
}

/// A parsed `REQUEST_TUNNEL` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The task the client wants a tunnel to.
    pub task_id: TaskId,
}

impl Request {
    /// The request line as sent on the wire, newline included.
    pub fn encode(&self) -> Vec<u8> {
        format!("REQUEST_TUNNEL {}\n", self.task_id).into_bytes()
    }
}

/// Why a request line was refused. `Display` is exactly HakuRiver's wire text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The line does not start with `REQUEST_TUNNEL ` (case-sensitive, one space).
    #[error("Invalid request format.")]
    InvalidFormat,
    /// The ID is empty, not all ASCII digits, or does not fit a signed 64-bit integer.
    #[error("Invalid task ID format.")]
    InvalidTaskId,
    /// The stream ended before a newline, the line was too long, or reading failed.
    #[error("Error processing request.")]
    Unreadable,
    /// No complete line arrived within the request timeout.
    #[error("Timeout waiting for request.")]
    Timeout,
}

/// Python's `bytes.strip()` set: space, `\t`, `\n`, `\r`, `\x0b`, `\x0c`.
fn is_python_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn strip_python_space(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_python_space(first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_python_space(last) {
            break;
        }
        s = rest;
    }
    s
}

/// Parses one request line (with or without its trailing `\n`), tolerating exactly what
/// HakuRiver's host tolerates: whitespace around the ID and a CRLF line ending.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let rest = line
        .strip_prefix(REQUEST_PREFIX)
        .ok_or(RequestError::InvalidFormat)?;
    let task_id = parse_task_id(strip_python_space(rest))?;
    Ok(Request { task_id })
}

/// The host's reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The runner connection is up; raw bytes follow.
    Success,
    /// The host refused; the message is HakuRiver's text (e.g. `Task 42 not found.`).
    Error(String),
    /// `SUCCESS RESUMABLE ...`: the tunnel is open and resumable; frames follow.
    Resumable(crate::resume::Grant),
    /// `RESUMED ...`: a resumed tunnel continues; frames follow.
    Resumed(crate::resume::Resumed),
}

impl Response {
    /// The reply line as sent on the wire. Line breaks inside a message are flattened so
    /// the reply always stays one line.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Success => SUCCESS_LINE.to_vec(),
            Response::Error(message) => {
                let flat: String = message
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                format!("{ERROR_PREFIX}{flat}\n").into_bytes()
            }
            Response::Resumable(grant) => grant.encode(),
            Response::Resumed(resumed) => resumed.encode(),
        }
    }
}

/// A reply line that is neither `SUCCESS` nor an error: not a HakuRiver host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unexpected response from server: {0:?}")]
pub struct UnexpectedResponse(pub String);

/// Parses a reply line (with or without `\n`/`\r\n`). Accepts both the intended
/// `ERROR <msg>` form and the `b'ERROR '<msg>` form HakuRiver 0.3.0's host sends.
pub fn parse_response(line: &[u8]) -> Result<Response, UnexpectedResponse> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\n', '\r']);
    if text == "SUCCESS" {
        return Ok(Response::Success);
    }
    let unexpected = || UnexpectedResponse(text.chars().take(120).collect());
    if let Some(rest) = text.strip_prefix("SUCCESS RESUMABLE ") {
        return crate::resume::Grant::parse_fields(rest)
            .map(Response::Resumable)
            .map_err(|_| unexpected());
    }
    if let Some(rest) = text.strip_prefix("RESUMED ") {
        return crate::resume::Resumed::parse_fields(rest)
            .map(Response::Resumed)
            .map_err(|_| unexpected());
    }
    for prefix in [PYTHON_ERROR_PREFIX, ERROR_PREFIX] {
        if let Some(message) = text.strip_prefix(prefix) {
            return Ok(Response::Error(message.trim().to_owned()));
        }
    }
    if text == "ERROR" {
        return Ok(Response::Error(String::new()));
    }
    Err(unexpected())
}

/// Outcome of reading one line with [`read_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n`.
    Complete(Vec<u8>),
    /// The stream ended first; whatever arrived is kept for diagnostics.
    Eof(Vec<u8>),
    /// More than `max` bytes arrived without a newline.
    TooLong,
}

/// Reads up to and including the next `\n`, at most `max` bytes in total, and consumes
/// nothing beyond it: bytes pipelined behind the line stay buffered in `reader` for the
/// relay. No timeout here; callers wrap it in theirs.
pub async fn read_line<R>(reader: &mut R, max: usize) -> io::Result<Line>
where
    R: AsyncBufRead + Unpin,
{
    read_line_capped(reader, |_| max).await
}

/// [`read_line`] with a cap that may depend on the bytes read so far (the request line
/// is capped by its first word: [`handshake`]). A line longer than the cap for its
/// final bytes is [`Line::TooLong`].
pub async fn read_line_capped<R>(reader: &mut R, cap: impl Fn(&[u8]) -> usize) -> io::Result<Line>
where
    R: AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof(line));
        }
        let room = cap(&line).saturating_sub(line.len());
        let window = &available[..available.len().min(room)];
        if let Some(pos) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&window[..pos]);
            reader.consume(pos + 1);
            if line.len() + 1 > cap(&line) {
                return Ok(Line::TooLong);
            }
            return Ok(Line::Complete(line));
        }
        if window.len() == room {
            return Ok(Line::TooLong);
        }
        let taken = window.len();
        line.extend_from_slice(window);
        reader.consume(taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> Request {
        Request { task_id: TaskId(n) }
    }

    #[test]
    fn parses_hakuriver_table_rows() {
        let cases: &[(&[u8], Result<Request, RequestError>)] = &[
            (b"REQUEST_TUNNEL 424242\n", Ok(id(424242))),
            (
                b"REQUEST_TUNNEL 7323718749301768192\n",
                Ok(id(7323718749301768192)),
            ),
            (b"REQUEST_TUNNEL  1 \n", Ok(id(1))),
            (b"REQUEST_TUNNEL 1\r\n", Ok(id(1))),
            (b"REQUEST_TUNNEL \t1\x0b\x0c\r\n", Ok(id(1))),
            (b"REQUEST_TUNNEL 1", Ok(id(1))),
            (b"REQUEST_TUNNEL 007\n", Ok(id(7))),
            (b"REQUEST_TUNNEL 9223372036854775807\n", Ok(id(i64::MAX))),
            (b"REQUEST_TUNNEL abc\n", Err(RequestError::InvalidTaskId)),
            (b"REQUEST_TUNNEL -1\n", Err(RequestError::InvalidTaskId)),
            (b"REQUEST_TUNNEL +1\n", Err(RequestError::InvalidTaskId)),
            (b"REQUEST_TUNNEL \n", Err(RequestError::InvalidTaskId)),
            (b"REQUEST_TUNNEL 1 2\n", Err(RequestError::InvalidTaskId)),
            (b"REQUEST_TUNNEL 1\x002\n", Err(RequestError::InvalidTaskId)),
            (
                b"REQUEST_TUNNEL \xd9\xa1\n",
                Err(RequestError::InvalidTaskId),
            ),
            (
                b"REQUEST_TUNNEL 9223372036854775808\n",
                Err(RequestError::InvalidTaskId),
            ),
            (
                b"REQUEST_TUNNEL 99999999999999999999999\n",
                Err(RequestError::InvalidTaskId),
            ),
            (b"request_tunnel 1\n", Err(RequestError::InvalidFormat)),
            (b"REQUEST_TUNNEL1\n", Err(RequestError::InvalidFormat)),
            (b"REQUEST_TUNNEL\n", Err(RequestError::InvalidFormat)),
            (b" REQUEST_TUNNEL 1\n", Err(RequestError::InvalidFormat)),
            (b"\n", Err(RequestError::InvalidFormat)),
            (b"GET / HTTP/1.1\r\n", Err(RequestError::InvalidFormat)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Err(RequestError::InvalidFormat)),
        ];
        for (line, want) in cases {
            assert_eq!(
                &parse_request(line),
                want,
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn error_texts_are_hakurivers() {
        assert_eq!(
            RequestError::InvalidFormat.to_string(),
            "Invalid request format."
        );
        assert_eq!(
            RequestError::InvalidTaskId.to_string(),
            "Invalid task ID format."
        );
        assert_eq!(
            RequestError::Unreadable.to_string(),
            "Error processing request."
        );
        assert_eq!(
            RequestError::Timeout.to_string(),
            "Timeout waiting for request."
        );
    }

    #[test]
    fn encodes_request_and_responses() {
        assert_eq!(id(42).encode(), b"REQUEST_TUNNEL 42\n");
        assert_eq!(Response::Success.encode(), b"SUCCESS\n");
        assert_eq!(
            Response::Error("Task 42 not found.".into()).encode(),
            b"ERROR Task 42 not found.\n"
        );
        assert_eq!(Response::Error("a\nb\r".into()).encode(), b"ERROR a b \n");
    }

    #[test]
    fn request_round_trips() {
        for n in [0, 1, 42, i64::MAX] {
            assert_eq!(parse_request(&id(n).encode()), Ok(id(n)));
        }
    }

    #[test]
    fn parses_both_error_forms() {
        let ok = |line: &[u8]| parse_response(line).map_err(|e| e.to_string());
        assert_eq!(ok(b"SUCCESS\n"), Ok(Response::Success));
        assert_eq!(ok(b"SUCCESS\r\n"), Ok(Response::Success));
        assert_eq!(
            ok(b"ERROR Task 1 not found.\n"),
            Ok(Response::Error("Task 1 not found.".into()))
        );
        assert_eq!(
            ok(b"b'ERROR 'Task 1 not found.\n"),
            Ok(Response::Error("Task 1 not found.".into()))
        );
        assert!(ok(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
        assert!(ok(b"").is_err());
    }

    #[test]
    fn task_id_from_str() {
        assert_eq!("12".parse::<TaskId>(), Ok(TaskId(12)));
        assert_eq!(" 12".parse::<TaskId>(), Err(RequestError::InvalidTaskId));
        assert_eq!("".parse::<TaskId>(), Err(RequestError::InvalidTaskId));
        assert_eq!(TaskId::try_from(-3), Err(RequestError::InvalidTaskId));
    }

    #[tokio::test]
    async fn read_line_keeps_pipelined_bytes() {
        use tokio::io::{AsyncReadExt, BufReader};
        let data: &[u8] = b"REQUEST_TUNNEL 5\nSSH-2.0-client\r\nmore";
        let mut reader = BufReader::with_capacity(4, data);
        assert_eq!(
            read_line(&mut reader, MAX_REQUEST_LINE).await.ok(),
            Some(Line::Complete(b"REQUEST_TUNNEL 5".to_vec()))
        );
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.ok();
        assert_eq!(rest, b"SSH-2.0-client\r\nmore");
    }

    #[tokio::test]
    async fn read_line_caps_and_reports_eof() {
        use tokio::io::BufReader;
        let long = [b'x'; 100];
        let mut reader = BufReader::with_capacity(7, &long[..]);
        assert_eq!(read_line(&mut reader, 50).await.ok(), Some(Line::TooLong));
        // A newline exactly at the cap still fits; one byte later does not.
        let mut exact = vec![b'y'; 49];
        exact.push(b'\n');
        let mut reader = BufReader::new(&exact[..]);
        assert_eq!(
            read_line(&mut reader, 50).await.ok(),
            Some(Line::Complete(vec![b'y'; 49]))
        );
        let mut over = vec![b'y'; 50];
        over.push(b'\n');
        let mut reader = BufReader::new(&over[..]);
        assert_eq!(read_line(&mut reader, 50).await.ok(), Some(Line::TooLong));
        let mut reader = BufReader::new(&b"REQUEST_TUN"[..]);
        assert_eq!(
            read_line(&mut reader, 50).await.ok(),
            Some(Line::Eof(b"REQUEST_TUN".to_vec()))
        );
    }
}
