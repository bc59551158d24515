//! Opening one tunnel: TCP connect (with a deadline), the transport's own setup (TLS
//! slots in here), the request line, and the reply line (`protocol::request_tunnel`).
//!
//! The request is HakuRiver's `REQUEST_TUNNEL <id>\n` unless there is a reason for the
//! extended line: a token to send (only ever inside verified TLS), a task name, or LIST.
//!
//! The returned stream is the same `BufReader` the reply was read through: bytes the
//! proxy sent right behind `SUCCESS\n` (the VPS sshd's banner, typically) are still in
//! its buffer and reach ssh first.

use std::time::Duration;

use hakuriver_tunnel::protocol::extended::{encode_resume, MAX_LIST_REPLY};
use hakuriver_tunnel::protocol::handshake::read_reply_body;
use hakuriver_tunnel::protocol::{
    request_tunnel, Command, ExtendedRequest, ListReply, ReplyError, Request, TaskRef, Token,
    MAX_RESPONSE_LINE,
};
use hakuriver_tunnel::resume::{KeyPair, ResumeRequest, Session, SessionConfig, Side};
use hakuriver_tunnel::Response;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::time::Instant;

use crate::dial::connect_tcp;
pub use crate::dial::Target;
use crate::display::safe;
use crate::error::ClientError;
use crate::transport::Transport;

/// A byte stream to the proxy, plain or TLS.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// An open tunnel: reply consumed, anything after it still buffered.
pub type Tunnel = BufReader<Box<dyn TunnelIo>>;

/// The start of the proxy's refusal when it admits KohakuRiver users only.
pub const AUTH_REQUIRED: &str = "Authentication required";
/// HakuRiver's answer to a line it does not know (our extended one included).
const UNKNOWN_REQUEST: &str = "Invalid request format.";

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
    /// The user's KohakuRiver API token; sent only when the transport is TLS.
    pub token: Option<Token>,
    /// Ask for a resumable tunnel (a Host that does not resume answers plain SUCCESS).
    pub resume: bool,
}

/// An open tunnel, plain or resumable.
pub enum Opened {
    /// Raw bytes from here (HakuRiver's protocol, or a Host that does not resume).
    Plain(Tunnel),
    /// Frames from here, and the session that outlives the connection.
    Resumable(Box<ResumableTunnel>),
}

/// A resumable tunnel: its session, its current connection and the Host's terms.
pub struct ResumableTunnel {
    /// The session (bytes kept for the Host, the counts).
    pub session: Session,
    /// The current connection.
    pub leg: Tunnel,
    /// How long the Host keeps the tunnel after a connection drops.
    pub grace: Duration,
}

/// The largest window the client accepts from a Host (more would be the Host asking us
/// to keep more memory than any sane setting).
const MAX_WINDOW: u64 = 64 * 1024 * 1024;

impl Connector {
    /// Connects, requests a tunnel to `task` and returns the stream on `SUCCESS`.
    pub async fn open(&self, task: &TaskRef) -> Result<Tunnel, ClientError> {
        let command = Command::Tunnel(task.clone());
        let request = self.request_line(&command, None);
        self.open_with(task, &request).await
    }

    /// [`open`](Self::open), asking for a resumable tunnel when `resume` is set: the
    /// Host's grant makes it [`Opened::Resumable`], a plain SUCCESS (or a Host that
    /// does not know the extended line) [`Opened::Plain`].
    pub async fn open_any(&self, task: &TaskRef) -> Result<Opened, ClientError> {
        if !self.resume {
            return self.open(task).await.map(Opened::Plain);
        }
        let pair = KeyPair::generate().map_err(|e| ClientError::Io {
            addr: self.target.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let ours = pair.public;
        let request = self.request_line(&Command::Tunnel(task.clone()), Some(ours));
        let (response, stream) = self.exchange_raw(&request).await?;
        match response {
            Response::Error(message) if message == UNKNOWN_REQUEST => {
                tracing::debug!(proxy = %self.target, "the proxy does not speak the extended request; asking plainly (no resume)");
                self.open(task).await.map(Opened::Plain)
            }
            Response::Resumable(grant) if grant.window <= MAX_WINDOW && grant.window > 0 => {
                let key = pair
                    .agree(&grant.key, &grant.id, &ours, &grant.key)
                    .map_err(|e| ClientError::Io {
                        addr: self.target.to_string(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
                let config = SessionConfig {
                    window: grant.window as usize,
                    ..SessionConfig::default()
                };
                tracing::info!(proxy = %self.target, grace_secs = grant.grace_secs, "tunnel open (resumable)");
                Ok(Opened::Resumable(Box::new(ResumableTunnel {
                    session: Session::new(grant.id, key, config),
                    leg: stream,
                    grace: Duration::from_secs(grant.grace_secs),
                })))
            }
            Response::Success => {
                tracing::info!(proxy = %self.target, "tunnel open (the Host does not resume)");
                Ok(Opened::Plain(stream))
            }
            Response::Error(message) => Err(self.refusal(&message)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Continues `session` on a new connection: TLS verified as for the first one, a
    /// RESUME with the next generation, the Host's RESUMED checked; the session then
    /// resends what the Host is missing. Returns the connection and the bytes resent.
    ///
    /// Every attempt spends a generation, answered or not: the Host may have accepted a
    /// RESUME whose answer was lost with its connection, and takes only higher ones after.
    pub async fn resume(&self, session: &mut Session) -> Result<(Tunnel, u64), ClientError> {
        let generation = session.generation + 1;
        session.generation = generation;
        let request = ResumeRequest::new(session.key(), session.id, generation, session.received());
        let (response, stream) = self.exchange_raw(&encode_resume(&request)).await?;
        let addr = self.target.to_string();
        match response {
            Response::Resumed(resumed) => {
                if !session.key().verify(
                    Side::Host,
                    &session.id,
                    generation,
                    resumed.received,
                    &resumed.proof,
                ) {
                    return Err(ClientError::UnexpectedReply {
                        addr,
                        line: "(a RESUMED whose proof does not match: not the Host this tunnel was opened with)".into(),
                    });
                }
                let resent = session.resume_from(resumed.received).map_err(|m| {
                    ClientError::ResumeRefused {
                        addr: addr.clone(),
                        message: m.to_string(),
                    }
                })?;
                Ok((stream, resent))
            }
            Response::Error(message) => Err(ClientError::ResumeRefused {
                addr,
                message: safe(&message),
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn open_with(&self, task: &TaskRef, request: &[u8]) -> Result<Tunnel, ClientError> {
        let extended = !request.starts_with(b"REQUEST_TUNNEL ");
        match self.exchange(request).await {
            Ok(tunnel) => Ok(tunnel),
            // A proxy that speaks only HakuRiver's line (an older one, or HakuRiver's
            // own): ask again the way it understands, without the token.
            Err(ClientError::Proxy(message)) if extended && message == UNKNOWN_REQUEST => {
                match task {
                    TaskRef::Id(id) => {
                        tracing::debug!(proxy = %self.target, "the proxy does not speak the extended request; asking plainly");
                        self.exchange(&Request { task_id: *id }.encode()).await
                    }
                    TaskRef::Name(_) => Err(ClientError::Unsupported {
                        addr: self.target.to_string(),
                        what: "task names",
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The VPS tasks the proxy says this user may reach (`hakuriver-ssh list`).
    pub async fn list(&self) -> Result<ListReply, ClientError> {
        let request = self.request_line(&Command::List, None);
        let mut stream = match self.exchange(&request).await {
            Ok(stream) => stream,
            Err(ClientError::Proxy(message)) if message == UNKNOWN_REQUEST => {
                return Err(ClientError::Unsupported {
                    addr: self.target.to_string(),
                    what: "listing tasks",
                })
            }
            Err(e) => return Err(e),
        };
        let addr = self.target.to_string();
        let body = read_reply_body(&mut stream, MAX_LIST_REPLY, self.response_timeout)
            .await
            .map_err(|e| self.reply_error(e))?
            .ok_or_else(|| ClientError::UnexpectedReply {
                addr: addr.clone(),
                line: "(the list ended early or is too long)".to_owned(),
            })?;
        ListReply::parse(&body).map_err(|e| ClientError::UnexpectedReply {
            addr,
            line: format!("(the list is not valid: {e})"),
        })
    }

    /// The line for `command`: HakuRiver's when it says everything, else the extended
    /// one, with the token only when the transport is TLS.
    fn request_line(
        &self,
        command: &Command,
        resume: Option<hakuriver_tunnel::resume::PublicKey>,
    ) -> Vec<u8> {
        let token = match self.transport {
            Transport::Tls(_) => self.token.clone(),
            Transport::Plain => None,
        };
        match (command, &token, resume) {
            (Command::Tunnel(TaskRef::Id(id)), None, None) => Request { task_id: *id }.encode(),
            _ => ExtendedRequest {
                command: command.clone(),
                token,
                resume,
            }
            .encode(),
        }
    }

    /// Connects, sends `request`, reads the reply; the stream on `SUCCESS`.
    async fn exchange(&self, request: &[u8]) -> Result<Tunnel, ClientError> {
        match self.exchange_raw(request).await? {
            (Response::Success, stream) => {
                tracing::info!(proxy = %self.target, "tunnel open");
                Ok(stream)
            }
            (Response::Error(message), _) => Err(self.refusal(&message)),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    /// Connects, sends `request`, reads the reply line: the reply and the stream, or
    /// why there was none (refusals come back as `Response::Error`).
    async fn exchange_raw(&self, request: &[u8]) -> Result<(Response, Tunnel), ClientError> {
        let addr = self.target.to_string();
        let deadline = Instant::now() + self.connect_timeout;
        let tcp = connect_tcp(&self.target, deadline, self.connect_timeout).await?;
        // Verification (TLS) finishes inside `establish`, before the request is written.
        let established = self
            .transport
            .establish(tcp, &self.target, deadline)
            .await?;
        if let Some((store, fingerprint)) = &established.first_use {
            crate::trust::remember_first_use(store, &self.target, *fingerprint)?;
        }
        let stream = established.stream;
        let (response, stream) = request_tunnel(stream, request, self.response_timeout)
            .await
            .map_err(|e| self.reply_error(e))?;
        tracing::debug!(proxy = %addr, "request sent");
        Ok((response, stream))
    }

    /// The proxy's refusal as the user sees it: its text made safe to print, and for a
    /// Host that wants a token while we spoke plain TCP, why none was sent.
    fn refusal(&self, message: &str) -> ClientError {
        let mut shown = safe(message);
        if shown.starts_with(AUTH_REQUIRED) && matches!(self.transport, Transport::Plain) {
            shown.push_str(if self.token.is_some() {
                " (you have a token, but hakuriver-ssh sends it only over TLS: add --tls)"
            } else {
                " (tokens travel only over TLS: add --tls)"
            });
        }
        ClientError::Proxy(shown)
    }

    /// A valid reply that does not fit the request (a grant to a RESUME, say).
    fn unexpected(&self, reply: &Response) -> ClientError {
        ClientError::UnexpectedReply {
            addr: self.target.to_string(),
            line: format!("{:?}", String::from_utf8_lossy(&reply.encode()).trim_end()),
        }
    }

    fn reply_error(&self, e: ReplyError) -> ClientError {
        let addr = self.target.to_string();
        match e {
            ReplyError::Timeout => ClientError::ResponseTimeout {
                addr,
                after: self.response_timeout,
            },
            ReplyError::Io(source) => ClientError::Io { addr, source },
            ReplyError::Closed => ClientError::NoReply { addr },
            ReplyError::Unexpected(line) => ClientError::UnexpectedReply {
                addr,
                line: safe(&line),
            },
            ReplyError::TooLong => ClientError::UnexpectedReply {
                addr,
                line: format!("(no newline in the first {MAX_RESPONSE_LINE} bytes)"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hakuriver_tunnel::protocol::{read_line, Line};
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
            token: None,
            resume: false,
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

    fn id(n: i64) -> TaskRef {
        TaskRef::Id(hakuriver_tunnel::TaskId::try_from(n).expect("id"))
    }

    #[tokio::test]
    async fn success_keeps_bytes_behind_the_reply() {
        let (port, proxy) = fake_proxy(b"SUCCESS\nSSH-2.0-OpenSSH_9.2\r\n").await;
        let mut tunnel = connector(port).open(&id(42)).await.expect("open");
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
            match connector(port).open(&id(9)).await.err() {
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
        let err = impatient.open(&id(1)).await.err();
        assert!(
            matches!(err, Some(ClientError::ResponseTimeout { .. })),
            "{err:?}"
        );
        drop(hold);

        let (port, _p) = fake_proxy(b"").await;
        let err = connector(port).open(&id(1)).await.err();
        assert!(matches!(err, Some(ClientError::NoReply { .. })), "{err:?}");

        let (port, _p) = fake_proxy(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let err = connector(port).open(&id(1)).await.err();
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
        let err = connector(port).open(&id(1)).await.err().expect("must fail");
        let line = err.user_line("hakuriver-ssh");
        assert!(
            line.starts_with(&format!(
                "hakuriver-ssh: cannot reach the HakuRiver proxy at 127.0.0.1:{port}: connection refused"
            )),
            "{line}"
        );
    }
}
