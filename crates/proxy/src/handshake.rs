//! The tunnel handshake on the proxy's side: read the request (HakuRiver's
//! `REQUEST_TUNNEL <id>` or our extended line), decide it under `[ssh_proxy.auth]`
//! ([`crate::access`], which takes lookups from the client's bucket), connect to the
//! runner, then answer `SUCCESS` or `ERROR <message>` (or send a task list).

use std::io;
use std::time::{Duration, Instant};

use hakuriver_tunnel::protocol::{AnyRequest, Handshake, Response};
use hakuriver_tunnel::resume::ResumeRequest;
use hakuriver_tunnel::{net::tune_tcp, RequestError, TaskId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::access::{self, Answer};
use crate::directory::Route;
use crate::error::Refusal;
use crate::metrics::Transport;
use crate::server::{Arrival, ProxyState};

/// How long a refused client gets to read its `ERROR` line before the socket closes.
pub(crate) const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// First byte of a TLS handshake record: a TLS client on a plain port.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A tunnel whose runner connection is up and whose client has its `SUCCESS`.
pub(crate) struct Established<S> {
    pub(crate) client: S,
    /// Bytes the client pipelined behind its request line, read already.
    pub(crate) pending: Vec<u8>,
    pub(crate) runner: TcpStream,
    pub(crate) task_id: TaskId,
    /// The runner's address, for the log lines.
    pub(crate) runner_addr: String,
    /// The KohakuRiver user (auth mode), for the log lines.
    pub(crate) user: Option<Box<str>>,
    /// Set when the tunnel was granted as resumable: frames, not raw bytes, from here.
    pub(crate) resumable: Option<Box<crate::resume::Resumable>>,
}

/// What the request asked for, once decided.
enum SetUp {
    Tunnel(Route, TcpStream),
    Listed,
    Resume(ResumeRequest),
}

/// Reads the request, decides it (see [`crate::access`]), connects to the runner and
/// answers `SUCCESS`; or answers `ERROR <message>` (or a LIST) and returns `None`.
/// `tls`: whether the stream is a TLS session (a token is accepted only inside one).
pub(crate) async fn open_tunnel<S>(
    state: &ProxyState,
    stream: S,
    arrival: Arrival,
) -> Option<Established<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = arrival.peer;
    let tls = matches!(arrival.transport, Transport::Tls);
    let mut client = Handshake::new(stream);
    let mut target = None;
    let mut user = None;
    let mut offer = None;
    let set_up = async {
        let request = read_request(&mut client, state.timeouts.request).await?;
        if let AnyRequest::Resume(resume) = request {
            return Ok(SetUp::Resume(resume));
        }
        target = request.target();
        if let AnyRequest::Extended(extended) = &request {
            // Under the fd store a resumable tunnel survives a restart too: its runner
            // connection and session go to the store at SIGTERM (`crate::resume`).
            offer = extended.resume.filter(|_| state.resumables.enabled());
        }
        let deciding = Instant::now();
        // Boxed: the decision's state (token, name and list lookups) would otherwise sit
        // inline in every connection's setup future.
        let answer = Box::pin(access::decide(
            &state.directory,
            state.access,
            &request,
            access::Client { ip: peer.ip(), tls },
            &mut user,
            |ip| state.admission.take_lookup(ip),
        ))
        .await;
        // The directory's part of the decision: task, token, name or list lookups.
        state.stats.metrics.lookup_took(deciding.elapsed());
        match answer? {
            Answer::Tunnel(route) => {
                let runner = connect_runner(&route, state.timeouts.connect).await?;
                Ok::<_, Refusal>(SetUp::Tunnel(route, runner))
            }
            Answer::List(list) => {
                info!(peer = %peer, user = user.as_deref().map(tracing::field::display), tasks = list.tasks.len(), "task list sent");
                let sent = async {
                    client.write_response(&Response::Success).await?;
                    client.write_line(&list.encode()).await?;
                    client.stream_mut().shutdown().await
                };
                if let Err(e) = sent.await {
                    debug!(peer = %peer, error = %e, "client left during the task list");
                }
                Ok(SetUp::Listed)
            }
        }
    };
    // Boxed: the decision and the resumable grant would otherwise sit inline in every
    // connection's setup future.
    let (route, runner) = match Box::pin(set_up).await {
        Ok(SetUp::Tunnel(route, runner)) => (route, runner),
        Ok(SetUp::Listed) => return None,
        Ok(SetUp::Resume(request)) => {
            // Boxed: only resumes pay for the hand-over's state.
            Box::pin(resume_tunnel(state, client, request, arrival)).await;
            return None;
        }
        Err(refusal) => {
            state.stats.refused(&refusal);
            let task = target.map(|t| t.to_string()).unwrap_or_default();
            let user = user.as_deref().map(tracing::field::display);
            match &refusal {
                Refusal::Database(_) | Refusal::Internal(_) | Refusal::AuthUnsupported(_) => {
                    warn!(peer = %peer, task_id = %task, user, reason = %refusal.detail(), "tunnel refused: lookup failed")
                }
                _ => {
                    info!(peer = %peer, task_id = %task, user, reason = %refusal.detail(), "tunnel refused")
                }
            }
            let _ =
                tokio::time::timeout(REFUSAL_LINGER, write_refusal(client.stream_mut(), &refusal))
                    .await;
            return None;
        }
    };
    let task_id = route.task_id;
    let mut resumable = None;
    let response = match offer {
        // A resumable tunnel's client waits for the grant before it sends a frame.
        Some(key) if client.stream_mut().buffer().is_empty() => {
            match state.resumables.grant(&key, arrival.transport) {
                Ok((grant, granted)) => {
                    resumable = Some(Box::new(granted));
                    Response::Resumable(grant)
                }
                Err(e) => {
                    warn!(peer = %peer, task_id = %task_id, reason = %e.detail(), "cannot make the tunnel resumable; opening it plain");
                    Response::Success
                }
            }
        }
        Some(_) => {
            let refusal = Refusal::Request(RequestError::InvalidFormat);
            state.stats.refused(&refusal);
            info!(peer = %peer, task_id = %task_id, "tunnel refused: bytes sent before the resumable grant");
            let _ =
                tokio::time::timeout(REFUSAL_LINGER, write_refusal(client.stream_mut(), &refusal))
                    .await;
            return None;
        }
        None => Response::Success,
    };
    if let Err(e) = client.write_response(&response).await {
        info!(peer = %peer, task_id = %task_id, error = %e, "client left before SUCCESS");
        return None;
    }
    let runner_addr = route.display_addr();
    state
        .stats
        .tunnel_opened(arrival.transport, arrival.accepted.elapsed());
    // `user` is recorded only when there is one (auth mode).
    info!(task_id = %task_id, peer = %peer, runner = %runner_addr, node = %route.node, user = user.as_deref().map(tracing::field::display), resumable = resumable.is_some(), "tunnel opened");
    // Whatever the client pipelined behind its request line goes to the runner first;
    // the request buffer itself is freed here, before the tunnel idles for hours.
    let (client, pending) = client.into_parts();
    Some(Established {
        client,
        pending,
        runner,
        task_id,
        runner_addr,
        user: user.map(String::into_boxed_str),
        resumable,
    })
}

/// Answers a RESUME: checked against the registry (each attempt takes a lookup from
/// the client's bucket, a failed proof a second one), then the connection goes to the
/// tunnel's task, which answers `RESUMED`; or `ERROR <message>`.
async fn resume_tunnel<S>(
    state: &ProxyState,
    mut client: Handshake<S>,
    request: ResumeRequest,
    arrival: Arrival,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = arrival.peer;
    let claimed = state
        .admission
        .take_lookup(peer.ip())
        .and_then(|()| state.resumables.claim(&request, arrival.transport));
    let refusal = match claimed {
        Ok(legs) => {
            let (stream, pending) = client.into_parts();
            if !pending.is_empty() {
                // Frames before RESUMED: not our client. The tunnel waits for another.
                warn!(peer = %peer, "resume dropped: bytes sent before RESUMED");
                return;
            }
            let leg = crate::resume::NewLeg {
                leg: Box::new(stream),
                generation: request.generation,
                received: request.received,
                peer,
            };
            if legs.try_send(leg).is_err() {
                warn!(peer = %peer, "resume dropped: the tunnel is busy with other resumes");
            }
            return;
        }
        Err(refusal) => refusal,
    };
    if refusal.is_failed_credential() {
        let _ = state.admission.take_lookup(peer.ip());
    }
    state.stats.refused(&refusal);
    info!(peer = %peer, reason = %refusal.detail(), "resume refused");
    let _ =
        tokio::time::timeout(REFUSAL_LINGER, write_refusal(client.stream_mut(), &refusal)).await;
}

/// Reads and parses the request line (either form) under `timeout`.
async fn read_request<S>(
    client: &mut Handshake<S>,
    timeout: Duration,
) -> Result<AnyRequest, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let read = async {
        // A ClientHello has no newline to wait for: recognise it by its first byte.
        if client.peek_first_byte().await.ok().flatten() == Some(TLS_HANDSHAKE_RECORD) {
            return Err(Refusal::TlsOnPlainPort);
        }
        Ok(client.read_request().await?)
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(RequestError::Timeout.into()),
        Ok(result) => result,
    }
}

async fn connect_runner(route: &Route, timeout: Duration) -> Result<TcpStream, Refusal> {
    let id = route.task_id;
    let target = (route.host.as_str(), route.port);
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Err(_) => Err(Refusal::ConnectTimeout(id)),
        Ok(Ok(stream)) => {
            if let Err(e) = tune_tcp(&stream) {
                debug!(runner = %route.display_addr(), error = %e, "could not set socket options");
            }
            Ok(stream)
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(Refusal::ConnectRefused(id, route.node.clone()))
        }
        Ok(Err(e)) => {
            debug!(runner = %route.display_addr(), error = %e, "runner connect failed");
            Err(Refusal::ConnectFailed(id))
        }
    }
}

/// Sends `ERROR <message>\n`, half-closes, and reads what the client still sends until
/// it closes (bounded by the caller's timeout), so unread input does not turn our close
/// into a reset that could destroy the error line before the client reads it.
pub(crate) async fn write_refusal<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    refusal: &Refusal,
) -> io::Result<()> {
    stream
        .write_all(&Response::Error(refusal.to_string()).encode())
        .await?;
    stream.flush().await?;
    stream.shutdown().await?;
    // On the heap: an array here would sit inline in every connection's future.
    let mut sink = vec![0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match stream.read(&mut sink).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}
