//! The handshake over a stream, for both sides: the one place that reads and writes
//! request and reply lines, and hands the stream on with the bytes already read behind
//! the line (the relay must send them first).
//!
//! - The proxy wraps an accepted stream in [`Handshake`], calls
//!   [`Handshake::read_request`], answers with [`Handshake::write_response`], and on
//!   success takes the stream back with [`Handshake::into_parts`].
//! - The client calls [`request_tunnel`] with its encoded request line; it gets the
//!   reply and the stream, still buffered (the VPS's sshd banner may be in it).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::extended::{allows_long_line, parse_any_request, AnyRequest, MAX_EXTENDED_LINE};
use super::{parse_response, Line, RequestError, Response, MAX_REQUEST_LINE, MAX_RESPONSE_LINE};

/// The proxy's side of one client connection until the tunnel opens.
#[derive(Debug)]
pub struct Handshake<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Handshake<S> {
    /// Wraps an accepted (or TLS-accepted) stream. Nothing is read yet.
    pub fn new(stream: S) -> Self {
        Handshake {
            stream: BufReader::with_capacity(MAX_REQUEST_LINE, stream),
        }
    }

    /// The first byte the client sent, without consuming it (`None` at EOF). A TLS
    /// ClientHello starts with 0x16 and has no newline to wait for.
    pub async fn peek_first_byte(&mut self) -> io::Result<Option<u8>> {
        Ok(self.stream.fill_buf().await?.first().copied())
    }

    /// Reads and parses one request line of either form. The classic line is capped at
    /// [`MAX_REQUEST_LINE`] as before; only an extended one may be longer (up to
    /// [`MAX_EXTENDED_LINE`]). No timeout here: the caller bounds it.
    pub async fn read_request(&mut self) -> Result<AnyRequest, RequestError> {
        match read_request_line(&mut self.stream).await {
            Ok(Line::Complete(line)) => parse_any_request(&line),
            Ok(Line::Eof(_) | Line::TooLong) | Err(_) => Err(RequestError::Unreadable),
        }
    }

    /// Writes one reply line and flushes it.
    pub async fn write_response(&mut self, response: &Response) -> io::Result<()> {
        self.write_line(&response.encode()).await
    }

    /// Writes raw bytes (a LIST reply's JSON line) and flushes them.
    pub async fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(line).await?;
        stream.flush().await
    }

    /// The buffered stream, for what the proxy does after a refusal (half-close, drain).
    pub fn stream_mut(&mut self) -> &mut BufReader<S> {
        &mut self.stream
    }

    /// The stream and the bytes the client sent behind its request line (already read,
    /// not yet relayed). The read buffer itself is freed here.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        let pending = self.stream.buffer().to_vec();
        (self.stream.into_inner(), pending)
    }
}

/// [`super::read_line`] with the request caps: [`MAX_REQUEST_LINE`] unless the line
/// starts as an extended one. Until the first bytes tell which form it is, the larger
/// cap applies; the classic one is checked again on every step, so a classic line never
/// gets more.
async fn read_request_line<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> io::Result<Line> {
    super::read_line_capped(reader, |line| {
        if allows_long_line(line) {
            MAX_EXTENDED_LINE
        } else {
            MAX_REQUEST_LINE
        }
    })
    .await
}

/// Why a client's handshake did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// No complete reply line in time.
    #[error("no reply in time")]
    Timeout,
    /// Writing the request or reading the reply failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The proxy closed the connection before a reply line.
    #[error("connection closed without a reply")]
    Closed,
    /// The line is neither `SUCCESS` nor an error (the start of it, as received).
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
    /// More than [`MAX_RESPONSE_LINE`] bytes without a newline.
    #[error("no newline in the first {MAX_RESPONSE_LINE} bytes")]
    TooLong,
}

/// The client's side: writes `request` (an encoded request line), then reads the reply
/// within `timeout`. Returns the reply and the stream, with whatever followed the
/// reply line still in its buffer.
pub async fn request_tunnel<S>(
    stream: S,
    request: &[u8],
    timeout: Duration,
) -> Result<(Response, BufReader<S>), ReplyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    request_tunnel_buffered(stream, request, timeout, READ_BUFFER).await
}

/// What [`request_tunnel`] reads at a time.
const READ_BUFFER: usize = 8 * 1024;

/// [`request_tunnel`] reading at most `capacity` bytes at a time. With the length of
/// `SUCCESS\n` nothing behind a success reply is read, so the caller may take the stream
/// out of the buffer (the benchmark times the raw stream).
pub async fn request_tunnel_buffered<S>(
    stream: S,
    request: &[u8],
    timeout: Duration,
    capacity: usize,
) -> Result<(Response, BufReader<S>), ReplyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = BufReader::with_capacity(capacity, stream);
    stream.get_mut().write_all(request).await?;
    stream.get_mut().flush().await?;
    let line = tokio::time::timeout(timeout, super::read_line(&mut stream, MAX_RESPONSE_LINE))
        .await
        .map_err(|_| ReplyError::Timeout)??;
    let response = match line {
        Line::Complete(line) => {
            parse_response(&line).map_err(|unexpected| ReplyError::Unexpected(unexpected.0))?
        }
        // An error line cut short by the close still says what went wrong.
        Line::Eof(partial) => match parse_response(&partial) {
            Ok(Response::Error(message)) if !message.is_empty() => Response::Error(message),
            _ => return Err(ReplyError::Closed),
        },
        Line::TooLong => return Err(ReplyError::TooLong),
    };
    Ok((response, stream))
}

/// Reads one line of at most `max` bytes within `timeout` (the JSON line of a LIST
/// reply). `None` when the stream ended first or the line is too long.
pub async fn read_reply_body<R>(
    reader: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, ReplyError>
where
    R: AsyncBufReadExt + Unpin,
{
    match tokio::time::timeout(timeout, super::read_line(reader, max))
        .await
        .map_err(|_| ReplyError::Timeout)??
    {
        Line::Complete(line) => Ok(Some(line)),
        Line::Eof(_) | Line::TooLong => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::extended::{Command, ExtendedRequest, TaskRef, Token};
    use crate::protocol::Request;
    use crate::TaskId;
    use tokio::io::AsyncReadExt;

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn proxy_side_reads_either_form_and_keeps_what_follows() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client
            .write_all(b"REQUEST_TUNNEL 5\nSSH-2.0-client\r\n")
            .await
            .expect("write");
        let mut handshake = Handshake::new(server);
        assert_eq!(handshake.peek_first_byte().await.expect("peek"), Some(b'R'));
        assert_eq!(
            handshake.read_request().await,
            Ok(AnyRequest::Classic(Request {
                task_id: TaskId::try_from(5).expect("id")
            }))
        );
        handshake
            .write_response(&Response::Success)
            .await
            .expect("reply");
        let (_, pending) = handshake.into_parts();
        assert_eq!(pending, b"SSH-2.0-client\r\n");
        let mut reply = [0u8; 8];
        client.read_exact(&mut reply).await.expect("read");
        assert_eq!(&reply, b"SUCCESS\n");

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let long = ExtendedRequest {
            command: Command::Tunnel(TaskRef::Name("n a".repeat(85))),
            token: Token::new(&"a/".repeat(250)),
            resume: None,
        };
        let line = long.encode();
        assert!(line.len() > MAX_REQUEST_LINE);
        client.write_all(&line).await.expect("write");
        let mut handshake = Handshake::new(server);
        assert_eq!(
            handshake.read_request().await,
            Ok(AnyRequest::Extended(long))
        );
    }

    #[tokio::test]
    async fn classic_lines_keep_their_cap() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut line = b"REQUEST_TUNNEL ".to_vec();
        line.extend(std::iter::repeat(b' ').take(MAX_REQUEST_LINE));
        client.write_all(&line).await.expect("write");
        let mut handshake = Handshake::new(server);
        let read = tokio::time::timeout(WAIT, handshake.read_request()).await;
        assert_eq!(read.expect("no wait"), Err(RequestError::Unreadable));

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut line = b"HAKURIVER_SSH/1 LIST token=".to_vec();
        line.extend(std::iter::repeat(b'x').take(MAX_EXTENDED_LINE));
        client.write_all(&line).await.expect("write");
        let mut handshake = Handshake::new(server);
        let read = tokio::time::timeout(WAIT, handshake.read_request()).await;
        assert_eq!(read.expect("no wait"), Err(RequestError::Unreadable));
    }

    #[tokio::test]
    async fn client_side_returns_reply_and_buffered_bytes() {
        let (client, mut proxy) = tokio::io::duplex(64 * 1024);
        proxy
            .write_all(b"SUCCESS\nSSH-2.0-OpenSSH_9.2\r\n")
            .await
            .expect("write");
        let (response, mut stream) = request_tunnel(client, b"REQUEST_TUNNEL 1\n", WAIT)
            .await
            .expect("reply");
        assert_eq!(response, Response::Success);
        let mut banner = [0u8; 21];
        stream.read_exact(&mut banner).await.expect("banner");
        assert_eq!(&banner, b"SSH-2.0-OpenSSH_9.2\r\n");
        let mut sent = [0u8; 17];
        proxy.read_exact(&mut sent).await.expect("request");
        assert_eq!(&sent, b"REQUEST_TUNNEL 1\n");

        let (client, mut proxy) = tokio::io::duplex(1024);
        proxy.write_all(b"ERROR Task 1 not").await.expect("write");
        proxy.shutdown().await.expect("close");
        let (response, _) = request_tunnel(client, b"REQUEST_TUNNEL 1\n", WAIT)
            .await
            .expect("partial error line");
        assert_eq!(response, Response::Error("Task 1 not".into()));

        let (client, mut proxy) = tokio::io::duplex(1024);
        proxy.shutdown().await.expect("close");
        assert!(matches!(
            request_tunnel(client, b"", WAIT).await,
            Err(ReplyError::Closed)
        ));
    }
}
