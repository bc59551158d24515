//! Invariants of the handshake code in `hakuriver_tunnel::protocol`, checked on
//! arbitrary bytes. Used by the `request_parser` and `response_parser` fuzz targets and
//! replayed on stable by `crates/tunnel/tests/fuzz_corpus.rs`.
//!
//! A violated invariant panics: that is how libFuzzer and the test report it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use hakuriver_tunnel::protocol::{
    parse_request, parse_response, read_line, Line, Request, RequestError, Response,
    MAX_REQUEST_LINE,
};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader, ReadBuf};

/// The `request_parser` target: `data` as one request line, then as a byte stream
/// read by `read_line` (the first three bytes choose the cap, the buffer size and the
/// chunking; the rest is the stream).
pub fn check_request(data: &[u8]) {
    check_parse_request(data);
    check_read_line(data);
}

/// `parse_request` agrees with an independent model of HakuRiver's rule, and an
/// accepted request re-encodes to a line that parses to the same ID.
pub fn check_parse_request(line: &[u8]) {
    let parsed = parse_request(line);
    assert_eq!(
        parsed,
        model_parse_request(line),
        "parser and model disagree on {:?}",
        String::from_utf8_lossy(line)
    );
    if let Ok(request) = parsed {
        let encoded = request.encode();
        assert_eq!(
            encoded,
            format!("REQUEST_TUNNEL {}\n", request.task_id).into_bytes()
        );
        assert_eq!(parse_request(&encoded), Ok(request), "round trip");
        // Without its newline, and with CRLF, the canonical line means the same.
        assert_eq!(parse_request(&encoded[..encoded.len() - 1]), Ok(request));
        let mut crlf = encoded[..encoded.len() - 1].to_vec();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&crlf), Ok(request));
        assert!(encoded.len() <= MAX_REQUEST_LINE);
    }
}

/// HakuRiver's rule written out plainly: exact prefix, then after stripping Python's
/// whitespace set a non-empty run of ASCII digits whose value fits a signed 64-bit int.
fn model_parse_request(line: &[u8]) -> Result<Request, RequestError> {
    const PREFIX: &[u8] = b"REQUEST_TUNNEL ";
    if line.len() < PREFIX.len() || &line[..PREFIX.len()] != PREFIX {
        return Err(RequestError::InvalidFormat);
    }
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let rest = &line[PREFIX.len()..];
    let start = rest
        .iter()
        .position(|&b| !is_space(b))
        .unwrap_or(rest.len());
    let end = rest
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |p| p + 1);
    let digits = &rest[start..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::InvalidTaskId);
    }
    // Compare as decimal strings so no integer parsing is shared with the real parser.
    let significant: &[u8] = {
        let first = digits.iter().position(|&b| b != b'0');
        first.map_or(b"0", |f| &digits[f..])
    };
    let max = i64::MAX.to_string().into_bytes();
    let fits = significant.len() < max.len()
        || (significant.len() == max.len() && significant <= &max[..]);
    if !fits {
        return Err(RequestError::InvalidTaskId);
    }
    let value = significant
        .iter()
        .fold(0i64, |acc, &d| acc * 10 + i64::from(d - b'0'));
    let task_id = hakuriver_tunnel::TaskId::try_from(value).expect("non-negative");
    Ok(Request { task_id })
}

/// `read_line` on `data[3..]` delivered in chunks chosen by `data[2]`, through a
/// `BufReader` of capacity chosen by `data[1]`, capped at a length chosen by `data[0]`:
/// the outcome is exactly what the stream's first newline dictates, and nothing after
/// the line is consumed.
pub fn check_read_line(data: &[u8]) {
    let [max_sel, cap_sel, seed, ref payload @ ..] = *data else {
        return;
    };
    let max = match max_sel {
        0 => MAX_REQUEST_LINE,
        n => usize::from(n % 80),
    };
    let capacity = usize::from(cap_sel % 32) + 1;
    let reader = Chunked {
        data: payload.to_vec(),
        pos: 0,
        rng: u64::from(seed) | 1,
        pended: false,
    };
    let mut reader = BufReader::with_capacity(capacity, reader);
    let polls = payload.len() * 2 + 64;
    let line = block_on(read_line(&mut reader, max), polls).expect("in-memory read cannot fail");

    let newline = payload.iter().position(|&b| b == b'\n');
    let expected = match newline {
        Some(p) if p < max => Line::Complete(payload[..p].to_vec()),
        // An empty stream is EOF before the cap is looked at (matters only for max 0).
        _ if payload.len() >= max && !payload.is_empty() => Line::TooLong,
        _ => Line::Eof(payload.to_vec()),
    };
    assert_eq!(line, expected, "max {max} capacity {capacity}");
    if let Line::Complete(found) = &line {
        let mut rest = Vec::new();
        block_on(reader.read_to_end(&mut rest), polls).expect("in-memory read cannot fail");
        assert_eq!(
            rest,
            payload[found.len() + 1..],
            "bytes after the line were lost"
        );
    }
}

/// The `response_parser` target: a parsed reply re-encodes to a line that parses to
/// itself (after at most one flattening of line breaks), unexpected replies are
/// summarised in at most 120 characters, and any message encodes to exactly one line
/// that parses back to the trimmed, flattened message.
pub fn check_response(data: &[u8]) {
    match parse_response(data) {
        Ok(response) => {
            let again = parse_response(&response.encode()).expect("encoded reply parses");
            if let Response::Error(message) = &response {
                if !message.contains(['\n', '\r']) {
                    assert_eq!(again, response, "round trip");
                }
            } else {
                assert_eq!(again, response, "round trip");
            }
            assert_eq!(
                parse_response(&again.encode()),
                Ok(again.clone()),
                "fixed point"
            );
        }
        Err(unexpected) => assert!(unexpected.0.chars().count() <= 120),
    }

    let message = String::from_utf8_lossy(data).into_owned();
    let encoded = Response::Error(message.clone()).encode();
    assert_eq!(
        encoded.iter().filter(|&&b| b == b'\n').count(),
        1,
        "an error reply is one line"
    );
    assert_eq!(encoded.last(), Some(&b'\n'));
    let flat: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    assert_eq!(
        parse_response(&encoded),
        Ok(Response::Error(flat.trim().to_owned()))
    );
}

/// An in-memory stream that hands out its bytes in pseudo-random chunk sizes and now
/// and then returns `Pending` (waking itself), like a socket under load.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    rng: u64,
    pended: bool,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // xorshift64: deterministic for a given seed byte.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let size = usize::try_from(x % 17).unwrap_or(1);
        if size == 0 && !self.pended {
            self.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pended = false;
        let n = size
            .max(1)
            .min(self.data.len() - self.pos)
            .min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// Polls `fut` to completion; the in-memory reader always makes progress, so more than
/// `max_polls` polls means the future is stuck (a bug).
fn block_on<F: Future>(fut: F, max_polls: usize) -> F::Output {
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    for _ in 0..max_polls {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("future still pending after {max_polls} polls");
}
