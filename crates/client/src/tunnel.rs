//! Opening one tunnel: TCP connect (with a deadline), the transport's own setup (TLS
//! slots in here), `REQUEST_TUNNEL <id>\n`, and the reply line.
//!
//! The returned stream is the same `BufReader` the reply was read through: bytes the
//! proxy sent right behind `SUCCESS\n` (the VPS sshd's banner, typically) are still in
//! its buffer and reach ssh first.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hakuriver_tunnel::net::tune_tcp;
use hakuriver_tunnel::protocol::{parse_response, read_line, Line, Request, MAX_RESPONSE_LINE};
use hakuriver_tunnel::{Response, TaskId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::error::{connect_reason, secs, ClientError};
use crate::transport::Transport;

/// A byte stream to the proxy, plain or TLS.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// An open tunnel: reply consumed, anything after it still buffered.
pub type Tunnel = BufReader<Box<dyn TunnelIo>>;

/// Where the Host proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name or IP address, IPv6 without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Opens tunnels to one proxy; cheap to share between the first and later connections.
#[derive(Debug)]
pub struct Connector {
    /// The proxy.
    pub target: Target,
    /// Plain TCP or TLS.
    pub transport: Transport,
    /// Deadline for resolving, connecting and the transport's handshake.
    pub connect_timeout: Duration,
    /// Deadline for the reply line once the request is sent.
    pub response_timeout: Duration,
}

impl Connector {
    /// Connects, requests a tunnel to `task` and returns the stream on `SUCCESS`.
    pub async fn open(&self, task: TaskId) -> Result<Tunnel, ClientError> {
        let addr = self.target.to_string();
        let deadline = Instant::now() + self.connect_timeout;
        let tcp = connect_tcp(&self.target, deadline, self.connect_timeout).await?;
        // Verification (TLS) finishes inside `establish`, before the request is written.
        let stream = self
            .transport
            .establish(tcp, &self.target, deadline)
            .await?;
        let mut stream = BufReader::new(stream);
        let io_err = |source| ClientError::Io {
            addr: addr.clone(),
            source,
        };
        let request = Request { task_id: task }.encode();
        stream.get_mut().write_all(&request).await.map_err(io_err)?;
        stream.get_mut().flush().await.map_err(io_err)?;
        tracing::debug!(%task, proxy = %addr, "request sent");
        let reply = timeout_at(
            Instant::now() + self.response_timeout,
            read_line(&mut stream, MAX_RESPONSE_LINE),
        )
        .await
        .map_err(|_| ClientError::ResponseTimeout {
            addr: addr.clone(),
            after: self.response_timeout,
        })?
        .map_err(io_err)?;
        match reply {
            Line::Complete(line) => match parse_response(&line) {
                Ok(Response::Success) => {
                    tracing::info!(%task, proxy = %addr, "tunnel open");
                    Ok(stream)
                }
                Ok(Response::Error(message)) => Err(ClientError::Proxy(message)),
                Err(unexpected) => Err(ClientError::UnexpectedReply {
                    addr,
                    line: unexpected.0,
                }),
            },
            // An error line cut short by the close still says what went wrong.
            Line::Eof(partial) => match parse_response(&partial) {
                Ok(Response::Error(message)) if !message.is_empty() => {
                    Err(ClientError::Proxy(message))
                }
                _ => Err(ClientError::NoReply { addr }),
            },
            Line::TooLong => Err(ClientError::UnexpectedReply {
                addr,
                line: format!("(no newline in the first {MAX_RESPONSE_LINE} bytes)"),
            }),
        }
    }
}

/// Resolves `target` and connects to its addresses in turn until one answers or the
/// deadline passes.
pub(crate) async fn connect_tcp(
    target: &Target,
    deadline: Instant,
    budget: Duration,
) -> Result<TcpStream, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        addr: target.to_string(),
        reason,
    };
    let timed_out = || unreachable(format!("no connection within {}", secs(budget)));
    let addrs: Vec<SocketAddr> = match timeout_at(
        deadline,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => {
            return Err(unreachable(format!(
                "cannot resolve {:?}: {}",
                target.host,
                resolve_reason(&e)
            )))
        }
        Ok(Ok(addrs)) => addrs.collect(),
    };
    let mut last_error = None;
    for addr in addrs {
        tracing::debug!(%addr, "connecting");
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(stream)) => {
                if let Err(e) = tune_tcp(&stream) {
                    tracing::debug!(error = %e, "cannot set socket options");
                }
                return Ok(stream);
            }
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                last_error = Some(e);
            }
        }
    }
    Err(unreachable(match last_error {
        Some(e) => connect_reason(&e),
        None => "the name resolved to no address".to_owned(),
    }))
}

fn resolve_reason(e: &io::Error) -> String {
    // getaddrinfo's text ("failed to lookup address information: Name or service not
    // known") is long; keep the part after the colon.
    let text = e.to_string();
    text.rsplit(": ").next().unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    fn connector(port: u16) -> Connector {
        Connector {
            target: Target {
                host: "127.0.0.1".into(),
                port,
            },
            transport: Transport::Plain,
            connect_timeout: WAIT,
            response_timeout: WAIT,
        }
    }

    /// A one-shot fake proxy: reads the request line, answers `reply`, returns the request.
    async fn fake_proxy(reply: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut reader = BufReader::new(&mut sock);
            let line = match read_line(&mut reader, 256).await.expect("read") {
                Line::Complete(l) => l,
                other => panic!("{other:?}"),
            };
            sock.write_all(reply).await.expect("write");
            // Like a proxy after its reply (or a VPS after its banner): done sending,
            // socket held open until the client is done with it.
            sock.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest).await;
            line
        });
        (port, handle)
    }

    fn id(n: i64) -> TaskId {
        TaskId::try_from(n).expect("id")
    }

    #[tokio::test]
    async fn success_keeps_bytes_behind_the_reply() {
        let (port, proxy) = fake_proxy(b"SUCCESS\nSSH-2.0-OpenSSH_9.2\r\n").await;
        let mut tunnel = connector(port).open(id(42)).await.expect("open");
        let mut banner = [0u8; 21];
        tokio::time::timeout(WAIT, tunnel.read_exact(&mut banner))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&banner, b"SSH-2.0-OpenSSH_9.2\r\n");
        drop(tunnel);
        let request = tokio::time::timeout(WAIT, proxy)
            .await
            .expect("done")
            .expect("join");
        assert_eq!(request, b"REQUEST_TUNNEL 42");
    }

    #[tokio::test]
    async fn both_error_forms_become_proxy_errors() {
        for reply in [
            &b"ERROR Task 9 not found.\n"[..],
            b"b'ERROR 'Task 9 not found.\n",
            b"ERROR Task 9 not found.",
        ] {
            let (port, _proxy) = fake_proxy(reply).await;
            match connector(port).open(id(9)).await.err() {
                Some(ClientError::Proxy(m)) => assert_eq!(m, "Task 9 not found."),
                other => panic!("{reply:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn silence_closed_and_garbage_are_reported() {
        // Nothing ever answers: response timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hold = tokio::spawn(async move { listener.accept().await });
        let mut impatient = connector(port);
        impatient.response_timeout = Duration::from_millis(200);
        let err = impatient.open(id(1)).await.err();
        assert!(
            matches!(err, Some(ClientError::ResponseTimeout { .. })),
            "{err:?}"
        );
        drop(hold);

        let (port, _p) = fake_proxy(b"").await;
        let err = connector(port).open(id(1)).await.err();
        assert!(matches!(err, Some(ClientError::NoReply { .. })), "{err:?}");

        let (port, _p) = fake_proxy(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let err = connector(port).open(id(1)).await.err();
        assert!(
            matches!(err, Some(ClientError::UnexpectedReply { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn refused_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let err = connector(port).open(id(1)).await.err().expect("must fail");
        let line = err.user_line("hakuriver-ssh");
        assert!(
            line.starts_with(&format!(
                "hakuriver-ssh: cannot reach the HakuRiver proxy at 127.0.0.1:{port}: connection refused"
            )),
            "{line}"
        );
    }

    #[test]
    fn targets_print_with_brackets_for_ipv6() {
        let t = Target {
            host: "::1".into(),
            port: 8002,
        };
        assert_eq!(t.to_string(), "[::1]:8002");
    }
}
