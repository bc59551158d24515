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
//!
//! # Restarts
//! With systemd's fd store on, a SIGTERM hands every resumable tunnel to the next
//! process ([`adopt_all`]): its task stops relaying, and group `r<serial>` goes to the
//! store with the runner socket, a [`ResumableRecord`] and the session's [`Snapshot`]
//! (counts, key, the bytes the client has not acknowledged). The client's connection
//! cannot follow (its TLS state lives in this process), so it is closed; the client
//! resumes on the next process over a fresh connection, as after any break. The next
//! process takes the groups out of the store at once: from then on the session lives
//! in its memory, and a crash (SIGKILL) loses the bytes it held, so a crash ends
//! resumable tunnels (the runner connection closes with the process).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hakuriver_tunnel::relay::Duplex;
use hakuriver_tunnel::resume::{
    Ended, Grant, KeyPair, PublicKey, ResumeKey, ResumeRequest, Resumed, Session, SessionConfig,
    Side, Snapshot, TunnelId,
};
use hakuriver_tunnel::TaskId;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ResumeSettings;
use crate::error::Refusal;
use crate::fdstore::{self, FdStore, GroupId, StateFile, StoredGroup, RESUMABLE_TUNNEL};
use crate::handover::now_unix_ms;
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
    /// The lowest generation the next RESUME may carry (a client spends one per attempt,
    /// so it may skip some; it never goes back).
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
    /// generation is above every one seen and the proof is right. On success the
    /// generation and all below it are spent (a replayed line is stale) and the tunnel's
    /// queue is returned.
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
        if request.generation < entry.next_generation {
            return Err(Refusal::ResumeRefused(
                "stale generation (a replayed RESUME)",
            ));
        }
        if entry.transport != transport {
            return Err(Refusal::ResumeRefused(
                "the tunnel started on another transport",
            ));
        }
        entry.next_generation = request.generation.saturating_add(1);
        Ok(entry.legs.clone())
    }

    /// Registers a session handed over by the previous process (see [`adopt_all`]):
    /// RESUMEs are checked against it from now on.
    pub(crate) fn restore(
        &self,
        snapshot: Snapshot,
        transport: Transport,
    ) -> Result<Resumable, Refusal> {
        let session = Session::restore(snapshot);
        let (tx, rx) = mpsc::channel(LEG_QUEUE);
        let entry = Entry {
            key: session.key().clone(),
            next_generation: session.generation.saturating_add(1),
            transport,
            legs: tx,
        };
        self.map
            .lock()
            .map_err(|_| Refusal::Internal("resume registry poisoned".into()))?
            .insert(session.id, entry);
        Ok(Resumable { session, legs: rx })
    }

    /// The highest generation spent for tunnel `id` (claimed, if perhaps not answered).
    fn spent(&self, id: &TunnelId) -> u64 {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|e| e.next_generation.saturating_sub(1)))
            .unwrap_or(0)
    }

    fn remove(&self, id: &TunnelId) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// What a resumable tunnel's log lines name, and what carries over a restart.
pub(crate) struct Meta {
    pub(crate) task_id: TaskId,
    pub(crate) peer: SocketAddr,
    pub(crate) runner_addr: String,
    pub(crate) user: Option<Box<str>>,
    pub(crate) transport: Transport,
    /// When the tunnel opened (wall clock, ms since the Unix epoch: it spans processes).
    pub(crate) started_unix_ms: u64,
    /// Resumes and hand-overs before this process.
    pub(crate) resumes: u64,
    pub(crate) handovers: u32,
    /// For a tunnel adopted from the store: since when its client has been away.
    pub(crate) offline_since_unix_ms: Option<u64>,
}

impl Meta {
    /// A tunnel opened now.
    pub(crate) fn new(
        task_id: TaskId,
        peer: SocketAddr,
        runner_addr: String,
        user: Option<Box<str>>,
        transport: Transport,
    ) -> Self {
        Meta {
            task_id,
            peer,
            runner_addr,
            user,
            transport,
            started_unix_ms: now_unix_ms(),
            resumes: 0,
            handovers: 0,
            offline_since_unix_ms: None,
        }
    }
}

/// How a resumable tunnel ended, for its last log line.
enum End {
    Closed,
    Failed(String),
    Expired,
    Cut,
    HandedOver,
}

/// Owns one resumable tunnel until it ends: relays over the current client connection,
/// waits up to the grace period for a RESUME after it drops, closes the runner
/// connection when the tunnel is over, or hands it to the next process (a SIGTERM
/// with the fd store on). `first_leg` is `None` for a tunnel adopted from the store,
/// whose client has been away since `offline_since_unix_ms`.
pub(crate) async fn run(
    state: Arc<ProxyState>,
    mut runner: TcpStream,
    first_leg: Option<Box<dyn Duplex>>,
    resumable: Resumable,
    mut meta: Meta,
    force: CancellationToken,
) {
    let Resumable {
        mut session,
        mut legs,
    } = resumable;
    let id = session.id;
    let grace = state.resumables.settings.grace;
    let mut lost_at: Option<Instant> = match first_leg {
        Some(_) => None,
        None => {
            let away = meta
                .offline_since_unix_ms
                .map_or(0, |since| now_unix_ms().saturating_sub(since));
            let now = Instant::now();
            Some(now.checked_sub(Duration::from_millis(away)).unwrap_or(now))
        }
    };
    let mut leg = first_leg;
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
                        meta.resumes += 1;
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
            Step::Cut if state.handing_over() && state.fd_store().is_enabled() => {
                let offline_since = lost_at.map_or_else(now_unix_ms, |t| {
                    now_unix_ms().saturating_sub(t.elapsed().as_millis() as u64)
                });
                match hand_over(&state, &runner, &mut session, &meta, offline_since) {
                    Ok(group) => {
                        debug!(task_id = %meta.task_id, peer = %meta.peer, group = %group, bytes_held = session.held(), "resumable tunnel handed over to the next start");
                        break End::HandedOver;
                    }
                    Err(e) => {
                        warn!(task_id = %meta.task_id, peer = %meta.peer, error = %e, "cannot hand the resumable tunnel over; it ends here");
                        break End::Cut;
                    }
                }
            }
            Step::Cut => break End::Cut,
        }
    };
    state.resumables.remove(&id);
    let progress = session.progress();
    state
        .stats
        .tunnel_closed(meta.transport, progress.received, progress.sent);
    if matches!(end, End::HandedOver) {
        // The store holds the runner socket now: no shutdown, which would end it there
        // too. The client's connection closes; the client resumes on the next process.
        state.count_handover();
        return;
    }
    let duration_ms = now_unix_ms().saturating_sub(meta.started_unix_ms);
    let resumes = meta.resumes;
    let handovers = meta.handovers;
    let user = meta.user.as_deref().map(tracing::field::display);
    match end {
        End::Closed => {
            info!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, bytes_up = progress.received, bytes_down = progress.sent, duration_ms, resumes, handovers, end = "closed", "tunnel closed")
        }
        End::Failed(why) => {
            info!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, bytes_up = progress.received, bytes_down = progress.sent, duration_ms, resumes, handovers, end = %why, "tunnel closed")
        }
        End::Expired => {
            warn!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, bytes_up = progress.received, bytes_down = progress.sent, duration_ms, resumes, handovers, grace_secs = grace.as_secs(), "no resume within the grace period; tunnel closed")
        }
        End::Cut => {
            info!(task_id = %meta.task_id, peer = %meta.peer, runner = %meta.runner_addr, user, duration_ms, resumes, handovers, "tunnel cut at shutdown")
        }
        End::HandedOver => {}
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

/// Parts of a resumable tunnel's group in the fd store.
pub(crate) const RUNNER: &str = "runner";
/// The [`ResumableRecord`] (JSON memfd).
pub(crate) const STATE: &str = "state";
/// The session's [`Snapshot`] (raw memfd: a header, then the held bytes).
pub(crate) const SESSION: &str = "session";
/// Every part, in the order stored.
pub(crate) const PARTS: [&str; 3] = [RUNNER, STATE, SESSION];
/// Largest snapshot read back: the largest window and room for its header.
const MAX_SNAPSHOT: usize = 65 * 1024 * 1024;

/// What a handed-over resumable tunnel's log lines and counters need in the next
/// process (the session itself is the [`Snapshot`] beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumableRecord {
    pub(crate) task_id: String,
    pub(crate) peer: SocketAddr,
    pub(crate) runner: String,
    pub(crate) user: Option<String>,
    /// Whether it came over TLS (a resume must come the same way).
    pub(crate) tls: bool,
    pub(crate) started_unix_ms: u64,
    /// Since when the client has been away (the hand-over, or an earlier break).
    pub(crate) offline_since_unix_ms: u64,
    pub(crate) resumes: u64,
    pub(crate) handovers: u32,
}

/// Stores a resumable tunnel for the next process: the runner socket, its record and
/// the session's snapshot, as group `r<serial>`. Undone if any part fails.
fn hand_over(
    state: &ProxyState,
    runner: &TcpStream,
    session: &mut Session,
    meta: &Meta,
    offline_since_unix_ms: u64,
) -> io::Result<GroupId> {
    let store = state.fd_store();
    let id = GroupId {
        kind: RESUMABLE_TUNNEL,
        serial: store.next_serial(),
    };
    if !store.claim(id, &PARTS) {
        return Err(io::Error::other("the fd store is full"));
    }
    // A RESUME this process accepted but never answered spent its generation too.
    session.generation = session.generation.max(state.resumables.spent(&session.id));
    let record = ResumableRecord {
        task_id: meta.task_id.to_string(),
        peer: meta.peer,
        runner: meta.runner_addr.clone(),
        user: meta.user.as_deref().map(String::from),
        tls: matches!(meta.transport, Transport::Tls),
        started_unix_ms: meta.started_unix_ms,
        offline_since_unix_ms,
        resumes: meta.resumes,
        handovers: meta.handovers.saturating_add(1),
    };
    let stored = StateFile::create(&id.name(STATE), &record).and_then(|record| {
        let snapshot = session.snapshot();
        let snapshot = fdstore::memfd_with(&id.name(SESSION), |f| snapshot.write_to(f))?;
        store.store_group(
            id,
            &[
                (RUNNER, runner.as_fd()),
                (STATE, record.as_fd()),
                (SESSION, snapshot.as_fd()),
            ],
        )
    });
    match stored {
        Ok(()) => Ok(id),
        Err(e) => {
            store.unclaim(id, &PARTS);
            Err(e)
        }
    }
}

/// A resumable tunnel the previous process handed over, taken out of the store.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) runner: std::net::TcpStream,
    pub(crate) record: ResumableRecord,
    pub(crate) snapshot: Snapshot,
}

impl Handed {
    /// The log fields and counters it continues with.
    pub(crate) fn meta(&self) -> Result<Meta, String> {
        let r = &self.record;
        Ok(Meta {
            task_id: r
                .task_id
                .parse()
                .map_err(|e| format!("task id {:?}: {e}", r.task_id))?,
            peer: r.peer,
            runner_addr: r.runner.clone(),
            user: r.user.as_deref().map(Box::from),
            transport: if r.tls {
                Transport::Tls
            } else {
                Transport::Plain
            },
            started_unix_ms: r.started_unix_ms,
            resumes: r.resumes,
            handovers: r.handovers,
            offline_since_unix_ms: Some(r.offline_since_unix_ms),
        })
    }
}

/// Checks one passed group: every part once, a connected runner socket, a record and a
/// snapshot that read back.
fn adopt(mut group: StoredGroup) -> Result<Handed, String> {
    group.check_parts(&PARTS)?;
    let mut take = |part: &str| group.take(part).ok_or_else(|| format!("{part} missing"));
    let (runner, record, snapshot) = (take(RUNNER)?, take(STATE)?, take(SESSION)?);
    let runner = fdstore::connected_tcp(runner).map_err(|e| format!("{RUNNER}: {e}"))?;
    let record: ResumableRecord = StateFile::adopt(record)
        .and_then(|f| f.read())
        .map_err(|e| format!("{STATE}: {e}"))?;
    let snapshot = StateFile::adopt(snapshot)
        .and_then(|f| f.bytes(MAX_SNAPSHOT))
        .map_err(|e| e.to_string())
        .and_then(|bytes| Snapshot::decode(&bytes))
        .map_err(|e| format!("{SESSION}: {e}"))?;
    let handed = Handed {
        runner,
        record,
        snapshot,
    };
    handed.meta()?;
    Ok(handed)
}

/// Takes every resumable tunnel the previous process handed over out of the store
/// (from now on its session lives here), skipping broken groups with one warning line.
pub(crate) fn adopt_all(store: &FdStore, groups: Vec<StoredGroup>) -> Vec<Handed> {
    let mut handed = Vec::with_capacity(groups.len());
    for group in groups {
        let id = group.id;
        let names = group.names_with(&PARTS);
        store.adopted(id, &[]);
        store.remove_names(names);
        match adopt(group) {
            Ok(tunnel) => {
                info!(group = %id, task_id = %tunnel.record.task_id, peer = %tunnel.record.peer, runner = %tunnel.record.runner, bytes_held = tunnel.snapshot.held(), "resumable tunnel adopted from the fd store; waiting for its client");
                handed.push(tunnel);
            }
            Err(why) => {
                warn!(group = %id, error = %why, "broken resumable tunnel in the fd store; closed and removed");
            }
        }
    }
    handed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::fd::OwnedFd;

    fn group(serial: u64, fds: Vec<(&str, OwnedFd)>) -> StoredGroup {
        StoredGroup {
            id: GroupId {
                kind: RESUMABLE_TUNNEL,
                serial,
            },
            fds: fds.into_iter().map(|(p, fd)| (p.to_owned(), fd)).collect(),
        }
    }

    fn record() -> ResumableRecord {
        ResumableRecord {
            task_id: "7323718749301768192".into(),
            peer: "127.0.0.1:40000".parse().unwrap(),
            runner: "127.0.0.1:22".into(),
            user: Some("alice".into()),
            tls: true,
            started_unix_ms: 1,
            offline_since_unix_ms: 2,
            resumes: 3,
            handovers: 4,
        }
    }

    /// A granted tunnel's session, a connected socket, and the memfds a hand-over stores.
    fn parts(
        registry: &Resumables,
    ) -> (
        TunnelId,
        Vec<(&'static str, OwnedFd)>,
        std::net::TcpListener,
    ) {
        let client = KeyPair::generate().unwrap();
        let (_, granted) = registry.grant(&client.public, Transport::Tls).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let runner = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let state = StateFile::create("r1.state", &record()).unwrap();
        let snapshot = granted.session.snapshot();
        let session = fdstore::memfd_with("r1.session", |f| snapshot.write_to(f)).unwrap();
        let fds = vec![
            (RUNNER, OwnedFd::from(runner)),
            (STATE, state.as_fd().try_clone_to_owned().unwrap()),
            (SESSION, session),
        ];
        (granted.session.id, fds, listener)
    }

    #[test]
    fn a_handed_over_tunnel_reads_back_and_registers_for_resumes() {
        let old = Resumables::new(ResumeSettings::default());
        let (id, fds, _runner) = parts(&old);
        let handed = adopt(group(1, fds)).expect("adopt");
        assert_eq!(handed.record, record());
        let meta = handed.meta().unwrap();
        assert!(matches!(meta.transport, Transport::Tls));
        assert_eq!((meta.resumes, meta.handovers), (3, 4));
        let new = Resumables::new(ResumeSettings::default());
        let restored = new.restore(handed.snapshot, Transport::Tls).unwrap();
        assert_eq!(restored.session.id, id);
        assert_eq!(new.len(), 1);
        // A RESUME over the other transport is refused; the real one is checked as ever.
        let key = restored.session.key().clone();
        let request = ResumeRequest::new(&key, id, 1, 0);
        assert!(new.claim(&request, Transport::Plain).is_err());
        assert!(new.claim(&request, Transport::Tls).is_ok());
        assert!(new.claim(&request, Transport::Tls).is_err(), "replayed");
        // A later attempt may skip generations (the client spends one per attempt).
        assert!(new
            .claim(&ResumeRequest::new(&key, id, 5, 0), Transport::Tls)
            .is_ok());
        assert!(new
            .claim(&ResumeRequest::new(&key, id, 4, 0), Transport::Tls)
            .is_err());
    }

    #[test]
    fn broken_groups_are_refused_with_what_is_wrong() {
        let registry = Resumables::new(ResumeSettings::default());
        let (_, mut fds, _runner) = parts(&registry);
        fds.pop();
        let err = adopt(group(2, fds)).unwrap_err();
        assert!(err.contains("session missing"), "{err}");

        let (_, mut fds, _runner) = parts(&registry);
        fds[2].1 = fdstore::memfd_with("r3.session", |f| {
            std::io::Write::write_all(f, b"\0\0\0\x05garbage")
        })
        .unwrap();
        let err = adopt(group(3, fds)).unwrap_err();
        assert!(err.starts_with("session:"), "{err}");

        let (_, mut fds, _runner) = parts(&registry);
        let (r, _w) = rustix::pipe::pipe().unwrap();
        fds[0].1 = r;
        let err = adopt(group(4, fds)).unwrap_err();
        assert!(err.starts_with("runner:"), "{err}");
    }
}
