//! The resumable-tunnel workloads (issue 14), run through the `hakuriver-ssh` library as
//! the client itself runs them: `Connector::open_any`, then `resumable::drive` (or, for a
//! tunnel opened with `--no-resume`, the plain `relay`) between the tunnel and one end of
//! a Unix socket pair. The bench reads and writes the pair's other end, where ssh's
//! pipes would be.
//!
//! - [`bulk`]: throughput, resumable next to non-resumable, plain TCP and TLS.
//! - [`idle`]: the proxy's RSS per idle tunnel, each count on a fresh proxy.
//! - [`vanish`]: clients that disappear mid-download while the runner keeps sending;
//!   what the proxy holds for them.
//! - [`stopped`]: clients that stop reading but keep their connection, while the runner
//!   trickles small writes; what the proxy holds for them.
//! - [`breaks`]: an in-bench TCP relay ([`Cutter`]) between client and proxy resets its
//!   connections; time until an echoed byte comes back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hakuriver_ssh::config::TlsSettings;
use hakuriver_ssh::transport::Transport;
use hakuriver_ssh::tunnel::{Connector, Opened, Target};
use hakuriver_tunnel::protocol::TaskRef;
use hakuriver_tunnel::relay::relay;
use hakuriver_tunnel::TaskId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{
    cpu_us, deadline, pattern, recv_pattern, rss_kib, send_pattern, wait_accepted, Mode, Runner,
    CONCURRENCY, IO_CHUNK, SEED_DOWN, SEED_UP, STEP, TASK_RUNNER,
};

/// The proxy's resume settings in every run here: the defaults, written out.
pub const RESUME_CONFIG: &str =
    "[ssh_proxy.resume]\nenable = true\ngrace_secs = 300\nbuffer_bytes = 1048576\n";
/// The window those settings give each direction.
pub const WINDOW: u64 = 1024 * 1024;
/// What a vanishing client reads before it goes.
const VANISH_AFTER: u64 = 8 * 1024 * 1024;

/// One way the client reaches the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain TCP, `--no-resume`.
    Plain,
    /// Plain TCP, resumable.
    PlainResumable,
    /// TLS, `--no-resume`.
    Tls,
    /// TLS, resumable.
    TlsResumable,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 4] = [
        Kind::Plain,
        Kind::PlainResumable,
        Kind::Tls,
        Kind::TlsResumable,
    ];

    /// The column name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::PlainResumable => "plain, resumable",
            Kind::Tls => "TLS",
            Kind::TlsResumable => "TLS, resumable",
        }
    }

    /// The name `--resume-kinds` takes.
    pub fn flag(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::PlainResumable => "plain-resumable",
            Kind::Tls => "tls",
            Kind::TlsResumable => "tls-resumable",
        }
    }

    /// Whether the client asks for a resumable tunnel.
    pub fn resumable(self) -> bool {
        matches!(self, Kind::PlainResumable | Kind::TlsResumable)
    }

    fn tls(self) -> bool {
        matches!(self, Kind::Tls | Kind::TlsResumable)
    }

    /// The non-resumable kind on the same transport.
    pub fn plain_twin(self) -> Kind {
        if self.tls() {
            Kind::Tls
        } else {
            Kind::Plain
        }
    }
}

/// Where a proxy under test listens and what to trust there.
#[derive(Clone)]
pub struct Endpoints {
    /// The plain listener.
    pub plain: SocketAddr,
    /// The TLS listener.
    pub tls: SocketAddr,
    /// The proxy's certificate fingerprint (`sha256:...`), pinned by the client.
    pub fingerprint: String,
}

/// A client as `hakuriver-ssh [--tls --fingerprint F] [--no-resume]` builds it, aimed at
/// `via` when set (the cutting relay) instead of the proxy's own listener.
pub fn connector(ends: &Endpoints, kind: Kind, via: Option<SocketAddr>) -> Result<Connector> {
    let addr = via.unwrap_or(if kind.tls() { ends.tls } else { ends.plain });
    let target = Target {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let transport = if kind.tls() {
        let settings = TlsSettings {
            enable: true,
            ca_file: None,
            fingerprints: vec![ends.fingerprint.clone()],
            server_name: None,
            known_proxies_file: None,
        };
        Transport::from_settings(&settings, &target, false).map_err(|e| anyhow!("{e}"))?
    } else {
        Transport::Plain
    };
    Ok(Connector {
        target,
        transport,
        connect_timeout: Duration::from_secs(30),
        response_timeout: Duration::from_secs(30),
        token: None,
        resume: kind.resumable(),
    })
}

fn task() -> Result<TaskRef> {
    Ok(TaskRef::Id(TaskId::try_from(TASK_RUNNER)?))
}

/// Opens a tunnel of `kind` and starts relaying it to one end of a socket pair, as the
/// client's `--stdio` mode relays it to ssh's pipes. Returns the other end and the
/// relay's task (it ends with the tunnel).
pub async fn open(
    connector: Arc<Connector>,
    kind: Kind,
) -> Result<(UnixStream, JoinHandle<Result<()>>)> {
    let opened = connector
        .open_any(&task()?)
        .await
        .map_err(|e| anyhow!("open {}: {e}", kind.name()))?;
    let (mut near, far) = UnixStream::pair()?;
    let handle = match opened {
        Opened::Plain(mut tunnel) if !kind.resumable() => tokio::spawn(async move {
            let outcome = relay(&mut tunnel, &mut near).await;
            outcome.result.context("client relay")
        }),
        Opened::Resumable(tunnel) if kind.resumable() => tokio::spawn(async move {
            hakuriver_ssh::resumable::drive(&connector, *tunnel, &mut near)
                .await
                .map_err(|e| anyhow!("client drive: {e}"))
        }),
        Opened::Plain(_) => bail!(
            "{}: the proxy did not grant a resumable tunnel",
            kind.name()
        ),
        Opened::Resumable(_) => bail!("{}: asked plainly, granted resumable", kind.name()),
    };
    Ok((far, handle))
}

/// One tunnel of `kind`, `bytes` each way at once through the client library, every byte
/// verified on both ends. Returns (MB/s both directions, the proxy's CPU ms per GB).
pub async fn bulk(
    runner: &Runner,
    ends: &Endpoints,
    kind: Kind,
    pid: u32,
    bytes: u64,
) -> Result<(f64, f64)> {
    runner.set_mode(Mode::Bulk);
    runner
        .bulk_bytes
        .store(bytes, std::sync::atomic::Ordering::SeqCst);
    let mut results = runner.bulk_results.lock().await;
    let connector = Arc::new(connector(ends, kind, None)?);
    let (far, client) = deadline("tunnel", STEP, open(connector, kind)).await?;
    let cpu_before = cpu_us(pid)?;
    let started = Instant::now();
    let work = async {
        let (mut r, mut w) = far.into_split();
        let (sent, got) = tokio::join!(
            send_pattern(&mut w, bytes, SEED_UP),
            recv_pattern(&mut r, SEED_DOWN)
        );
        sent?;
        let got = got?;
        if got != bytes {
            bail!("client received {got} of {bytes} bytes");
        }
        let up = results
            .recv()
            .await
            .ok_or_else(|| anyhow!("runner gone"))??;
        if up != bytes {
            bail!("runner received {up} of {bytes} bytes");
        }
        client.await??;
        Ok(())
    };
    deadline(
        &format!("bulk via {}", kind.name()),
        Duration::from_secs(600),
        work,
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_ms = (cpu_us(pid)? - cpu_before) / 1e3 / (2.0 * bytes as f64 / 1e9);
    Ok((2.0 * bytes as f64 / secs / 1e6, cpu_ms))
}

/// Opens `n` idle tunnels of `kind` (32 at a time), each relayed by the client library;
/// returns the proxy's RSS growth per tunnel in bytes. Run it on a fresh proxy: memory a
/// previous workload freed would be reused and hide the cost.
pub async fn idle(
    runner: &Runner,
    ends: &Endpoints,
    kind: Kind,
    pid: u32,
    n: usize,
) -> Result<f64> {
    runner.set_mode(Mode::Idle);
    let connector = Arc::new(connector(ends, kind, None)?);
    // The first tunnels pay for lazy initialisation (the DB pool, TLS tickets).
    for _ in 0..20 {
        let (far, client) = deadline("warm-up", STEP, open(Arc::clone(&connector), kind)).await?;
        drop(far);
        runner.release_all();
        deadline("warm-up close", STEP, async { client.await? }).await?;
    }
    let before_accepts = runner.accepted.load(std::sync::atomic::Ordering::SeqCst);
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    let mut left = n;
    while left > 0 || !batch.is_empty() {
        while left > 0 && batch.len() < CONCURRENCY {
            let c = Arc::clone(&connector);
            batch.spawn(async move { deadline("idle open", STEP, open(c, kind)).await });
            left -= 1;
        }
        if let Some(done) = batch.join_next().await {
            held.push(done??);
        }
    }
    wait_accepted(runner, before_accepts + n as u64).await?;
    let after = rss_kib(pid)?;
    for (far, client) in held {
        drop(far);
        client.abort();
    }
    runner.release_all();
    Ok(after.saturating_sub(before) as f64 * 1024.0 / n as f64)
}

/// `n` resumable tunnels of `kind` to a runner that sends without end; each client reads
/// [`VANISH_AFTER`] bytes (verified), then vanishes: its relay is dropped with the socket
/// (unread bytes in it: the kernel resets the connection). Waits until every runner
/// connection stops getting rid of bytes for a second. Returns (the proxy's RSS growth
/// per tunnel in bytes, bytes the runner got rid of per tunnel).
pub async fn vanish(
    runner: &Runner,
    ends: &Endpoints,
    kind: Kind,
    pid: u32,
    n: usize,
) -> Result<(f64, f64)> {
    use std::sync::atomic::Ordering::SeqCst;
    runner.set_mode(Mode::Flood);
    runner.flooded.store(0, SeqCst);
    runner.flood_stalled.store(0, SeqCst);
    let connector = Arc::new(connector(ends, kind, None)?);
    let before = rss_kib(pid)?;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let c = Arc::clone(&connector);
        tasks.push(tokio::spawn(async move {
            let (mut far, client) = deadline("vanish open", STEP, open(c, kind)).await?;
            let mut buf = vec![0u8; IO_CHUNK];
            let mut off = 0u64;
            while off < VANISH_AFTER {
                let k =
                    deadline("vanish read", STEP, async { Ok(far.read(&mut buf).await?) }).await?;
                if k == 0 {
                    bail!("tunnel ended after {off} bytes");
                }
                if !pattern::check(&buf[..k], off, SEED_DOWN) {
                    bail!("corrupt data at offset {off}");
                }
                off += k as u64;
            }
            client.abort();
            // The relay's future is dropped with its socket when the abort lands.
            let _ = client.await;
            drop(far);
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let start = Instant::now();
    while runner.flood_stalled.load(SeqCst) < n as u64 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {n} runner connections stalled within 60 s",
                runner.flood_stalled.load(SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = rss_kib(pid)?;
    let sent = runner.flooded.load(SeqCst) as f64 / n as f64;
    runner.release_all();
    Ok((
        after.saturating_sub(before) as f64 * 1024.0 / n as f64,
        sent,
    ))
}

/// `n` resumable tunnels of `kind` whose clients stop reading after the grant but keep
/// their connection open (a suspended laptop, a path that went black), while the runner
/// writes 512 bytes a millisecond apart, up to the window and 256 KiB more. Returns (the
/// proxy's RSS growth per tunnel in bytes, bytes the runner got rid of per tunnel).
pub async fn stopped(
    runner: &Runner,
    ends: &Endpoints,
    kind: Kind,
    pid: u32,
    n: usize,
) -> Result<(f64, f64)> {
    use std::sync::atomic::Ordering::SeqCst;
    runner.set_mode(Mode::Trickle);
    runner.bulk_bytes.store(WINDOW + 256 * 1024, SeqCst);
    runner.flooded.store(0, SeqCst);
    runner.flood_stalled.store(0, SeqCst);
    let connector = connector(ends, kind, None)?;
    let before = rss_kib(pid)?;
    let mut held = Vec::new();
    for _ in 0..n {
        match deadline("stopped open", STEP, async {
            connector
                .open_any(&task()?)
                .await
                .map_err(|e| anyhow!("open {}: {e}", kind.name()))
        })
        .await?
        {
            // Never driven: nothing reads the connection, nothing is acknowledged.
            Opened::Resumable(tunnel) => held.push(tunnel),
            Opened::Plain(_) => bail!("{}: not granted resumable", kind.name()),
        }
    }
    let start = Instant::now();
    while runner.flood_stalled.load(SeqCst) < n as u64 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} of {n} trickling runner connections done within 60 s",
                runner.flood_stalled.load(SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The proxy takes the last pieces right after they are written; settled once two
    // readings 200 ms apart agree.
    let mut after = rss_kib(pid)?;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(pid)?;
        if now == after {
            break;
        }
        after = now;
    }
    let sent = runner.flooded.load(SeqCst) as f64 / n as f64;
    drop(held);
    runner.release_all();
    Ok((
        after.saturating_sub(before) as f64 * 1024.0 / n as f64,
        sent,
    ))
}

/// A TCP relay between client and proxy whose connections can all be reset at once
/// (a NAT forgetting its mappings, a middlebox restarting); its listener stays up.
pub struct Cutter {
    /// Where clients connect.
    pub addr: SocketAddr,
    live: Arc<Mutex<Vec<oneshot::Sender<oneshot::Sender<()>>>>>,
}

impl Cutter {
    /// Relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Cutter> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let live: Arc<Mutex<Vec<oneshot::Sender<oneshot::Sender<()>>>>> = Arc::default();
        let registry = Arc::clone(&live);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (kill, killed) = oneshot::channel();
                if let Ok(mut l) = registry.lock() {
                    l.push(kill);
                }
                tokio::spawn(pipe(client, upstream, killed));
            }
        });
        Ok(Cutter { addr, live })
    }

    /// Resets every connection relayed now, both sides (RST), and returns once they are
    /// closed: nothing sent after this can travel on them.
    pub async fn cut(&self) -> Result<usize> {
        let live = std::mem::take(&mut *self.live.lock().map_err(|_| anyhow!("poisoned"))?);
        let mut acks = Vec::new();
        for kill in live {
            let (ack, acked) = oneshot::channel();
            if kill.send(ack).is_ok() {
                acks.push(acked);
            }
        }
        let n = acks.len();
        for a in acks {
            // A pipe that ended on its own meanwhile drops the ack: closed as well.
            let _ = deadline("cut", STEP, async { Ok(a.await) }).await?;
        }
        Ok(n)
    }
}

async fn pipe(
    mut client: TcpStream,
    upstream: SocketAddr,
    killed: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        ack = killed => {
            for s in [&client, &server] {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
            drop(client);
            drop(server);
            if let Ok(ack) = ack {
                let _ = ack.send(());
            }
        }
    }
}

/// A resumable tunnel of `kind` to the echoing runner through a [`Cutter`]; `n` times:
/// check a byte echoes, reset the relay's connections, send a byte and time until its
/// echo is back. Returns the sorted times.
pub async fn breaks(
    runner: &Runner,
    ends: &Endpoints,
    kind: Kind,
    n: usize,
) -> Result<Vec<Duration>> {
    runner.set_mode(Mode::Echo);
    let upstream = if kind.tls() { ends.tls } else { ends.plain };
    let cutter = Cutter::start(upstream).await?;
    let connector = Arc::new(connector(ends, kind, Some(cutter.addr))?);
    let (mut far, client) = deadline("break open", STEP, open(connector, kind)).await?;
    let mut probe = 0u8;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        probe = probe.wrapping_add(1);
        deadline("echo before the break", STEP, echo(&mut far, probe)).await?;
        let started = Instant::now();
        let cut = cutter.cut().await?;
        if cut != 1 {
            bail!("{cut} connections through the relay, expected 1");
        }
        probe = probe.wrapping_add(1);
        deadline("echo after the break", STEP, echo(&mut far, probe)).await?;
        times.push(started.elapsed());
    }
    drop(far);
    runner.release_all();
    deadline("break close", STEP, async { client.await? }).await?;
    times.sort();
    Ok(times)
}

/// Sends one byte through the tunnel and waits for the runner's echo of it.
async fn echo(far: &mut UnixStream, probe: u8) -> Result<()> {
    far.write_all(&[probe]).await?;
    let mut back = [0u8; 1];
    far.read_exact(&mut back).await?;
    if back[0] != probe {
        bail!("echo {} for {probe}", back[0]);
    }
    Ok(())
}

/// What the section runs, from the command line.
pub struct Options {
    /// MiB each way in the bulk runs.
    pub bulk_mb: u64,
    /// Idle tunnels per kind.
    pub idle: usize,
    /// Vanishing clients per resumable kind.
    pub vanish: usize,
    /// Breaks per resumable kind.
    pub breaks: usize,
    /// Interleaved bulk rounds (direct and every kind in turn); medians are reported.
    pub rounds: usize,
    /// The kinds to run (by [`Kind::flag`]); all when empty.
    pub kinds: Vec<String>,
    /// Workloads left out: `resume-bulk`, `resume-idle`, `resume-vanish`, `resume-stopped`,
    /// `resume-breaks`.
    pub skip: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A fresh proxy with resumable tunnels on (the defaults, written out) and the
/// per-address limits off, and how the client reaches it.
fn fresh_proxy(bin: &std::path::Path, db: &std::path::Path) -> Result<(super::Ours, Endpoints)> {
    let ours = super::start_ours(bin, db, RESUME_CONFIG)?;
    let ends = Endpoints {
        plain: ours.proxy.addr(),
        tls: ours.proxy.tls_addr(),
        fingerprint: ours.fingerprint.to_string(),
    };
    Ok((ours, ends))
}

/// Runs the issue-14 workloads and returns their markdown table.
pub async fn section(
    runner: &Runner,
    bin: &std::path::Path,
    db: &std::path::Path,
    o: &Options,
) -> Result<String> {
    let run = |w: &str| !o.skip.iter().any(|x| x == w);
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| o.kinds.is_empty() || o.kinds.iter().any(|f| f == k.flag()))
        .collect();
    let rows = [
        format!(
            "bulk {} MiB each way at once through the client library, MB/s (both directions), median of {}",
            o.bulk_mb, o.rounds
        ),
        "bulk, resumable ÷ non-resumable on the same transport (medians; each round)".to_owned(),
        "bulk: proxy CPU per GB relayed, user+sys (ms), median".to_owned(),
        format!("idle RSS per tunnel, {} tunnels, fresh proxy (bytes)", o.idle),
        format!(
            "{} clients vanished mid-download: proxy RSS growth per tunnel (KiB)",
            o.vanish
        ),
        "vanished clients: bytes the runner got rid of per tunnel (MiB)".to_owned(),
        format!(
            "{} clients that stop reading (connection open), runner writing 512 B per ms: proxy RSS growth per tunnel (KiB)",
            o.vanish
        ),
        "stopped clients: bytes the runner got rid of per tunnel (MiB)".to_owned(),
        format!("break → an echoed byte back, p50 of {} (ms)", o.breaks),
        format!("break → an echoed byte back, p99 of {} (ms)", o.breaks),
    ];
    let columns: Vec<&str> = std::iter::once("direct")
        .chain(Kind::ALL.iter().map(|k| k.name()))
        .collect();
    let mut cells = std::collections::BTreeMap::<(usize, &str), String>::new();

    if run("resume-bulk") {
        let bytes = o.bulk_mb * 1024 * 1024;
        let direct = super::Target {
            name: "direct",
            addr: runner.addr,
            protocol: false,
            tls: None,
            pid: None,
        };
        // Started after the first direct run, so a profiler that waits for the proxy
        // (bench/profile.sh) records the tunnels only.
        let mut proxy = None;
        let mut mbs = std::collections::BTreeMap::<&str, Vec<f64>>::new();
        let mut cpu = std::collections::BTreeMap::<&str, Vec<f64>>::new();
        for round in 0..o.rounds {
            eprintln!("resume bulk round {round}: direct");
            let (d, _) = super::bulk(runner, &direct, bytes).await?;
            eprintln!("  {d:.0} MB/s");
            mbs.entry("direct").or_default().push(d);
            if proxy.is_none() {
                proxy = Some(fresh_proxy(bin, db)?);
            }
            let Some((ours, ends)) = &proxy else {
                bail!("no proxy");
            };
            for &kind in &kinds {
                eprintln!("resume bulk round {round}: {}", kind.name());
                let (v, c) = bulk(runner, ends, kind, ours.proxy.pid(), bytes).await?;
                eprintln!("  {v:.0} MB/s, proxy CPU {c:.0} ms/GB");
                mbs.entry(kind.name()).or_default().push(v);
                cpu.entry(kind.name()).or_default().push(c);
            }
        }
        let d = median(&mbs["direct"]);
        cells.insert((0, "direct"), format!("{d:.0}"));
        for &kind in &kinds {
            let v = median(&mbs[kind.name()]);
            cells.insert((0, kind.name()), format!("{v:.0} ({:.2}×)", v / d));
            cells.insert(
                (2, kind.name()),
                format!("{:.0}", median(&cpu[kind.name()])),
            );
            if let (true, Some(twin)) = (kind.resumable(), mbs.get(kind.plain_twin().name())) {
                let each: Vec<String> = mbs[kind.name()]
                    .iter()
                    .zip(twin)
                    .map(|(r, p)| format!("{:.2}", r / p))
                    .collect();
                cells.insert(
                    (1, kind.name()),
                    format!("{:.2}× ({})", v / median(twin), each.join(", ")),
                );
            }
        }
    }
    if run("resume-idle") {
        for &kind in &kinds {
            let (ours, ends) = fresh_proxy(bin, db)?;
            eprintln!("resume idle: {} x{}", kind.name(), o.idle);
            let per = idle(runner, &ends, kind, ours.proxy.pid(), o.idle).await?;
            eprintln!("  {per:.0} bytes/tunnel");
            cells.insert((3, kind.name()), format!("{per:.0}"));
        }
    }
    if run("resume-vanish") {
        for &kind in kinds.iter().filter(|k| k.resumable()) {
            let (ours, ends) = fresh_proxy(bin, db)?;
            eprintln!("resume vanish: {} x{}", kind.name(), o.vanish);
            let (per, sent) = vanish(runner, &ends, kind, ours.proxy.pid(), o.vanish).await?;
            eprintln!(
                "  {:.0} KiB/tunnel (window {} KiB), runner sent {:.1} MiB each",
                per / 1024.0,
                WINDOW / 1024,
                sent / 1048576.0
            );
            cells.insert((4, kind.name()), format!("{:.0}", per / 1024.0));
            cells.insert((5, kind.name()), format!("{:.1}", sent / 1048576.0));
        }
    }
    if run("resume-stopped") {
        for &kind in kinds.iter().filter(|k| k.resumable()) {
            let (ours, ends) = fresh_proxy(bin, db)?;
            eprintln!("resume stopped: {} x{}", kind.name(), o.vanish);
            let (per, sent) = stopped(runner, &ends, kind, ours.proxy.pid(), o.vanish).await?;
            eprintln!(
                "  {:.0} KiB/tunnel (window {} KiB), runner sent {:.2} MiB each",
                per / 1024.0,
                WINDOW / 1024,
                sent / 1048576.0
            );
            cells.insert((6, kind.name()), format!("{:.0}", per / 1024.0));
            cells.insert((7, kind.name()), format!("{:.2}", sent / 1048576.0));
        }
    }
    if run("resume-breaks") {
        let (_ours, ends) = fresh_proxy(bin, db)?;
        for &kind in kinds.iter().filter(|k| k.resumable()) {
            eprintln!("resume breaks: {} x{}", kind.name(), o.breaks);
            let times = breaks(runner, &ends, kind, o.breaks).await?;
            let (p50, p99) = (
                super::pct(&times, 0.50) / 1e3,
                super::pct(&times, 0.99) / 1e3,
            );
            eprintln!("  p50 {p50:.2} ms, p99 {p99:.2} ms");
            cells.insert((8, kind.name()), format!("{p50:.2}"));
            cells.insert((9, kind.name()), format!("{p99:.2}"));
        }
    }

    let mut out = format!(
        "| workload | {} |\n|---|{}\n",
        columns.join(" | "),
        "---|".repeat(columns.len())
    );
    for (i, row) in rows.iter().enumerate() {
        if !columns.iter().any(|c| cells.contains_key(&(i, c))) {
            continue;
        }
        let line: Vec<String> = columns
            .iter()
            .map(|c| cells.get(&(i, c)).cloned().unwrap_or_else(|| "n/a".into()))
            .collect();
        out.push_str(&format!("| {row} | {} |\n", line.join(" | ")));
    }
    Ok(out)
}
