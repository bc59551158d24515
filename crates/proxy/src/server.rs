//! Accept loops and the per-connection handler.
//!
//! Nothing slow runs on an accept loop: each connection gets its own task, where the
//! TLS handshake, the request read, the lookup (on the blocking pool) and the runner
//! connect each run under their own timeout. Shutdown stops the accept loops first,
//! then lets open tunnels drain for the grace period, then cuts what is left.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hakuriver_tunnel::protocol::{self, Line, Response, MAX_REQUEST_LINE, SUCCESS_LINE};
use hakuriver_tunnel::{net::tune_tcp, relay, Request, RequestError, TaskId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Limits, Timeouts};
use crate::directory::{Route, TaskDirectory};
use crate::error::Refusal;

/// Pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS) so the loop does not spin
/// while the process is out of descriptors.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long a refused client gets to read its `ERROR` line before the socket closes.
pub const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A bound listening socket and what it speaks.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// Whether connections start with a TLS handshake.
    pub tls: bool,
}

/// Counters for logs and `STATUS=`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Tunnels currently relaying.
    pub open: AtomicU64,
    /// Tunnels opened since start.
    pub opened: AtomicU64,
    /// Connections refused since start.
    pub refused: AtomicU64,
    /// Wakes whoever reports status when a counter changed.
    pub changed: tokio::sync::Notify,
}

impl Stats {
    /// One line for `STATUS=` and logs.
    pub fn summary(&self) -> String {
        format!(
            "{} open tunnels, {} opened, {} refused",
            self.open.load(Ordering::Relaxed),
            self.opened.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed)
        )
    }
}

/// Everything a connection handler needs.
pub struct ProxyState {
    /// HakuRiver's database.
    pub directory: TaskDirectory,
    /// Per-connection timeouts.
    pub timeouts: Timeouts,
    /// Connection limits.
    pub limits: Limits,
    /// TLS acceptor for TLS listeners (its certificate resolver is reloadable).
    pub tls: Option<TlsAcceptor>,
    /// Counters.
    pub stats: Stats,
    connections: Mutex<Connections>,
    lookups: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A token bucket of task lookups for one client address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Above this many tracked addresses, buckets that have refilled completely are dropped.
const MAX_TRACKED_ADDRESSES: usize = 4096;

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState")
            .field("directory", &self.directory)
            .field("tls", &self.tls.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl ProxyState {
    /// State for [`serve`].
    pub fn new(
        directory: TaskDirectory,
        timeouts: Timeouts,
        limits: Limits,
        tls: Option<TlsAcceptor>,
    ) -> Self {
        ProxyState {
            directory,
            timeouts,
            limits,
            tls,
            stats: Stats::default(),
            connections: Mutex::new(Connections::default()),
            lookups: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may connect at all (`allowed_clients`).
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.limits.allowed_clients.is_empty()
            || self
                .limits
                .allowed_clients
                .iter()
                .any(|net| net.contains(ip))
    }

    /// Takes one lookup from `ip`'s bucket, or refuses when it is empty.
    fn take_lookup(&self, ip: IpAddr) -> Result<(), Refusal> {
        let per_minute = self.limits.lookups_per_minute_per_ip;
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let refill_per_sec = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * refill_per_sec < capacity
            });
        }
        let bucket = buckets.entry(ip.to_canonical()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * refill_per_sec).min(capacity);
        bucket.updated = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::TooManyLookups);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Counts a new connection against the limits, or says which limit it hit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut c = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.limits.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let from_ip = c.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.limits.max_connections_per_ip {
            return Err(Refusal::TooManyFromPeer);
        }
        *from_ip += 1;
        c.total += 1;
        Ok(Admission {
            state: Arc::clone(self),
            ip,
        })
    }
}

/// A connection slot, released on drop.
struct Admission {
    state: Arc<ProxyState>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut c = self
            .state
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `listeners` until `shutdown` fires, then drains open tunnels for `grace` and
/// cuts the rest. Returns the number of tunnels cut.
pub async fn serve(
    listeners: Vec<Listener>,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    grace: Duration,
) -> usize {
    let tracker = TaskTracker::new();
    let force = CancellationToken::new();
    for listener in &listeners {
        // Accepted sockets inherit these from the listener: no per-connection calls.
        if let Err(e) = tune_tcp(&listener.tcp) {
            warn!(error = %e, "cannot set TCP_NODELAY and keepalive on a listener");
        }
    }
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(accept_loop(
                listener,
                Arc::clone(&state),
                tracker.clone(),
                shutdown.clone(),
                force.clone(),
            ))
        })
        .collect();
    for accept_loop in accept_loops {
        // The loops end only when `shutdown` fires; their sockets close with them.
        let _ = accept_loop.await;
    }
    tracker.close();
    let open = state.stats.open.load(Ordering::Relaxed);
    if !tracker.is_empty() {
        info!(
            open_tunnels = open,
            grace_secs = grace.as_secs_f64(),
            "draining open connections"
        );
    }
    if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
        return 0;
    }
    let cut = tracker.len();
    warn!(
        connections = cut,
        "grace period over; closing remaining connections"
    );
    force.cancel();
    tracker.wait().await;
    cut
}

async fn accept_loop(
    listener: Listener,
    state: Arc<ProxyState>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    force: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            accepted = listener.tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let tls = listener.tls;
        let admitted = if state.allowed(peer.ip()) {
            state.admit(peer.ip())
        } else {
            Err(Refusal::NotAllowed)
        };
        match admitted {
            Ok(slot) => {
                let connection = Connection {
                    slot,
                    peer,
                    force: force.clone(),
                    tracker: tracker.clone(),
                };
                tracker.spawn(connection.run(stream, tls));
            }
            Err(refusal) => {
                state.stats.refused.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer, reason = %refusal, "connection refused");
                if !tls {
                    tracker.spawn(async move {
                        let mut stream = stream;
                        let _ = tokio::time::timeout(
                            REFUSAL_LINGER,
                            write_refusal(&mut stream, &refusal),
                        )
                        .await;
                    });
                }
            }
        }
    }
}

/// One admitted client connection.
///
/// Its first task runs the TLS handshake (on TLS listeners), reads the request, looks
/// the task up and connects to the runner. An opened tunnel is then relayed by a task of
/// its own that holds only what relaying needs (the two sockets, the relay's state and
/// what its log lines name): an SSH session keeps it for hours, thousands at a time.
struct Connection {
    /// The connection's place in the limits; released when the connection ends.
    slot: Admission,
    peer: SocketAddr,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: bool) {
        // No socket options to set: accepted sockets inherit TCP_NODELAY and keepalive
        // from the listener (set in `serve`).
        if !tls {
            let opened = tokio::select! {
                opened = open(&self.slot.state, stream, self.peer) => opened,
                () = self.force.cancelled() => return,
            };
            if let Some(opened) = opened {
                self.relay(opened);
            }
            return;
        }
        // Boxed: the TLS path's state is several times the plain one's.
        Box::pin(self.run_tls(stream)).await;
    }

    async fn run_tls(self, stream: TcpStream) {
        let state = &self.slot.state;
        let peer = self.peer;
        let Some(acceptor) = state.tls.clone() else {
            warn!(peer = %peer, "TLS listener without TLS configuration");
            return;
        };
        let opened = tokio::select! {
            opened = async {
                // ReadAhead: rustls reads its socket 4 KiB at a time otherwise.
                let stream = relay::ReadAhead::new(stream);
                let handshake = tokio::time::timeout(state.timeouts.tls_handshake, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => open(state, stream, peer).await,
                    Ok(Err(e)) => {
                        state.stats.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %peer, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        state.stats.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %peer, "TLS handshake timed out");
                        None
                    }
                }
            } => opened,
            () = self.force.cancelled() => return,
        };
        if let Some(opened) = opened {
            self.relay(opened);
        }
    }

    /// Relays an open tunnel in a task of its own.
    fn relay<S>(self, opened: Opened<S>)
    where
        S: relay::Endpoint + 'static,
    {
        let tracker = self.tracker.clone();
        tracker.spawn(self.relaying(opened));
    }

    /// Relays until the tunnel ends (or shutdown cuts it), then logs how it went.
    fn relaying<S>(self, opened: Opened<S>) -> impl std::future::Future<Output = ()> + Send
    where
        S: relay::Endpoint + 'static,
    {
        let mut opened = opened;
        // Fields are used in place (not destructured): every binding would be one more
        // slot in this long-lived task's state.
        async move {
            let state = &self.slot.state;
            let started = Instant::now();
            let outcome = {
                let options = relay::RelayOptions {
                    idle_timeout: state.timeouts.idle,
                };
                let relayed = relay::tunnel(
                    &mut opened.client,
                    &opened.pending,
                    &mut opened.runner,
                    options,
                );
                tokio::select! {
                    outcome = relayed => Some(outcome),
                    () = self.force.cancelled() => None,
                }
            };
            state.stats.open.fetch_sub(1, Ordering::Relaxed);
            state.stats.changed.notify_one();
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (task_id, peer, runner) = (opened.task_id, self.peer, &opened.runner_addr);
            match outcome {
                Some(outcome) => {
                    let end = match &outcome.result {
                        Ok(()) => "closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    info!(
                        task_id = %task_id,
                        peer = %peer,
                        runner = %runner,
                        bytes_up = outcome.stats.a_to_b,
                        bytes_down = outcome.stats.b_to_a,
                        duration_ms,
                        end = %end,
                        "tunnel closed"
                    );
                }
                None => {
                    info!(task_id = %task_id, peer = %peer, runner = %runner, duration_ms, "tunnel cut at shutdown")
                }
            }
        }
    }
}

/// A tunnel whose runner connection is up and whose client has its `SUCCESS`.
struct Opened<S> {
    client: S,
    /// Bytes the client pipelined behind its request line, read already.
    pending: Vec<u8>,
    runner: TcpStream,
    task_id: TaskId,
    /// The runner's address, for the log lines.
    runner_addr: String,
}

/// Reads the request, looks the task up, connects to its runner and answers `SUCCESS`;
/// or answers `ERROR <message>` and returns `None`.
async fn open<S>(state: &ProxyState, stream: S, peer: SocketAddr) -> Option<Opened<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = BufReader::with_capacity(MAX_REQUEST_LINE, stream);
    let mut task_id = None;
    let opened = async {
        let request = read_request(&mut client, state.timeouts.request).await?;
        task_id = Some(request.task_id);
        state.take_lookup(peer.ip())?;
        let route = state.directory.lookup_async(request.task_id).await?;
        let runner = connect_runner(&route, request.task_id, state.timeouts.connect).await?;
        Ok::<_, Refusal>((request.task_id, route, runner))
    };
    let (task_id, route, runner) = match opened.await {
        Ok(opened) => opened,
        Err(refusal) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            state.stats.changed.notify_one();
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
    state.stats.open.fetch_add(1, Ordering::Relaxed);
    state.stats.opened.fetch_add(1, Ordering::Relaxed);
    state.stats.changed.notify_one();
    info!(task_id = %task_id, peer = %peer, runner = %runner_addr, node = %route.node, "tunnel opened");
    // Whatever the client pipelined behind its request line goes to the runner first;
    // the request buffer itself is freed here, before the tunnel idles for hours.
    let pending = client.buffer().to_vec();
    Some(Opened {
        client: client.into_inner(),
        pending,
        runner,
        task_id,
        runner_addr,
    })
}

/// First byte of a TLS handshake record: a TLS client on a plain port.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Reads and parses the request line under `timeout`.
pub async fn read_request<R>(reader: &mut R, timeout: Duration) -> Result<Request, Refusal>
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
async fn write_refusal<S: AsyncRead + AsyncWrite + Unpin>(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an open tunnel's task carries inline, for its whole life (hours for an SSH
    /// session). The idle-tunnel footprint in BENCHMARKS.md depends on it staying small.
    #[tokio::test]
    async fn tunnel_task_state_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pair = || async {
            let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
            (a.expect("connect"), b.expect("accept").0)
        };
        let (mut a, mut b) = pair().await;
        let (client, runner) = pair().await;
        let (_, accepted) = pair().await;
        let state = Arc::new(ProxyState::new(
            TaskDirectory::new("/nonexistent/hakuriver.db"),
            Timeouts {
                request: Duration::from_secs(1),
                connect: Duration::from_secs(1),
                tls_handshake: Duration::from_secs(1),
                idle: None,
            },
            Limits {
                max_connections: 10,
                max_connections_per_ip: 10,
                ..Limits::default()
            },
            None,
        ));
        let peer = client.peer_addr().expect("peer");
        let connection = || Connection {
            slot: state.admit(peer.ip()).expect("admitted"),
            peer,
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let setup_size = std::mem::size_of_val(&connection().run(accepted, false));
        let opened = Opened {
            client,
            pending: Vec::new(),
            runner,
            task_id: "1".parse().expect("id"),
            runner_addr: String::new(),
        };
        let relaying_size = std::mem::size_of_val(&connection().relaying(opened));
        let splice_size = std::mem::size_of_val(&relay::relay_tcp(&mut a, &[], &mut b));
        eprintln!(
            "setup task {setup_size} B, relay task {relaying_size} B, splice relay {splice_size} B"
        );
        assert!(setup_size <= 1536, "setup task is {setup_size} bytes");
        assert!(relaying_size <= 512, "relay task is {relaying_size} bytes");
        assert!(splice_size <= 256, "splice relay is {splice_size} bytes");
    }
}
