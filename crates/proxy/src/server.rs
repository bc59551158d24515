//! Accept loops, the per-connection lifecycle and drain.
//!
//! Nothing slow runs on an accept loop: each connection gets its own task, where the
//! TLS handshake, the request read, the lookup (on the blocking pool) and the runner
//! connect each run under their own timeout (`handshake`). Shutdown stops the
//! accept loops first, then lets open tunnels drain for the grace period, then cuts what
//! is left.
//!
//! With systemd's fd store on (`crate::handover`), plain tunnels are relayed over their
//! own pipes and kept in the store; a SIGTERM then hands them over instead: the relays
//! stop at once, their records are rewritten, and the next process adopts them.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hakuriver_tunnel::{net::tune_tcp, relay, RequestError};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Slot};
use crate::config::{Access, Cidr, Limits, Timeouts};
use crate::directory::TaskDirectory;
use crate::error::Refusal;
use crate::fdstore::FdStore;
use crate::handover::{self, Adopted, OwnPipesTunnel, TunnelRecord};
use crate::handshake::{open_tunnel, write_refusal, Established, REFUSAL_LINGER};
use crate::metrics::{Metrics, TlsFailure, Transport};
use crate::proxy_protocol::read_header;

/// Pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS) so the loop does not spin
/// while the process is out of descriptors.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the fd store's "full" warning was logged (once per process: every tunnel
/// after it would repeat it).
static STORE_FULL_WARNED: AtomicBool = AtomicBool::new(false);

/// What a listener's connections speak first.
#[derive(Clone)]
pub enum ListenerKind {
    /// The request line straight away.
    Plain,
    /// A TLS handshake, then the request line (the acceptor's certificate resolver is
    /// reloadable).
    Tls(TlsAcceptor),
}

impl ListenerKind {
    /// `plain` or `tls`, for logs.
    pub fn name(&self) -> &'static str {
        self.transport().name()
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            ListenerKind::Plain => Transport::Plain,
            ListenerKind::Tls(_) => Transport::Tls,
        }
    }
}

/// Where a connection came from and when, for limits, logs and metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) accepted: Instant,
}

impl std::fmt::Debug for ListenerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A bound listening socket and what it speaks.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// Plain or TLS.
    pub kind: ListenerKind,
}

impl Listener {
    /// A listener for the plain protocol.
    pub fn plain(tcp: TcpListener) -> Self {
        Listener {
            tcp,
            kind: ListenerKind::Plain,
        }
    }

    /// A listener whose connections start with a TLS handshake.
    pub fn tls(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        Listener {
            tcp,
            kind: ListenerKind::Tls(acceptor),
        }
    }
}

/// Counters for logs, `STATUS=` and `/metrics`; each change wakes whoever reports status.
#[derive(Debug, Default)]
pub struct Stats {
    open_tunnels: AtomicU64,
    tunnels_opened: AtomicU64,
    refused: AtomicU64,
    changed: tokio::sync::Notify,
    pub(crate) metrics: Metrics,
}

impl Stats {
    /// A tunnel got its `SUCCESS` `setup` after accept and starts relaying.
    pub(crate) fn tunnel_opened(&self, transport: Transport, setup: Duration) {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        self.tunnels_opened.fetch_add(1, Ordering::Relaxed);
        self.metrics.tunnel_opened(transport, setup);
        self.changed.notify_one();
    }

    /// A tunnel adopted from the fd store relays again (it was counted as opened by the
    /// process that opened it).
    pub(crate) fn tunnel_adopted(&self, transport: Transport) {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        self.metrics.tunnel_adopted(transport);
        self.changed.notify_one();
    }

    /// A relaying tunnel ended (closed, failed or cut) after relaying `up` bytes from
    /// the client and `down` bytes to it.
    pub(crate) fn tunnel_closed(&self, transport: Transport, up: u64, down: u64) {
        self.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        self.metrics.tunnel_closed(transport, up, down);
        self.changed.notify_one();
    }

    /// A connection was refused, at accept or with an `ERROR` line.
    pub(crate) fn refused(&self, refusal: &Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.metrics.refused(refusal);
        self.changed.notify_one();
    }

    /// A TLS handshake failed; it counts as a refusal.
    pub(crate) fn tls_failed(&self, kind: TlsFailure) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.metrics.tls_failed(kind);
        self.changed.notify_one();
    }

    /// Tunnels currently relaying.
    pub fn open_tunnels(&self) -> u64 {
        self.open_tunnels.load(Ordering::Relaxed)
    }

    /// Tunnels opened since start.
    pub fn tunnels_opened(&self) -> u64 {
        self.tunnels_opened.load(Ordering::Relaxed)
    }

    /// Connections refused since start.
    pub fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Waits until a counter changed (at once if one changed since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// One line for `STATUS=` and logs.
    pub fn summary(&self) -> String {
        format!(
            "{} open tunnels, {} opened, {} refused",
            self.open_tunnels(),
            self.tunnels_opened(),
            self.refusals()
        )
    }
}

/// Everything a connection handler needs.
pub struct ProxyState {
    /// HakuRiver's database.
    pub directory: TaskDirectory,
    /// Per-connection timeouts.
    pub timeouts: Timeouts,
    /// Counters.
    pub stats: Stats,
    /// `[ssh_proxy.auth]` and `allow_listing`.
    pub access: Access,
    pub(crate) admission: Admission,
    pub(crate) resumables: crate::resume::Resumables,
    draining: AtomicBool,
    trusted_proxies: Vec<Cidr>,
    fd_store: FdStore,
    handing_over: AtomicBool,
    handed_over: AtomicU64,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState")
            .field("directory", &self.directory)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ProxyState {
    /// State for [`serve`].
    pub fn new(directory: TaskDirectory, timeouts: Timeouts, limits: Limits) -> Self {
        ProxyState {
            directory,
            timeouts,
            stats: Stats::default(),
            access: Access::default(),
            admission: Admission::new(limits),
            resumables: crate::resume::Resumables::new(crate::config::ResumeSettings::default()),
            draining: AtomicBool::new(false),
            trusted_proxies: Vec::new(),
            fd_store: FdStore::disabled(),
            handing_over: AtomicBool::new(false),
            handed_over: AtomicU64::new(0),
        }
    }

    /// The same state with this fd store (plain tunnels kept in it when it is on).
    pub fn with_fd_store(mut self, store: FdStore) -> Self {
        self.fd_store = store;
        self
    }

    /// systemd's fd store, for anything else that keeps descriptors across restarts.
    pub fn fd_store(&self) -> &FdStore {
        &self.fd_store
    }

    /// Makes the coming shutdown a handover: no drain, relays stop at once, kept tunnels
    /// stay in the fd store for the next process. Call before cancelling `serve`.
    pub fn hand_over(&self) {
        self.handing_over.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown is a handover (see [`ProxyState::hand_over`]).
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Relaxed)
    }

    /// Counts one tunnel left in the fd store for the next process.
    pub(crate) fn count_handover(&self) {
        self.handed_over.fetch_add(1, Ordering::Relaxed);
    }

    /// Tunnels left in the fd store for the next process by this one's handover.
    pub fn handed_over(&self) -> u64 {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// The same state with these access settings (auth mode, listing).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// `[ssh_proxy.resume]`: whether and how tunnels are made resumable.
    pub fn with_resume(mut self, settings: crate::config::ResumeSettings) -> Self {
        self.resumables = crate::resume::Resumables::new(settings);
        self
    }

    /// Peers whose connections start with a PROXY protocol header naming the client.
    pub fn with_trusted_proxies(mut self, trusted: Vec<Cidr>) -> Self {
        self.trusted_proxies = trusted;
        self
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Whether shutdown began: no new connections, open tunnels draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
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
    serve_adopting(listeners, Vec::new(), Vec::new(), state, shutdown, grace).await
}

/// [`serve`], relaying `adopted` plain tunnels (from the fd store) from the start and
/// waiting for the clients of `handed` resumable ones. A shutdown after
/// [`ProxyState::hand_over`] cuts everything at once instead of draining.
pub(crate) async fn serve_adopting(
    listeners: Vec<Listener>,
    adopted: Vec<Adopted>,
    handed: Vec<crate::resume::Handed>,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    grace: Duration,
) -> usize {
    let tracker = TaskTracker::new();
    let force = CancellationToken::new();
    resume(&state, adopted, &tracker, &force);
    // Registered before the first accept: a client may resume at once.
    resume_handed(&state, handed, &tracker, &force);
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
    state.draining.store(true, Ordering::Relaxed);
    tracker.close();
    if state.handing_over() {
        // Nothing to wait for: kept tunnels' bytes in flight are in their pipes, and a
        // restart must not keep new connections waiting.
        force.cancel();
        tracker.wait().await;
        return 0;
    }
    let open = state.stats.open_tunnels();
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

/// Relays tunnels adopted from the fd store, each in a task of its own; they count in
/// the limits and `open_tunnels` as any other.
fn resume(
    state: &Arc<ProxyState>,
    adopted: Vec<Adopted>,
    tracker: &TaskTracker,
    force: &CancellationToken,
) {
    for tunnel in adopted {
        let peer = tunnel.record.peer;
        let tunnel = match tunnel.into_tunnel() {
            Ok(tunnel) => tunnel,
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot register an adopted tunnel");
                continue;
            }
        };
        let slot = Admission::adopt(state, peer.ip());
        state.stats.tunnel_adopted(Transport::Plain);
        tracker.spawn(relay_own_pipes(slot, tunnel, force.clone()));
    }
}

/// Registers resumable tunnels handed over by the previous process and gives each its
/// task (waiting for the client's RESUME); they count in the limits as any other.
fn resume_handed(
    state: &Arc<ProxyState>,
    handed: Vec<crate::resume::Handed>,
    tracker: &TaskTracker,
    force: &CancellationToken,
) {
    for tunnel in handed {
        let peer = tunnel.record.peer;
        let registered = tunnel.meta().and_then(|meta| {
            let runner = TcpStream::from_std(tunnel.runner).map_err(|e| e.to_string())?;
            let resumable = state
                .resumables
                .restore(tunnel.snapshot, meta.transport)
                .map_err(|e| e.detail())?;
            Ok((meta, runner, resumable))
        });
        let (meta, runner, resumable) = match registered {
            Ok(parts) => parts,
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot register a handed-over resumable tunnel");
                continue;
            }
        };
        let slot = Admission::adopt(state, peer.ip());
        state.stats.tunnel_adopted(meta.transport);
        let state = Arc::clone(state);
        let force = force.clone();
        tracker.spawn(async move {
            let _slot = slot;
            crate::resume::run(state, runner, None, resumable, meta, force).await;
        });
    }
}

/// Relays a plain tunnel over its own pipes until it ends (then removes it from the fd
/// store) or shutdown cuts it (then, in a handover, leaves it there with its counts
/// written to its record), and logs how it went with the counts of its whole life.
async fn relay_own_pipes(slot: Slot, mut tunnel: OwnPipesTunnel, force: CancellationToken) {
    let state = slot.state();
    let outcome = {
        let options = relay::RelayOptions {
            idle_timeout: state.timeouts.idle,
        };
        let relayed = relay::tunnel_spliced(
            &mut tunnel.client,
            &mut tunnel.runner,
            &mut tunnel.pipes,
            options,
        );
        tokio::select! {
            outcome = relayed => Some(outcome),
            () = force.cancelled() => None,
        }
    };
    let moved = tunnel.pipes.moved();
    state
        .stats
        .tunnel_closed(Transport::Plain, moved.a_to_b, moved.b_to_a);
    let record = &mut tunnel.record;
    record.bytes_up += moved.a_to_b;
    record.bytes_down += moved.b_to_a;
    let duration_ms = handover::now_unix_ms().saturating_sub(record.started_unix_ms);
    let (task_id, peer, runner) = (&record.task_id, record.peer, &record.runner);
    let user = record.user.as_deref().map(tracing::field::display);
    if outcome.is_none() && state.handing_over() {
        if let Some(kept) = &tunnel.kept {
            record.handovers += 1;
            match kept.state.write(&*record) {
                Ok(()) => {
                    state.count_handover();
                    debug!(task_id = %record.task_id, peer = %record.peer, group = %kept.id, bytes_up = record.bytes_up, bytes_down = record.bytes_down, "tunnel handed over to the next start");
                }
                // The tunnel survives; only its counts start again from the last write.
                Err(e) => {
                    warn!(task_id = %record.task_id, error = %e, "cannot write a kept tunnel's record")
                }
            }
            return;
        }
    }
    if let Some(kept) = &tunnel.kept {
        handover::forget(&state.fd_store, kept);
    }
    match outcome {
        Some(outcome) => {
            let end = end_text(&outcome.result);
            info!(
                task_id = %task_id,
                peer = %peer,
                runner = %runner,
                user,
                bytes_up = record.bytes_up,
                bytes_down = record.bytes_down,
                duration_ms,
                handovers = record.handovers,
                end = %end,
                "tunnel closed"
            );
        }
        None => {
            info!(task_id = %task_id, peer = %peer, runner = %runner, user, duration_ms, "tunnel cut at shutdown")
        }
    }
}

/// How a relay ended, for the `end` field of a `tunnel closed` line.
pub(crate) fn end_text(result: &std::io::Result<()>) -> String {
    match result {
        Ok(()) => "closed".to_owned(),
        Err(e) => e.to_string(),
    }
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
                state.stats.metrics.accept_failed();
                warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let arrival = Arrival {
            peer,
            transport: listener.kind.transport(),
            accepted: Instant::now(),
        };
        if state.trusts(peer.ip()) {
            // The client's address is in the PROXY header: admission waits for it.
            tracker.spawn(proxied(
                Arc::clone(&state),
                stream,
                arrival,
                listener.kind.clone(),
                force.clone(),
                tracker.clone(),
            ));
            continue;
        }
        admit(&state, stream, arrival, &listener.kind, &force, &tracker);
    }
}

/// Counts `arrival` against the limits and starts its connection task, or refuses it
/// (with an `ERROR` line on plain listeners; TLS clients could not read one).
fn admit(
    state: &Arc<ProxyState>,
    stream: TcpStream,
    arrival: Arrival,
    kind: &ListenerKind,
    force: &CancellationToken,
    tracker: &TaskTracker,
) {
    match Admission::admit(state, arrival.peer.ip()) {
        Ok(slot) => {
            let connection = Connection {
                slot,
                arrival,
                force: force.clone(),
                tracker: tracker.clone(),
            };
            tracker.spawn(connection.run(stream, kind.clone()));
        }
        Err(refusal) => {
            warn!(peer = %arrival.peer, reason = %refusal, "connection refused");
            refuse(state, stream, kind, refusal, tracker);
        }
    }
}

/// Counts a refusal and, on a plain listener, sends its `ERROR` line from a task.
fn refuse(
    state: &ProxyState,
    stream: TcpStream,
    kind: &ListenerKind,
    refusal: Refusal,
    tracker: &TaskTracker,
) {
    state.stats.refused(&refusal);
    if let ListenerKind::Plain = kind {
        tracker.spawn(async move {
            let mut stream = stream;
            let _ =
                tokio::time::timeout(REFUSAL_LINGER, write_refusal(&mut stream, &refusal)).await;
        });
    }
}

/// A connection from a trusted proxy: reads its PROXY header (under the request
/// timeout), then admits the client the header names.
async fn proxied(
    state: Arc<ProxyState>,
    mut stream: TcpStream,
    mut arrival: Arrival,
    kind: ListenerKind,
    force: CancellationToken,
    tracker: TaskTracker,
) {
    let proxy = arrival.peer;
    let read = tokio::time::timeout(state.timeouts.request, read_header(&mut stream));
    let header = tokio::select! {
        header = read => header,
        () = force.cancelled() => return,
    };
    let failure = match header {
        Ok(Ok(Some(client))) => {
            arrival.peer = client;
            None
        }
        // LOCAL (or UNKNOWN): the balancer speaks for itself, e.g. a health check.
        Ok(Ok(None)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no complete PROXY header within the request timeout".to_owned()),
    };
    if let Some(why) = failure {
        warn!(proxy = %proxy, error = %why, "PROXY header refused");
        refuse(
            &state,
            stream,
            &kind,
            Refusal::Request(RequestError::Timeout),
            &tracker,
        );
        return;
    }
    admit(&state, stream, arrival, &kind, &force, &tracker);
}

/// One admitted client connection.
///
/// Its first task runs the TLS handshake (on TLS listeners) and [`open_tunnel`]. An
/// established tunnel is then relayed by a task of its own that holds only what
/// relaying needs (the two sockets, the relay's state and what its log lines name): an
/// SSH session keeps it for hours, thousands at a time.
struct Connection {
    /// The connection's place in the limits; released when the connection ends.
    slot: Slot,
    arrival: Arrival,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl Connection {
    async fn run(self, stream: TcpStream, kind: ListenerKind) {
        // No socket options to set: accepted sockets inherit TCP_NODELAY and keepalive
        // from the listener (set in `serve`).
        match kind {
            ListenerKind::Plain => {
                let established = tokio::select! {
                    established = open_tunnel(self.slot.state(), stream, self.arrival) => established,
                    () = self.force.cancelled() => return,
                };
                if let Some(established) = established {
                    if self.slot.state().fd_store.is_enabled() && established.resumable.is_none() {
                        self.relay_kept(established);
                    } else {
                        self.relay(established);
                    }
                }
            }
            // Boxed: the TLS path's state is several times the plain one's.
            ListenerKind::Tls(acceptor) => Box::pin(self.run_tls(stream, acceptor)).await,
        }
    }

    async fn run_tls(self, stream: TcpStream, acceptor: TlsAcceptor) {
        let state = self.slot.state();
        let arrival = self.arrival;
        let peer = arrival.peer;
        let established = tokio::select! {
            established = async {
                // ReadAhead: rustls reads its socket 4 KiB at a time otherwise.
                let stream = relay::ReadAhead::new(stream);
                let handshake = tokio::time::timeout(state.timeouts.tls_handshake, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => open_tunnel(state, stream, arrival).await,
                    Ok(Err(e)) => {
                        state.stats.tls_failed(TlsFailure::Error);
                        warn!(peer = %peer, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        state.stats.tls_failed(TlsFailure::Timeout);
                        warn!(peer = %peer, "TLS handshake timed out");
                        None
                    }
                }
            } => established,
            () = self.force.cancelled() => return,
        };
        if let Some(established) = established {
            self.relay(established);
        }
    }

    /// Relays an established plain tunnel over its own pipes, kept in the fd store (see
    /// `crate::handover`), in a task of its own. Without pipes it takes the pooled path
    /// (and will not survive a restart); a store that refuses it only means the same.
    fn relay_kept(self, established: Established<TcpStream>) {
        let state = self.slot.state();
        let Some(id) = handover::claim(&state.fd_store) else {
            if !STORE_FULL_WARNED.swap(true, Ordering::Relaxed) {
                warn!(
                    capacity = state.fd_store.capacity().map(tracing::field::display),
                    "the fd store is full: new tunnels will not survive a restart until some close"
                );
            }
            return self.relay(established);
        };
        let mut pipes = match relay::TunnelPipes::new() {
            Ok(pipes) => pipes,
            Err(e) => {
                state.fd_store.unclaim(id, &handover::PARTS);
                warn!(task_id = %established.task_id, error = %e, "no pipes for the fd store; this tunnel will not survive a restart");
                return self.relay(established);
            }
        };
        // Pipelined bytes go first into the pipe: nothing of the tunnel lives in memory.
        // (They are at most a request buffer, far less than a pipe holds.)
        if let Err(e) = pipes.preload(&established.pending) {
            state.fd_store.unclaim(id, &handover::PARTS);
            warn!(task_id = %established.task_id, error = %e, "cannot put pipelined bytes into the pipe; tunnel closed");
            return;
        }
        let Established {
            client,
            runner,
            task_id,
            runner_addr,
            user,
            ..
        } = established;
        let record = TunnelRecord {
            task_id: task_id.to_string(),
            peer: self.arrival.peer,
            runner: runner_addr,
            bytes_up: 0,
            bytes_down: 0,
            started_unix_ms: handover::now_unix_ms(),
            user: user.map(String::from),
            handovers: 0,
        };
        let kept = match handover::keep(&state.fd_store, id, &client, &runner, &pipes, &record) {
            Ok(kept) => Some(kept),
            Err(e) => {
                warn!(task_id = %task_id, error = %e, "cannot keep the tunnel in the fd store; it will not survive a restart");
                None
            }
        };
        let tunnel = OwnPipesTunnel {
            client,
            runner,
            pipes,
            record,
            kept,
        };
        let tracker = self.tracker.clone();
        tracker.spawn(relay_own_pipes(self.slot, tunnel, self.force));
    }

    /// Relays an established tunnel in a task of its own.
    fn relay<S>(self, mut established: Established<S>)
    where
        S: relay::Endpoint + 'static,
    {
        let tracker = self.tracker.clone();
        if let Some(resumable) = established.resumable.take() {
            let meta = crate::resume::Meta::new(
                established.task_id,
                self.arrival.peer,
                established.runner_addr,
                established.user,
                self.arrival.transport,
            );
            let Connection { slot, force, .. } = self;
            let state = Arc::clone(slot.state());
            tracker.spawn(async move {
                // The slot counts the tunnel against the limits for as long as it lives.
                let _slot = slot;
                crate::resume::run(
                    state,
                    established.runner,
                    Some(Box::new(established.client)),
                    *resumable,
                    meta,
                    force,
                )
                .await;
            });
            return;
        }
        tracker.spawn(self.relaying(established));
    }

    /// Relays until the tunnel ends (or shutdown cuts it), then logs how it went.
    fn relaying<S>(
        self,
        established: Established<S>,
    ) -> impl std::future::Future<Output = ()> + Send
    where
        S: relay::Endpoint + 'static,
    {
        let mut tunnel = established;
        // Fields are used in place (not destructured): every binding would be one more
        // slot in this long-lived task's state.
        async move {
            let state = self.slot.state();
            let started = Instant::now();
            let outcome = {
                let options = relay::RelayOptions {
                    idle_timeout: state.timeouts.idle,
                };
                let relayed = relay::tunnel(
                    &mut tunnel.client,
                    &tunnel.pending,
                    &mut tunnel.runner,
                    options,
                );
                tokio::select! {
                    outcome = relayed => Some(outcome),
                    () = self.force.cancelled() => None,
                }
            };
            let (up, down) = outcome
                .as_ref()
                .map_or((0, 0), |o| (o.stats.a_to_b, o.stats.b_to_a));
            state.stats.tunnel_closed(self.arrival.transport, up, down);
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (task_id, peer, runner) = (tunnel.task_id, self.arrival.peer, &tunnel.runner_addr);
            match outcome {
                Some(outcome) => {
                    let end = end_text(&outcome.result);
                    info!(
                        task_id = %task_id,
                        peer = %peer,
                        runner = %runner,
                        user = tunnel.user.as_deref().map(tracing::field::display),
                        bytes_up = outcome.stats.a_to_b,
                        bytes_down = outcome.stats.b_to_a,
                        duration_ms,
                        end = %end,
                        "tunnel closed"
                    );
                }
                None => {
                    info!(task_id = %task_id, peer = %peer, runner = %runner, user = tunnel.user.as_deref().map(tracing::field::display), duration_ms, "tunnel cut at shutdown")
                }
            }
        }
    }
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
        ));
        let peer = client.peer_addr().expect("peer");
        let arrival = Arrival {
            peer,
            transport: Transport::Plain,
            accepted: Instant::now(),
        };
        let connection = || Connection {
            slot: Admission::admit(&state, peer.ip()).expect("admitted"),
            arrival,
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let setup_size = std::mem::size_of_val(&connection().run(accepted, ListenerKind::Plain));
        let established = Established {
            client,
            pending: Vec::new(),
            runner,
            task_id: "1".parse().expect("id"),
            runner_addr: String::new(),
            user: None,
            resumable: None,
        };
        let relaying_size = std::mem::size_of_val(&connection().relaying(established));
        let splice_size = std::mem::size_of_val(&relay::relay_tcp(&mut a, &[], &mut b));
        eprintln!(
            "setup task {setup_size} B, relay task {relaying_size} B, splice relay {splice_size} B"
        );
        assert!(setup_size <= 1536, "setup task is {setup_size} bytes");
        assert!(relaying_size <= 512, "relay task is {relaying_size} bytes");
        assert!(splice_size <= 256, "splice relay is {splice_size} bytes");
    }
}
