//! The restart workload: open plain tunnels through `systemctl restart` with systemd's
//! file-descriptor store (a SIGTERM, then the next process adopting the stored tunnels).
//!
//! Each round: a stand-in service manager ([`Manager`]) starts our proxy with the store
//! on; `n` plain tunnels are opened to the echoing runner with the raw protocol
//! (`REQUEST_TUNNEL 1\n` → `SUCCESS\n`, as HakuRiver's Python client speaks it) and each
//! echoes a probe. Then the old process gets SIGTERM and every tunnel at once a second
//! probe, written right after the signal; the manager waits for the exit and starts the
//! next process with the store. Timed from the SIGTERM: the old process's exit, the new
//! one's `READY=1`, each probe's echo. Then one brand-new tunnel, timed from connect to
//! `SUCCESS`, and everything is closed: every echo is checked byte for byte, and the
//! new process's `tunnel closed` lines must carry both probes' bytes in both directions.
//!
//! # Why not the test suite's stand-in
//! `hakuriver_ssh_tests::service_manager::ServiceManager` keeps its stored descriptors
//! while it starts the next process, passes copies, and `ProxyBuilder` duplicates those
//! once more to move them into place: 21 descriptors per tunnel in one process at that
//! moment, 21,000 for 1,000 tunnels, over a hard `RLIMIT_NOFILE` of 20,000. [`Manager`]
//! takes the same messages but hands its stored descriptors to the next process instead
//! of keeping copies (systemd keeps them): 14 per tunnel at that moment. So each round
//! restarts its proxy once; what the proxy does is the same.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hakuriver_ssh_tests::proxy::{Proxy, ProxyBuilder, Signal};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{deadline, pct, wait_accepted, Mode, Runner, Stream, Target, CONCURRENCY, STEP};

/// `FDSTORE=` as systemd ≥ 254 sets it from the shipped unit's `FileDescriptorStoreMax=`
/// (the restart tests use the same).
const FDSTORE: usize = 70_007;
/// Descriptors one plain tunnel keeps in the store.
const PER_TUNNEL: usize = 7;
/// One probe: its tunnel, round and phase, padded.
const PROBE_LEN: usize = 32;
/// How long a process may take to exit, send `READY=1` or log what is waited for.
const WAIT: Duration = Duration::from_secs(60);
/// The proxy's settings: the per-address limits out of the way (the bench runs from one
/// address: `max_connections_per_ip` must be above 0, so it is set far above the count).
const CONFIG: &str = "[ssh_proxy]\nmax_connections = 100000\nmax_connections_per_ip = 100000\n\
                      lookups_per_minute_per_ip = 0\n";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Store {
    /// `(FDNAME, fd)` in the order stored.
    fds: Vec<(String, OwnedFd)>,
    /// When each `READY=1` arrived.
    ready: Vec<Instant>,
    barrier: u64,
}

/// A stand-in for systemd: the notify socket (`READY=1`, `FDSTORE=1` with `FDNAME=`,
/// `FDSTOREREMOVE=1`), the store, and the listening socket passed to each process as
/// `plain` with the stored descriptors after it (`LISTEN_FDS`, `LISTEN_FDNAMES`,
/// `LISTEN_PID` through `ProxyBuilder::passed_fds`).
struct Manager {
    _dir: tempfile::TempDir,
    socket_path: PathBuf,
    listener: std::net::TcpListener,
    store: Arc<(Mutex<Store>, Condvar)>,
    barriers: Mutex<u64>,
}

impl Manager {
    fn new() -> Result<Manager> {
        let dir = tempfile::Builder::new()
            .prefix("hakuriver-bench-sm-")
            .tempdir()?;
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path)?;
        let store: Arc<(Mutex<Store>, Condvar)> = Arc::default();
        let receiving = Arc::clone(&store);
        std::thread::Builder::new()
            .name("bench-service-manager".into())
            .spawn(move || receive(&socket, &receiving))?;
        Ok(Manager {
            _dir: dir,
            socket_path,
            listener: std::net::TcpListener::bind("127.0.0.1:0")?,
            store,
            barriers: Mutex::new(0),
        })
    }

    fn addr(&self) -> Result<std::net::SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Starts `builder`'s daemon with the notify socket, `FDSTORE=`, the listener and the
    /// whole store (handed over: the store is empty afterwards). Returns the process
    /// and when its `READY=1` arrived.
    fn start(&self, builder: ProxyBuilder) -> Result<(Proxy, Instant)> {
        let ready_before = lock(&self.store.0).ready.len();
        let mut passed = vec![(
            OwnedFd::from(self.listener.try_clone()?),
            "plain".to_owned(),
        )];
        passed.extend(
            std::mem::take(&mut lock(&self.store.0).fds)
                .into_iter()
                .map(|(name, fd)| (fd, name)),
        );
        let proxy = builder
            .env("NOTIFY_SOCKET", &self.socket_path)
            .env("FDSTORE", FDSTORE.to_string())
            .passed_fds(passed)
            .start()?;
        let ready = self
            .wait("READY=1", |s| s.ready.get(ready_before).copied())
            .map_err(|e| e.context(format!("proxy log:\n{}", proxy.logs())))?;
        Ok((proxy, ready))
    }

    /// Waits until every message sent so far was taken in (a marker datagram queued
    /// behind them comes back).
    fn sync(&self) -> Result<()> {
        let n = {
            let mut b = lock(&self.barriers);
            *b += 1;
            *b
        };
        UnixDatagram::unbound()?
            .send_to(format!("X_BARRIER={n}\n").as_bytes(), &self.socket_path)?;
        self.wait("the barrier message", |s| (s.barrier >= n).then_some(()))
    }

    fn stored(&self) -> usize {
        lock(&self.store.0).fds.len()
    }

    fn wait<T>(&self, what: &str, done: impl Fn(&Store) -> Option<T>) -> Result<T> {
        let until = Instant::now() + WAIT;
        let (m, cond) = &*self.store;
        let mut store = lock(m);
        loop {
            if let Some(v) = done(&store) {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= until {
                bail!("service manager: no {what} within {WAIT:?}");
            }
            store = cond
                .wait_timeout(store, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        // Ends the receiving thread (and closes whatever is still stored).
        if let Ok(s) = UnixDatagram::unbound() {
            let _ = s.send_to(b"X_QUIT=1\n", &self.socket_path);
        }
    }
}

/// The notify socket's reader: one datagram at a time, with its descriptors.
fn receive(socket: &UnixDatagram, store: &(Mutex<Store>, Condvar)) {
    let mut data = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut data)];
        let Ok(msg) = rustix::net::recvmsg(
            socket.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) else {
            return;
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(passed) = message {
                fds.extend(passed);
            }
        }
        let text = String::from_utf8_lossy(&data[..msg.bytes]).into_owned();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if field("X_QUIT").is_some() {
            return;
        }
        let received = Instant::now();
        let (m, cond) = store;
        let mut s = lock(m);
        if field("READY").as_deref() == Some("1") {
            s.ready.push(received);
        }
        if let Some(n) = field("X_BARRIER").and_then(|n| n.parse().ok()) {
            s.barrier = n;
        }
        if field("FDSTORE").as_deref() == Some("1") {
            let name = field("FDNAME").unwrap_or_else(|| "stored".to_owned());
            s.fds.extend(fds.drain(..).map(|fd| (name.clone(), fd)));
        }
        if field("FDSTOREREMOVE").as_deref() == Some("1") {
            if let Some(name) = field("FDNAME") {
                s.fds.retain(|(n, _)| *n != name);
            }
        }
        // Descriptors sent without FDSTORE=1 are closed, as systemd does.
        drop(fds);
        cond.notify_all();
    }
}

/// What one round measured.
pub struct Round {
    /// SIGTERM → the old process exited.
    pub exit: Duration,
    /// The next process spawned → its `READY=1` (it adopted every tunnel before).
    pub start_to_ready: Duration,
    /// SIGTERM → the next process's `READY=1`.
    pub term_to_ready: Duration,
    /// SIGTERM → the echo of each tunnel's probe written right after it, sorted.
    pub at_term: Vec<Duration>,
    /// SIGTERM → the echo of each tunnel's probe written once the old process had
    /// exited (relayed by the next one), sorted.
    pub after_exit: Vec<Duration>,
    /// Probes written right after the SIGTERM echoed before the old process exited.
    pub echoed_by_old: usize,
    /// A new tunnel right after `READY=1`: connect → `SUCCESS`.
    pub new_tunnel: Duration,
}

/// The probe bytes of tunnel `i` in `round`: `phase` 0 before the restart, 1 right after
/// the SIGTERM, 2 once the old process has exited.
fn probe(round: usize, i: usize, phase: u8) -> [u8; PROBE_LEN] {
    let mut p = [b'.'; PROBE_LEN];
    let text = format!("r{round} t{i} p{phase} ");
    p[..text.len()].copy_from_slice(text.as_bytes());
    p[PROBE_LEN - 1] = b'\n';
    p
}

/// Writes probe `phase` on every tunnel.
async fn write_probes(writers: &mut [OwnedWriteHalf], round: usize, phase: u8) -> Result<()> {
    for (i, w) in writers.iter_mut().enumerate() {
        let p = probe(round, i, phase);
        // An idle socket takes 32 bytes at once; write_all only if it did not.
        match w.try_write(&p) {
            Ok(k) if k == PROBE_LEN => {}
            Ok(k) => w.write_all(&p[k..]).await?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => w.write_all(&p).await?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `key=<number>` in a log line.
fn field_u64(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

/// Raises the soft descriptor limit to the hard one (the proxies inherit it) and checks
/// it covers `n` tunnels here: the store's copies and the copies `ProxyBuilder` moves
/// into place (14 per tunnel at a start), the client and runner sockets (2 more).
fn fd_limit(n: usize) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).context("raising RLIMIT_NOFILE")?;
    let have = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let need = (2 * PER_TUNNEL + 2) as u64 * n as u64 + 256;
    if have < need {
        bail!("{n} tunnels need about {need} descriptors in the bench, RLIMIT_NOFILE is {have}");
    }
    Ok(())
}

/// One round: `n` tunnels, one restart. See the module comment.
async fn round(runner: &Runner, bin: &Path, db: &Path, n: usize, round: usize) -> Result<Round> {
    runner.set_mode(Mode::Echo);
    let manager = Arc::new(Manager::new()?);
    let builder = |db: &Path| Proxy::builder(db).program(bin).quiet().config(CONFIG);
    let (old, _) = manager.start(builder(db))?;
    let target = Target {
        name: "ours",
        addr: manager.addr()?,
        protocol: true,
        tls: None,
        pid: Some(old.pid()),
    };

    let accepted_before = runner.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let mut tunnels = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    let mut left = n;
    while left > 0 || !batch.is_empty() {
        while left > 0 && batch.len() < CONCURRENCY {
            let t = target.clone();
            batch.spawn(async move { deadline("restart open", STEP, t.open(false)).await });
            left -= 1;
        }
        if let Some(done) = batch.join_next().await {
            let Stream::Plain(s) = done?? else {
                bail!("a plain target gave a TLS stream");
            };
            tunnels.push(s);
        }
    }
    wait_accepted(runner, accepted_before + n as u64).await?;
    // Each tunnel echoes before the restart.
    for (i, s) in tunnels.iter_mut().enumerate() {
        s.write_all(&probe(round, i, 0)).await?;
    }
    for (i, s) in tunnels.iter_mut().enumerate() {
        let mut back = [0u8; PROBE_LEN];
        deadline("echo before the restart", STEP, async {
            Ok(s.read_exact(&mut back).await?)
        })
        .await?;
        if back != probe(round, i, 0) {
            bail!("tunnel {i}: wrong echo before the restart");
        }
    }
    manager.sync()?;
    if manager.stored() != PER_TUNNEL * n {
        bail!(
            "{} descriptors in the store for {n} tunnels",
            manager.stored()
        );
    }

    // Readers wait for the echoes of the probes written at the restart; the writers
    // are kept to send them.
    let mut writers: Vec<OwnedWriteHalf> = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for (i, s) in tunnels.into_iter().enumerate() {
        let (mut r, w) = s.into_split();
        writers.push(w);
        readers.push(tokio::spawn(async move {
            let mut at = [Instant::now(); 2];
            for (k, phase) in [1u8, 2].into_iter().enumerate() {
                let mut back = [0u8; PROBE_LEN];
                deadline("echo at the restart", WAIT, async {
                    Ok(r.read_exact(&mut back).await?)
                })
                .await?;
                at[k] = Instant::now();
                if back != probe(round, i, phase) {
                    bail!("tunnel {i}: wrong echo of probe {phase}");
                }
            }
            Ok::<([Instant; 2], OwnedReadHalf), anyhow::Error>((at, r))
        }));
    }

    // Probe 1 right after the SIGTERM (the old process may still relay it), probe 2 once
    // the old process has exited (only the next one can relay it).
    let term = Instant::now();
    old.signal(Signal::SIGTERM)?;
    write_probes(&mut writers, round, 1).await?;
    let (old, exited) = tokio::task::spawn_blocking(move || {
        let status = old.wait_exit(WAIT)?;
        let exited = Instant::now();
        if !status.success() {
            bail!("old process: {status}\n{}", old.logs());
        }
        Ok::<_, anyhow::Error>((old, exited))
    })
    .await??;
    let restarting = Arc::clone(&manager);
    let builder = builder(db);
    let starting = tokio::task::spawn_blocking(move || {
        restarting.sync()?;
        let spawned = Instant::now();
        let (new, ready) = restarting.start(builder)?;
        Ok::<_, anyhow::Error>((new, spawned, ready))
    });
    write_probes(&mut writers, round, 2).await?;
    let (new, spawned, ready) = starting.await??;
    let logs = old.logs();
    if !logs.contains("handed open tunnels over to the next start")
        || !logs.contains(&format!("tunnels={n}"))
    {
        bail!("the old process did not hand {n} tunnels over:\n{logs}");
    }
    new.wait_for_log(&format!("adopted {n} tunnels from the fd store"), WAIT)?;

    // A brand-new tunnel right after READY=1: no drain in its way.
    let started = Instant::now();
    let Stream::Plain(mut fresh) = deadline("new tunnel", STEP, target.open(false)).await? else {
        bail!("a plain target gave a TLS stream");
    };
    let new_tunnel = started.elapsed();
    fresh.write_all(&probe(round, n, 1)).await?;
    let mut back = [0u8; PROBE_LEN];
    deadline("new tunnel echo", STEP, async {
        Ok(fresh.read_exact(&mut back).await?)
    })
    .await?;
    if back != probe(round, n, 1) {
        bail!("new tunnel: wrong echo");
    }

    let mut at_term = Vec::with_capacity(n);
    let mut after_exit = Vec::with_capacity(n);
    let mut halves = Vec::with_capacity(n);
    for r in readers {
        let ([first, second], half) = r.await??;
        at_term.push(first - term);
        after_exit.push(second - term);
        halves.push(half);
    }
    at_term.sort();
    after_exit.sort();
    let exit = exited - term;
    let echoed_by_old = at_term.iter().filter(|e| **e < exit).count();

    // Close everything; the new process must log every tunnel closed with both probes'
    // bytes each way (its record carries the old process's counts).
    drop(halves);
    drop(writers);
    drop(fresh);
    let closed = |logs: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains("tunnel closed"))
            .map(str::to_owned)
            .collect()
    };
    let until = Instant::now() + WAIT;
    let lines = loop {
        let lines = closed(&new.logs());
        if lines.len() > n {
            break lines;
        }
        if Instant::now() > until {
            bail!(
                "{} of {} tunnels closed within {WAIT:?}",
                lines.len(),
                n + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let both = 3 * PROBE_LEN as u64;
    let whole = lines
        .iter()
        .filter(|l| {
            field_u64(l, "handovers") == Some(1)
                && field_u64(l, "bytes_up") == Some(both)
                && field_u64(l, "bytes_down") == Some(both)
        })
        .count();
    if whole != n {
        bail!(
            "{whole} of {n} adopted tunnels closed with {both} bytes each way:\n{}",
            lines.join("")
        );
    }
    let status = tokio::task::spawn_blocking(move || {
        new.signal(Signal::SIGTERM)?;
        new.wait_exit(WAIT)
    })
    .await??;
    if !status.success() {
        bail!("new process: {status}");
    }
    manager.sync()?;
    if manager.stored() != 0 {
        bail!("{} descriptors left in the store", manager.stored());
    }
    runner.release_all();
    Ok(Round {
        exit,
        start_to_ready: ready - spawned,
        term_to_ready: ready - term,
        at_term,
        after_exit,
        echoed_by_old,
        new_tunnel,
    })
}

/// Runs `rounds` rounds of `n` tunnels and returns their markdown table, one column a
/// round.
pub async fn section(
    runner: &Runner,
    bin: &Path,
    db: &Path,
    n: usize,
    rounds: usize,
) -> Result<String> {
    fd_limit(n)?;
    let mut done = Vec::with_capacity(rounds);
    for r in 0..rounds {
        eprintln!("restart round {r}: {n} tunnels");
        let m = round(runner, bin, db, n, r)
            .await
            .with_context(|| format!("restart round {r}"))?;
        eprintln!(
            "  exit {:.1} ms, start → READY {:.1} ms, echoes after the exit {} ms, at the SIGTERM {} ms ({} by the old process), new tunnel {:.2} ms",
            ms(m.exit),
            ms(m.start_to_ready),
            spread(&m.after_exit),
            spread(&m.at_term),
            m.echoed_by_old,
            ms(m.new_tunnel)
        );
        done.push(m);
    }
    let rows: Vec<(String, Cell)> = vec![
        (
            "SIGTERM → old process exited (ms)".into(),
            Box::new(|m| format!("{:.1}", ms(m.exit))),
        ),
        (
            format!("new process spawned → READY=1, {n} tunnels adopted (ms)"),
            Box::new(|m| format!("{:.1}", ms(m.start_to_ready))),
        ),
        (
            "SIGTERM → new process READY=1 (ms)".into(),
            Box::new(|m| format!("{:.1}", ms(m.term_to_ready))),
        ),
        (
            format!("probe written once the old process exited: SIGTERM → echo, p50 / p99 / max of {n} (ms)"),
            Box::new(|m| spread(&m.after_exit)),
        ),
        (
            "probe written right after the SIGTERM: SIGTERM → echo, p50 / p99 / max (ms)".into(),
            Box::new(|m| spread(&m.at_term)),
        ),
        (
            "of those, echoed before the old process exited".into(),
            Box::new(|m| m.echoed_by_old.to_string()),
        ),
        (
            "a new tunnel right after READY=1: connect → SUCCESS (ms)".into(),
            Box::new(|m| format!("{:.2}", ms(m.new_tunnel))),
        ),
    ];
    let mut out = format!(
        "| restart with {n} open plain tunnels | {} |\n|---|{}\n",
        (1..=rounds)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(rounds)
    );
    for (name, cell) in &rows {
        let cells: Vec<String> = done.iter().map(cell).collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    if done.is_empty() {
        return Err(anyhow!("no rounds"));
    }
    Ok(out)
}

/// `p50 / p99 / max` of sorted times, in ms.
/// One row's label and how a round fills its cell.
type Cell = Box<dyn Fn(&Round) -> String>;

fn spread(sorted: &[Duration]) -> String {
    format!(
        "{:.1} / {:.1} / {:.1}",
        pct(sorted, 0.50) / 1e3,
        pct(sorted, 0.99) / 1e3,
        sorted.last().map_or(f64::NAN, |d| ms(*d))
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
