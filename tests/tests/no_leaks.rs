//! No leaks: 10,000 tunnels through the built proxy to a scripted runner, aborted at
//! random points (client reset with SO_LINGER 0 before, during and after the request
//! line, after SUCCESS mid-stream; runner reset mid-stream; client FIN while the runner
//! stays silent), 64 at a time. Afterwards the proxy holds exactly as many file
//! descriptors as at its idle baseline and its RSS is back within a fixed bound.
//!
//! The RSS bound: the baseline is taken after a warm-up at the same concurrency, so
//! runtime threads, the SQLite pool and allocator arenas already exist. What remains is
//! allocator slack (freed chunks glibc keeps), bounded by the peak working set of
//! 64 concurrent tunnels (~64 × (1 KiB request buffer + 2 × 8 KiB relay buffers +
//! sockets' user-space state) ≈ 1.5 MiB) times fragmentation. We allow 16 MiB: a leak
//! of a single relay buffer per tunnel (8 KiB × 10,000 = 80 MiB) or even 2 KiB per
//! tunnel (20 MiB) exceeds it, while allocator slack stays well below.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hakuriver_ssh_tests::fixtures::{self, TASK_OK};
use hakuriver_ssh_tests::robust::{connected_sockets, open_fds, rss_kib, wait_until};
use hakuriver_ssh_tests::{random_bytes, HakuDb, Proxy, RefusedPort};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const TUNNELS: usize = 10_000;
const WARMUP: usize = 500;
const CONCURRENCY: usize = 64;
/// One aborted tunnel, every step included.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const RSS_BOUND_KIB: u64 = 16 * 1024;
/// A task id that is not in the fixture DB.
const MISSING_TASK: u64 = 424_242;

/// Bytes after which the runner resets in mode `R`.
const RUNNER_RESET_AFTER: usize = 1000;

/// The scripted runner: the first byte a tunnel relays picks its behaviour.
/// `E` echoes until EOF then closes, `R` resets after [`RUNNER_RESET_AFTER`] bytes,
/// `S` reads silently until EOF.
async fn runner(listener: TcpListener, active: Arc<AtomicUsize>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        active.fetch_add(1, Ordering::SeqCst);
        let active = Arc::clone(&active);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(STEP_TIMEOUT, serve_runner(&mut conn)).await;
            drop(conn);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn serve_runner(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    if conn.read(&mut mode).await? == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; 16 << 10];
    match mode[0] {
        b'E' => loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return conn.shutdown().await;
            }
            conn.write_all(&buf[..n]).await?;
        },
        b'R' => {
            let mut seen = 0;
            while seen < RUNNER_RESET_AFTER {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                seen += n;
            }
            reset(conn);
            Ok(())
        }
        _ => {
            while conn.read(&mut buf).await? > 0 {}
            Ok(())
        }
    }
}

/// The proxy keeps up to this many idle SQLite connections (`POOL_SIZE` in
/// crates/proxy/src/directory.rs); how full the pool is depends on how many lookups
/// happened to overlap, so those fds are counted apart.
const DB_POOL_CAP: usize = 4;

/// `(fds other than the database file, fds on the database file)` of `pid`.
fn fd_profile(pid: u32, db: &std::path::Path) -> std::io::Result<(usize, usize)> {
    let (mut other, mut on_db) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        match std::fs::read_link(entry?.path()) {
            Ok(target) if target == db => on_db += 1,
            // An fd may close between listing and reading the link: still counted, as
            // the listing saw it.
            _ => other += 1,
        }
    }
    Ok((other, on_db))
}

/// SO_LINGER 0: the close that follows sends RST.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// The ways a tunnel ends in this test.
const KINDS: [&str; 10] = [
    "client reset before the request",
    "client reset mid-request",
    "client reset right after the request",
    "client reset after SUCCESS, mid-stream",
    "runner reset mid-stream",
    "clean echo with half-close",
    "client reset before reading a refusal",
    "client FIN without a request",
    "client FIN, runner silent",
    "client reset right after SUCCESS",
];

/// Sends the request line and reads `SUCCESS`.
async fn request_tunnel(stream: &mut TcpStream, request: &str) -> Result<(), String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = [0u8; 8];
    stream
        .read_exact(&mut line)
        .await
        .map_err(|e| format!("reading SUCCESS: {e}"))?;
    if &line != b"SUCCESS\n" {
        return Err(format!("reply {:?}", String::from_utf8_lossy(&line)));
    }
    Ok(())
}

async fn read_to_end_or_reset(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got).await {
        Ok(_) => Ok(got),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(got),
        Err(e) => Err(e.to_string()),
    }
}

/// One tunnel, ended the way `kind` says. Only outcomes a correct proxy guarantees are
/// checked; the aborts themselves may race with the proxy, which is the point.
async fn one_tunnel(proxy: SocketAddr, kind: usize, seed: u64) -> Result<(), String> {
    let request = format!("REQUEST_TUNNEL {TASK_OK}\n");
    let mut s = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let payload = random_bytes(512 + usize::try_from(seed % 4096).unwrap(), seed);
    match kind {
        0 => reset(&s),
        1 => {
            let _ = s
                .write_all(&request.as_bytes()[..1 + (seed as usize % 15)])
                .await;
            reset(&s);
        }
        2 => {
            let _ = s.write_all(request.as_bytes()).await;
            reset(&s);
        }
        3 => {
            request_tunnel(&mut s, &request).await?;
            s.write_all(b"E").await.map_err(|e| e.to_string())?;
            s.write_all(&payload).await.map_err(|e| e.to_string())?;
            let mut some = vec![0u8; payload.len() / 2];
            s.read_exact(&mut some).await.map_err(|e| e.to_string())?;
            reset(&s);
        }
        4 => {
            request_tunnel(&mut s, &request).await?;
            // More than the runner reads before it resets, or it would wait for more.
            let mut data = b"R".to_vec();
            while data.len() <= RUNNER_RESET_AFTER {
                data.extend_from_slice(&payload);
            }
            // The runner resets after 1000 bytes; our side must then be closed too.
            let _ = s.write_all(&data).await;
            read_to_end_or_reset(&mut s).await?;
        }
        5 => {
            request_tunnel(&mut s, &request).await?;
            s.write_all(b"E").await.map_err(|e| e.to_string())?;
            let (mut rd, mut wr) = s.split();
            let send = async {
                wr.write_all(&payload).await?;
                wr.shutdown().await
            };
            let mut echoed = Vec::new();
            let (sent, got) = tokio::join!(send, rd.read_to_end(&mut echoed));
            sent.map_err(|e| e.to_string())?;
            got.map_err(|e| e.to_string())?;
            if echoed != payload {
                return Err(format!("echo: {} of {} bytes", echoed.len(), payload.len()));
            }
        }
        6 => {
            let _ = s
                .write_all(format!("REQUEST_TUNNEL {MISSING_TASK}\n").as_bytes())
                .await;
            reset(&s);
        }
        7 => {
            s.shutdown().await.map_err(|e| e.to_string())?;
            let got = read_to_end_or_reset(&mut s).await?;
            if got != b"ERROR Error processing request.\n" {
                return Err(format!("reply {:?}", String::from_utf8_lossy(&got)));
            }
        }
        8 => {
            request_tunnel(&mut s, &request).await?;
            s.write_all(b"S").await.map_err(|e| e.to_string())?;
            s.write_all(&payload).await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            // Our FIN reaches the silent runner, which then closes: so must we be.
            let got = read_to_end_or_reset(&mut s).await?;
            if !got.is_empty() {
                return Err(format!("{} unexpected bytes", got.len()));
            }
        }
        _ => {
            request_tunnel(&mut s, &request).await?;
            reset(&s);
        }
    }
    Ok(())
}

/// Runs `n` tunnels, `CONCURRENCY` at a time; returns failures per kind.
async fn run_tunnels(proxy: SocketAddr, n: usize, seed: u64) -> Vec<(usize, String)> {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut state = seed;
    for _ in 0..n {
        // splitmix64 step: kind and payload seed.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let kind = usize::try_from(z % KINDS.len() as u64).unwrap();
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let failures = Arc::clone(&failures);
        tasks.spawn(async move {
            let outcome = match tokio::time::timeout(STEP_TIMEOUT, one_tunnel(proxy, kind, z)).await
            {
                Ok(result) => result,
                Err(_) => Err(format!("no outcome within {STEP_TIMEOUT:?}")),
            };
            if let Err(e) = outcome {
                failures.lock().unwrap().push((kind, e));
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let failures = failures.lock().unwrap().clone();
    failures
}

/// Waits until neither the runner nor the proxy holds a connection.
fn settle(pid: u32, active: &AtomicUsize) {
    wait_until(
        SETTLE_TIMEOUT,
        "no connection at the runner or the proxy",
        || {
            let runner = active.load(Ordering::SeqCst);
            let proxy = connected_sockets(pid)?;
            Ok(if runner == 0 && proxy == 0 {
                Ok(())
            } else {
                Err((runner, proxy))
            })
        },
    )
    .unwrap();
}

#[test]
fn ten_thousand_aborted_tunnels_leak_no_fd_and_no_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runner_listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let runner_port = runner_listener.local_addr().unwrap().port();
    let active = Arc::new(AtomicUsize::new(0));
    rt.spawn(runner(runner_listener, Arc::clone(&active)));

    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(runner_port, refused.port())).unwrap();
    let proxy = Proxy::builder(db.path())
        .config("[ssh_proxy]\nmax_connections_per_ip = 4096\nlookups_per_minute_per_ip = 0\n")
        .start()
        .unwrap();
    let pid = proxy.pid();
    let addr = proxy.addr();

    let started_fds = open_fds(pid).unwrap();
    let warm_failures = rt.block_on(run_tunnels(addr, WARMUP, 1));
    settle(pid, &active);
    let (baseline_fds, baseline_db_fds) = fd_profile(pid, db.path()).unwrap();
    let baseline_rss = rss_kib(pid).unwrap();

    let started = Instant::now();
    let failures = rt.block_on(run_tunnels(addr, TUNNELS, 2));
    let elapsed = started.elapsed();
    let right_after = open_fds(pid).unwrap();

    // Exactly back to the baseline, waited for by polling /proc with a deadline.
    let settled = wait_until(SETTLE_TIMEOUT, "fd count back at its baseline", || {
        let now = fd_profile(pid, db.path())?;
        Ok(if now.0 == baseline_fds {
            Ok(now)
        } else {
            Err(now)
        })
    });
    let fd_list = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (final_fds, final_db_fds) =
        settled.unwrap_or_else(|e| panic!("{e:#}\nfds of the proxy:\n{}", fd_list()));
    settle(pid, &active);
    let final_rss = rss_kib(pid).unwrap();
    let logs = proxy.logs();
    eprintln!(
        "{TUNNELS} tunnels in {elapsed:?} ({:.0}/s); proxy fds: at start {started_fds}, \
         right after the run {right_after}; non-DB fds baseline {baseline_fds} final {final_fds}; \
         DB pool fds baseline {baseline_db_fds} final {final_db_fds}; RSS KiB: baseline \
         {baseline_rss}, final {final_rss} (+{}); log lines: opened {}, closed {}",
        TUNNELS as f64 / elapsed.as_secs_f64(),
        final_rss.saturating_sub(baseline_rss),
        logs.matches("tunnel opened").count(),
        logs.matches("tunnel closed").count(),
    );

    let mut by_kind = [0usize; KINDS.len()];
    for (kind, _) in &failures {
        by_kind[*kind] += 1;
    }
    assert!(
        warm_failures.is_empty() && failures.is_empty(),
        "failures per kind: {:?}\nfirst: {:?}",
        KINDS.iter().zip(by_kind).collect::<Vec<_>>(),
        warm_failures
            .iter()
            .chain(&failures)
            .take(10)
            .collect::<Vec<_>>()
    );
    assert_eq!(final_fds, baseline_fds);
    assert!(
        final_db_fds <= DB_POOL_CAP,
        "{final_db_fds} DB fds:\n{}",
        fd_list()
    );
    assert!(
        final_rss <= baseline_rss + RSS_BOUND_KIB,
        "RSS {final_rss} KiB vs baseline {baseline_rss} KiB (bound +{RSS_BOUND_KIB} KiB)"
    );
    // Every tunnel the proxy opened, it also logged closed.
    assert_eq!(
        logs.matches("tunnel opened").count(),
        logs.matches("tunnel closed").count(),
        "open/close log lines differ"
    );
    assert!(
        proxy.wait_exit(Duration::from_millis(1)).is_err(),
        "proxy exited"
    );
}
