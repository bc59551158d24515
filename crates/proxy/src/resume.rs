//! Resumable tunnels on the Host's side: granting them, checking RESUME requests, and
//! the task that owns each one for its whole life.
//!
//! A resumable tunnel's task holds the runner connection and the [`Session`] (the bytes
//! the client has not acknowledged, the counts). When the client's connection drops,
//! the task keeps both for `[ssh_proxy.resume] grace_secs` and waits for a RESUME; the
//! handshake of the new connection checks the proof against the registry here and hands
//! the connection to the task, which answers `RESUMED` and continues. A refused resume
//! (no such tunnel, wrong proof, stale generation, other transport) never reaches the
//! task, so it cannot disturb the real tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hakuriver_tunnel::relay::Duplex;
use hakuriver_tunnel::resume::{
    Ended, Grant, KeyPair, PublicKey, ResumeKey, ResumeRequest, Resumed, Session, SessionConfig,
    Side, TunnelId,
};
use hakuriver_tunnel::TaskId;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ResumeSettings;
use crate::error::Refusal;
use crate::metrics::Transport;
use crate::server::ProxyState;

/// How long an ABORT or a RESUMED line may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Resumes that may queue for one tunnel before further ones are refused.
const LEG_QUEUE: usize = 2;

/// A client connection handed to a tunnel's task by a RESUME.
pub(crate) struct NewLeg {
    /// The connection, its RESUME line read.
    pub(crate) leg: Box<dyn Duplex>,
    /// The resume's generation (checked already).
    pub(crate) generation: u64,
    /// What the client said it has received.
    pub(crate) received: u64,
    /// Where it came from.
    pub(crate) peer: SocketAddr,
}

/// One tunnel in the registry: what a RESUME is checked against, and where its
/// connection goes.
struct Entry {
    key: ResumeKey,
    /// The generation the next RESUME must carry.
    next_generation: u64,
    transport: Transport,
    legs: mpsc::Sender<NewLeg>,
}

/// The resumable tunnels this process holds.
pub(crate) struct Resumables {
    settings: ResumeSettings,
    map: Mutex<HashMap<TunnelId, Entry>>,
}

impl std::fmt::Debug for Resumables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumables")
            .field("settings", &self.settings)
            .field("tunnels", &self.len())
            .finish()
    }
}

/// A granted tunnel's session and the queue its resumed connections arrive on.
pub(crate) struct Resumable {
    pub(crate) session: Session,
    pub(crate) legs: mpsc::Receiver<NewLeg>,
}

impl Resumables {
    pub(crate) fn new(settings: ResumeSettings) -> Self {
        Resumables {
            settings,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Whether tunnels are granted at all.
    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Tunnels held now (relaying or waiting for a resume).
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            window: self.settings.window,
            ..SessionConfig::default()
        }
    }

    /// Makes a tunnel resumable for a client that offered `client_key`: the grant to
    /// send and the tunnel's session.
    pub(crate) fn grant(
        &self,
        client_key: &PublicKey,
        transport: Transport,
    ) -> Result<(Grant, Resumable), Refusal> {
        let crypto = |_| Refusal::Internal("resume key agreement failed".into());
        let id = TunnelId::random().map_err(crypto)?;
        let host = KeyPair::generate().map_err(crypto)?;
        let host_public = host.public;
        let key = host
            .agree(client_key, &id, client_key, &host_public)
            .map_err(crypto)?;
        let (tx, rx) = mpsc::channel(LEG_QUEUE);
        let entry = Entry {
            key: key.clone(),
            next_generation: 1,
            transport,
            legs: tx,
        };
        self.map
            .lock()
            .map_err(|_| Refusal::Internal("resume registry poisoned".into()))?
            .insert(id, entry);
        let grant = Grant {
            id,
            key: host_public,
            grace_secs: self.settings.grace.as_secs(),
            window: self.settings.window as u64,
        };
        let session = Session::new(id, key, self.session_config());
        Ok((grant, Resumable { session, legs: rx }))
    }

    /// Checks a RESUME: the tunnel exists, the transport is the one it started on, the
    /// generation is the next one and the proof is right. On success the generation is
    /// spent (a replayed line is stale) and the tunnel's queue is returned.
    pub(crate) fn claim(
        &self,
        request: &ResumeRequest,
        transport: Transport,
    ) -> Result<mpsc::Sender<NewLeg>, Refusal> {
        let mut map = self
            .map
            .lock()
            .map_err(|_| Refusal::Internal("resume registry poisoned".into()))?;
        let entry = map.get_mut(&request.id).ok_or(Refusal::ResumeUnknown)?;
        if !entry.key.verify(
            Side::Client,
            &request.id,
            request.generation,
            request.received,
            &request.proof,
        ) {
            return Err(Refusal::ResumeRefused("wrong proof or stale generation"));
        }
        if request.generation != entry.next_generation {
            return Err(Refusal::ResumeRefused(
                "stale generation (a replayed RESUME)",
            ));
        }
        if entry.transport != transport {
            return Err(Refusal::ResumeRefused(
                "the tunnel started on another transport",
            ));
        }
        entry.next_generation += 1;
        Ok(entry.legs.clone())
    }

    fn remove(&self, id: &TunnelId) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// What a resumable tunnel's log lines name.
pub(crate) struct Meta {
    pub(crate) task_id: TaskId,
    pub(crate) peer: SocketAddr,
    pub(crate) runner_addr: String,
    pub(crate) user: Option<Box<str>>,
    pub(crate) transport: Transport,
}

/// How a resumable tunnel ended, for its last log line.
enum End {
    Closed,
    Failed(String),
    Expired,
    Cut,
}

/// Owns one resumable tunnel until it ends: relays over the current client connection,
/// waits up to the grace period for a RESUME after it drops, closes the runner
/// connection when the tunnel is over.
pub(crate) async fn run(
    state: Arc<ProxyState>,
    mut runner: TcpStream,
    first_leg: Box<dyn Duplex>,
    resumable: Resumable,
    meta: Meta,
    force: CancellationToken,
) {
    let Resumable {
        mut session,
        mut legs,
    } = resumable;
    let id = session.id;
    let grace = state.resumables.settings.grace;
    let started = Instant::now();
    let mut leg = Some(first_leg);
    let mut lost_at: Option<Instant> = None;
    let mut resumes = 0u64;
    let end = loop {
        let next = match leg.as_mut() {
            Some(current) => {
                tokio::select! {
                    ended = session.run(&mut runner, current) => Step::Ended(ended),
                    new = legs.recv() => Step::NewLeg(new),
                    () = force.cancelled() => Step::Cut,
                }
            }
            None => {
                let deadline = lost_at.unwrap_or_else(Instant::now) + grace;
                tokio::select! {
                    new = legs.recv() => Step::NewLeg(new),
                    () = tokio::time::sleep_until(deadline) => Step::Expired,
                    () = force.cancelled() => Step::Cut,
                }
            }
        };
        match next {
            Step::Ended(Ended::Finished) => break End::Closed,
            Step::Ended(Ended::LegLost(e)) => {
                info!(task_id = %meta.task_id, peer = %meta.peer, error = %e, grace_secs = grace.as_secs(), "client connection lost; holding the tunnel for a resume");
                leg = None;
                lost_at = Some(Instant::now());
            }
            Step::Ended(Ended::Local(e)) => {
                let reason = format!("the VPS connection failed: {e}");
                if let Some(current) = leg.as_mut() {
                    session.abort(current, &reason, WRITE_TIMEOUT).await;
                }
                break End::Failed(reason);
            }
            Step::Ended(Ended::PeerAborted(reason)) => {
                break End::Failed(format!("the client ended it: {reason}"))
            }
            Step::Ended(Ended::Protocol(why)) => {
                let reason = format!("protocol error: {why}");
                if let Some(current) = leg.as_mut() {
                    session.abort(current, &reason, WRITE_TIMEOUT).await;
                }
                break End::Failed(reason);
            }
            Step::NewLeg(None) => break End::Failed("resume queue closed".into()),
            Step::NewLeg(Some(new)) => {
                let offline_ms = lost_at.map_or(0, |t| t.elapsed().as_millis() as u64);
                match continue_on(&mut session, new).await {
                    Ok((new_leg, replayed, peer)) => {
                        resumes += 1;
                        info!(task_id = %meta.task_id, peer = %peer, generation = session.generation, bytes_replayed = replayed, offline_ms, "tunnel resumed");
                        leg = Some(new_leg);
                        lost_at = None;
                    }
                    Err(Some(why)) => break End::Failed(why),
                    // The new connection failed before RESUMED went out: keep waiting.
                    Err(None) => {
                        leg = None;
                        lost_at.get_or_insert_with(Instant::now);
                    }
                }
            }
            Step::Expired => break End::Expired,
            Step::Cut => break End::Cut,
        }
    };
    state.resumables.remove(&id);
    let progress = session.progress();
    state
        .stats
        .tunnel_closed(meta.transport, progress.received, progress.sent);
    let duration_ms = started.elapsed().as_millis() as u64;
    let user = meta.user.as_deref().map(tracing::field::display);
    match end {
        End::Closed => {
            info!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, bytes_up = progress.received, bytes_down = progress.sent, duration_ms, resumes, end = "closed", "tunnel closed")
        }
        End::Failed(why) => {
            info!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, bytes_up = progress.received, bytes_down = progress.sent, duration_ms, resumes, end = %why, "tunnel closed")
        }
        End::Expired => {
            warn!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, bytes_up = progress.received, bytes_down = progress.sent, duration_ms, resumes, grace_secs = grace.as_secs(), "no resume within the grace period; tunnel closed")
        }
        End::Cut => {
            info!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, duration_ms, resumes, "tunnel cut at shutdown")
        }
    }
    let _ = runner.shutdown().await;
}

enum Step {
    Ended(Ended),
    NewLeg(Option<NewLeg>),
    Expired,
    Cut,
}

/// Answers a checked RESUME on its connection: `RESUMED` with our count, then the
/// session continues there. `Err(None)`: that connection failed (wait for another);
/// `Err(Some(why))`: the counts cannot continue the stream, the tunnel is over.
async fn continue_on(
    session: &mut Session,
    new: NewLeg,
) -> Result<(Box<dyn Duplex>, u64, SocketAddr), Option<String>> {
    let NewLeg {
        mut leg,
        generation,
        received,
        peer,
    } = new;
    let replayed = match session.resume_from(received) {
        Ok(replayed) => replayed,
        Err(mismatch) => {
            let line = hakuriver_tunnel::Response::Error(format!("Resume refused: {mismatch}."));
            let _ = tokio::time::timeout(WRITE_TIMEOUT, leg.write_all(&line.encode())).await;
            return Err(Some(format!("resume from {peer} impossible: {mismatch}")));
        }
    };
    session.generation = generation;
    let ours = session.received();
    let reply = Resumed {
        received: ours,
        proof: session
            .key()
            .proof(Side::Host, &session.id, generation, ours),
    };
    let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
        leg.write_all(&reply.encode()).await?;
        leg.flush().await
    })
    .await;
    match sent {
        Ok(Ok(())) => Ok((leg, replayed, peer)),
        _ => Err(None),
    }
}
