//! Accept loops, the per-connection lifecycle and drain.
//!
//! Nothing slow runs on an accept loop: each connection gets its own task, where the
//! TLS handshake, the request read, the lookup (on the blocking pool) and the runner
//! connect each run under their own timeout (`handshake`). Shutdown stops the
//! accept loops first, then lets open tunnels drain for the grace period, then cuts what
//! is left.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hakuriver_tunnel::{net::tune_tcp, relay};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admission::{Admission, Slot};
use crate::config::{Access, Limits, Timeouts};
use crate::directory::TaskDirectory;
use crate::handshake::{open_tunnel, write_refusal, Established, REFUSAL_LINGER};

/// Pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS) so the loop does not spin
/// while the process is out of descriptors.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

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
        match self {
            ListenerKind::Plain => "plain",
            ListenerKind::Tls(_) => "tls",
        }
    }
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

/// Counters for logs and `STATUS=`; each change wakes whoever reports status.
#[derive(Debug, Default)]
pub struct Stats {
    open_tunnels: AtomicU64,
    tunnels_opened: AtomicU64,
    refused: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Stats {
    /// A tunnel got its `SUCCESS` and starts relaying.
    pub fn tunnel_opened(&self) {
        self.open_tunnels.fetch_add(1, Ordering::Relaxed);
        self.tunnels_opened.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A relaying tunnel ended (closed, failed or cut).
    pub fn tunnel_closed(&self) {
        self.open_tunnels.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A connection was refused: at accept, in the TLS handshake or with an `ERROR` line.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
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
        }
    }

    /// The same state with these access settings (auth mode, listing).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
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
        match Admission::admit(&state, peer.ip()) {
            Ok(slot) => {
                let connection = Connection {
                    slot,
                    peer,
                    force: force.clone(),
                    tracker: tracker.clone(),
                };
                tracker.spawn(connection.run(stream, listener.kind.clone()));
            }
            Err(refusal) => {
                state.stats.refused();
                warn!(peer = %peer, reason = %refusal, "connection refused");
                if let ListenerKind::Plain = listener.kind {
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
/// Its first task runs the TLS handshake (on TLS listeners) and [`open_tunnel`]. An
/// established tunnel is then relayed by a task of its own that holds only what
/// relaying needs (the two sockets, the relay's state and what its log lines name): an
/// SSH session keeps it for hours, thousands at a time.
struct Connection {
    /// The connection's place in the limits; released when the connection ends.
    slot: Slot,
    peer: SocketAddr,
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
                    established = open_tunnel(self.slot.state(), stream, self.peer, false) => established,
                    () = self.force.cancelled() => return,
                };
                if let Some(established) = established {
                    self.relay(established);
                }
            }
            // Boxed: the TLS path's state is several times the plain one's.
            ListenerKind::Tls(acceptor) => Box::pin(self.run_tls(stream, acceptor)).await,
        }
    }

    async fn run_tls(self, stream: TcpStream, acceptor: TlsAcceptor) {
        let state = self.slot.state();
        let peer = self.peer;
        let established = tokio::select! {
            established = async {
                // ReadAhead: rustls reads its socket 4 KiB at a time otherwise.
                let stream = relay::ReadAhead::new(stream);
                let handshake = tokio::time::timeout(state.timeouts.tls_handshake, acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => open_tunnel(state, stream, peer, true).await,
                    Ok(Err(e)) => {
                        state.stats.refused();
                        warn!(peer = %peer, error = %e, "TLS handshake failed");
                        None
                    }
                    Err(_) => {
                        state.stats.refused();
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

    /// Relays an established tunnel in a task of its own.
    fn relay<S>(self, established: Established<S>)
    where
        S: relay::Endpoint + 'static,
    {
        let tracker = self.tracker.clone();
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
            state.stats.tunnel_closed();
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (task_id, peer, runner) = (tunnel.task_id, self.peer, &tunnel.runner_addr);
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
        let connection = || Connection {
            slot: Admission::admit(&state, peer.ip()).expect("admitted"),
            peer,
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
