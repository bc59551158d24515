//! The restart workload: open plain tunnels through `systemctl restart` with systemd's
//! file-descriptor store (a SIGTERM, then the next process adopting the stored tunnels).
//!
//! Each round: a stand-in service manager starts our proxy with the store
//! on; `n` plain tunnels are opened to the echoing runner with the raw protocol
//! (`REQUEST_TUNNEL 1\n` → `SUCCESS\n`, as HakuRiver's Python client speaks it) and each
//! echoes a probe. Then the old process gets SIGTERM and every tunnel at once a second
//! probe, written right after the signal; the manager waits for the exit and starts the
//! next process with the store. Timed from the SIGTERM: the old process's exit, the new
//! one's `READY=1`, each probe's echo. Then one brand-new tunnel, timed from connect to
//! `SUCCESS`, and everything is closed: every echo is checked byte for byte, and the
//! new process's `tunnel closed` lines must carry both probes' bytes in both directions.
//!
//! # Descriptors
//! The stand-in is the test suite's (`hakuriver_ssh_tests::service_manager`), started
//! with `start_handing_over`: it moves its stored descriptors to the next process
//! instead of keeping copies (systemd keeps them outside our table). With copies, one
//! process would hold 21 descriptors per tunnel at that moment (the store, the copies,
//! `ProxyBuilder`'s own to move them into place), 21,000 for 1,000 tunnels, over a hard
//! `RLIMIT_NOFILE` of 20,000; moved, 14. So each round restarts its proxy once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hakuriver_ssh_tests::proxy::{Proxy, Signal};
use hakuriver_ssh_tests::service_manager::ServiceManager;
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
    let manager = Arc::new(ServiceManager::new(Some(FDSTORE))?);
    let builder = |db: &Path| Proxy::builder(db).program(bin).quiet().config(CONFIG);
    let (old, _) = manager.start_handing_over(builder(db))?;
    let target = Target {
        name: "ours",
        addr: manager.addr(),
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
    if manager.stored_count() != PER_TUNNEL * n {
        bail!(
            "{} descriptors in the store for {n} tunnels",
            manager.stored_count()
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
        let (new, ready) = restarting.start_handing_over(builder)?;
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
    if manager.stored_count() != 0 {
        bail!("{} descriptors left in the store", manager.stored_count());
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
