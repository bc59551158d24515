//! The tunnel handshake on the proxy's side: read `REQUEST_TUNNEL <id>`, take a lookup
//! from the client's bucket, look the task up, connect to its runner, then answer
//! `SUCCESS` or `ERROR <message>`.

use std::io;
use std::time::{Duration, Instant};

use hakuriver_tunnel::protocol::{self, Line, Response, MAX_REQUEST_LINE, SUCCESS_LINE};
use hakuriver_tunnel::{net::tune_tcp, Request, RequestError, TaskId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::directory::Route;
use crate::error::Refusal;
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
}

/// Reads the request, looks the task up, connects to its runner and answers `SUCCESS`;
/// or answers `ERROR <message>` and returns `None`.
pub(crate) async fn open_tunnel<S>(
    state: &ProxyState,
    stream: S,
    arrival: Arrival,
) -> Option<Established<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = arrival.peer;
    let mut client = BufReader::with_capacity(MAX_REQUEST_LINE, stream);
    let mut task_id = None;
    let set_up = async {
        let request = read_request(&mut client, state.timeouts.request).await?;
        task_id = Some(request.task_id);
        state.admission.take_lookup(peer.ip())?;
        let looking = Instant::now();
        let route = state.directory.lookup_async(request.task_id).await;
        state.stats.metrics.lookup_took(looking.elapsed());
        let route = route?;
        let runner = connect_runner(&route, request.task_id, state.timeouts.connect).await?;
        Ok::<_, Refusal>((request.task_id, route, runner))
    };
    let (task_id, route, runner) = match set_up.await {
        Ok(set_up) => set_up,
        Err(refusal) => {
            state.stats.refused(&refusal);
            let task = task_id.map(|t| t.to_string()).unwrap_or_default();
            match &refusal {
                Refusal::Database(_) | Refusal::Internal(_) => {
                    warn!(peer = %peer, task_id = %task, reason = %refusal.detail(), "tunnel refused: lookup failed")
                }
                _ => {
                    info!(peer = %peer, task_id = %task, reason = %refusal.detail(), "tunnel refused")
                }
            }
            let _ =
                tokio::time::timeout(REFUSAL_LINGER, write_refusal(&mut client, &refusal)).await;
            return None;
        }
    };
    if let Err(e) = write_success(&mut client).await {
        info!(peer = %peer, task_id = %task_id, error = %e, "client left before SUCCESS");
        return None;
    }
    let runner_addr = route.display_addr();
    state
        .stats
        .tunnel_opened(arrival.transport, arrival.accepted.elapsed());
    info!(task_id = %task_id, peer = %peer, runner = %runner_addr, node = %route.node, "tunnel opened");
    // Whatever the client pipelined behind its request line goes to the runner first;
    // the request buffer itself is freed here, before the tunnel idles for hours.
    let pending = client.buffer().to_vec();
    Some(Established {
        client: client.into_inner(),
        pending,
        runner,
        task_id,
        runner_addr,
    })
}

/// Reads and parses the request line under `timeout`.
pub(crate) async fn read_request<R>(reader: &mut R, timeout: Duration) -> Result<Request, Refusal>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let read = async {
        // A ClientHello has no newline to wait for: recognise it by its first byte.
        if reader.fill_buf().await?.first() == Some(&TLS_HANDSHAKE_RECORD) {
            return Ok(None);
        }
        protocol::read_line(reader, MAX_REQUEST_LINE)
            .await
            .map(Some)
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(RequestError::Timeout.into()),
        Ok(Ok(None)) => Err(Refusal::TlsOnPlainPort),
        Ok(Err(_)) | Ok(Ok(Some(Line::Eof(_)))) | Ok(Ok(Some(Line::TooLong))) => {
            Err(RequestError::Unreadable.into())
        }
        Ok(Ok(Some(Line::Complete(line)))) => Ok(protocol::parse_request(&line)?),
    }
}

async fn connect_runner(
    route: &Route,
    id: TaskId,
    timeout: Duration,
) -> Result<TcpStream, Refusal> {
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

async fn write_success<S: AsyncWrite + Unpin>(stream: &mut S) -> io::Result<()> {
    stream.write_all(SUCCESS_LINE).await?;
    stream.flush().await
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
