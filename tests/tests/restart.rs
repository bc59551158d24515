//! Restarts of the proxy with systemd's file-descriptor store: open plain tunnels survive
//! `systemctl restart` (SIGTERM, then a new process) and a crash (SIGKILL, then
//! `Restart=on-failure`) with no byte lost, doubled or reordered.
//!
//! systemd itself is not run here: `hakuriver_ssh_tests::service_manager` stands in for
//! it, doing what systemd documents for the notify socket, the fd store and socket
//! activation (the listening socket and every stored descriptor passed to each new
//! process). Real parts otherwise: OpenSSH `sshd`/`ssh` on loopback, the built proxy
//! and client, HakuRiver 0.3.0's Python client. Restarts land mid-transfer without
//! sleeps: the sources are paced (each piece is released only after a restart) and the
//! restarts wait for observed progress (bytes on disk, bytes received).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hakuriver_ssh_tests::fixtures::{self, TASK_OK};
use hakuriver_ssh_tests::haku::python_client_command;
use hakuriver_ssh_tests::robust::{ssh_via_client, wait_until};
use hakuriver_ssh_tests::service_manager::{tunnel_groups, ServiceManager};
use hakuriver_ssh_tests::{
    random_bytes, sha256_hex, HakuDb, LogBuffer, Process, Proxy, RefusedPort, Signal, Sshd,
};

const MB: usize = 1 << 20;
/// The big transfers.
const TOTAL: usize = 100 * MB;
/// Where the paced sources stop until the next restart is done.
const CUTS: [usize; 2] = [40 * MB, 70 * MB];
/// Progress that triggers the SIGTERM, then the SIGKILL (below each cut: bytes are still
/// in flight when the signal lands).
const TERM_AT: usize = 20 * MB;
const KILL_AT: usize = 50 * MB;
const WAIT: Duration = Duration::from_secs(120);
/// `FDSTORE=` as systemd ≥ 254 would set it from the shipped unit's
/// `FileDescriptorStoreMax=` (7 per tunnel).
const FDSTORE: usize = 70_007;

struct World {
    sshd: Sshd,
    _refused: RefusedPort,
    db: HakuDb,
    sm: ServiceManager,
    home: tempfile::TempDir,
    /// What every proxy start gets (TLS: the listener role and one certificate).
    proxy_args: Vec<String>,
    /// What our client gets before `--stdio`.
    client_args: Vec<String>,
}

/// Plain tunnels: our client with `--no-resume` (a plain tunnel, as HakuRiver's client
/// opens, which the store keeps whole).
fn world(fdstore_env: Option<usize>) -> World {
    world_with(ServiceManager::new(fdstore_env).unwrap(), Vec::new())
}

fn world_with(sm: ServiceManager, proxy_args: Vec<String>) -> World {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    World {
        sshd,
        _refused: refused,
        db,
        sm,
        home: tempfile::tempdir().unwrap(),
        proxy_args,
        client_args: vec!["--no-resume".to_owned()],
    }
}

impl World {
    fn start(&self, args: &[&str]) -> Proxy {
        self.sm
            .start(
                Proxy::builder(self.db.path())
                    .args(&self.proxy_args)
                    .args(args),
            )
            .unwrap()
    }

    /// `ssh` through the proxy with our client as ProxyCommand, running `remote`.
    fn ssh(&self, remote: &str) -> Command {
        let extra: Vec<&str> = self.client_args.iter().map(String::as_str).collect();
        let mut cmd = ssh_via_client(
            &self.sshd,
            self.sm.addr(),
            &TASK_OK.to_string(),
            &extra,
            self.home.path(),
        );
        cmd.arg(remote);
        cmd
    }
}

/// A source that writes `head`, then `data` up to each cut in turn (waiting for a go
/// after each), then the rest and `tail`, then closes.
struct Paced {
    go: Sender<()>,
    done: JoinHandle<std::io::Result<()>>,
}

/// [`paced`] into a fifo the remote `cat` reads (opening it waits for that `cat`).
fn paced_into_fifo(fifo: &Path, data: &Arc<Vec<u8>>) -> Paced {
    let opened = fifo.to_path_buf();
    paced(
        move || fs::OpenOptions::new().write(true).open(opened),
        Vec::new(),
        Arc::clone(data),
        Vec::new(),
    )
}

fn paced<W: Write + Send + 'static>(
    sink: impl FnOnce() -> std::io::Result<W> + Send + 'static,
    head: Vec<u8>,
    data: Arc<Vec<u8>>,
    tail: Vec<u8>,
) -> Paced {
    let (go, wait): (Sender<()>, Receiver<()>) = channel();
    let done = std::thread::spawn(move || {
        let mut sink = sink()?;
        sink.write_all(&head)?;
        let mut from = 0;
        for cut in CUTS {
            sink.write_all(&data[from..cut])?;
            from = cut;
            // A dropped sender (test failed) lets the writer finish and close.
            let _ = wait.recv_timeout(WAIT);
        }
        sink.write_all(&data[from..])?;
        sink.write_all(&tail)?;
        sink.flush()
    });
    Paced { go, done }
}

/// Everything read from a pipe, with a live count.
struct Received {
    count: Arc<AtomicUsize>,
    done: JoinHandle<Vec<u8>>,
}

fn received(mut src: impl Read + Send + 'static) -> Received {
    let count = Arc::new(AtomicUsize::new(0));
    let counting = Arc::clone(&count);
    let done = std::thread::spawn(move || {
        let mut all = Vec::with_capacity(TOTAL + MB);
        let mut chunk = vec![0u8; 256 * 1024];
        while let Ok(n) = src.read(&mut chunk) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
            counting.store(all.len(), Ordering::Relaxed);
        }
        all
    });
    Received { count, done }
}

fn file_size(path: &Path) -> usize {
    fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX))
}

/// Waits until `progress()` reaches `at` bytes.
fn wait_for_progress(what: &str, at: usize, progress: &dyn Fn() -> usize) {
    wait_until(WAIT, &format!("{what}: {at} bytes"), || {
        let now = progress();
        Ok(if now >= at { Ok(()) } else { Err(now) })
    })
    .unwrap();
}

/// The stored names form exactly one tunnel's group of seven.
fn one_stored_tunnel(sm: &ServiceManager) -> String {
    let names = sm.stored_names();
    let groups = tunnel_groups(&names);
    assert_eq!(groups.len(), 1, "{names:?}");
    assert_eq!(names.len(), 7, "{names:?}");
    for part in [
        "client", "runner", "up.r", "up.w", "down.r", "down.w", "state",
    ] {
        let name = format!("{}.{part}", groups[0]);
        assert!(names.contains(&name), "{name} not stored: {names:?}");
    }
    groups[0].clone()
}

/// The restart script, while a paced transfer runs: at [`TERM_AT`] a SIGTERM and a new
/// start, at [`KILL_AT`] a SIGKILL and a new start, each releasing the next piece of the
/// source. Returns the last proxy.
fn restart_twice(
    w: &World,
    first: Proxy,
    args: &[&str],
    progress: &dyn Fn() -> usize,
    go: &Sender<()>,
) -> Proxy {
    wait_for_progress("before the SIGTERM", TERM_AT, progress);
    let group = one_stored_tunnel(&w.sm);
    let asked = Instant::now();
    let status = w.sm.stop(&first, Signal::SIGTERM).unwrap();
    let exit = asked.elapsed();
    assert!(status.success(), "{status}\n{}", first.logs());
    eprintln!("SIGTERM to exit with a tunnel open: {exit:?}");
    assert!(
        first.logs().contains("handed open tunnels over"),
        "{}",
        first.logs()
    );
    assert_eq!(one_stored_tunnel(&w.sm), group, "the store kept the tunnel");

    let second = w.start(args);
    second
        .wait_for_log("adopted 1 tunnels from the fd store", WAIT)
        .unwrap();
    go.send(()).unwrap();
    wait_for_progress("before the SIGKILL", KILL_AT, progress);
    w.sm.stop(&second, Signal::SIGKILL).unwrap();
    assert_eq!(one_stored_tunnel(&w.sm), group, "the store kept the tunnel");

    let third = w.start(args);
    third
        .wait_for_log("adopted 1 tunnels from the fd store", WAIT)
        .unwrap();
    go.send(()).unwrap();
    third
}

/// After the transfer: the last proxy logged the close and the store is empty.
fn closed_and_removed(w: &World, proxy: &Proxy) -> String {
    proxy.wait_for_log("tunnel closed", WAIT).unwrap();
    w.sm.sync().unwrap();
    assert!(w.sm.stored_names().is_empty(), "{:?}", w.sm.stored_names());
    let logs = proxy.logs();
    logs.lines()
        .find(|l| l.contains("tunnel closed"))
        .unwrap()
        .to_owned()
}

fn field_u64(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn spawn(name: &str, cmd: &mut Command) -> Process {
    Process::spawn(name, cmd).unwrap()
}

/// A 100 MB `ssh … 'cat > file'` through the proxy, fed by a paced source.
struct Upload {
    ssh: Process,
    stderr: LogBuffer,
    source: Paced,
    data: Arc<Vec<u8>>,
    target: std::path::PathBuf,
}

impl Upload {
    fn start(w: &World, seed: u64) -> Upload {
        let data = Arc::new(random_bytes(TOTAL, seed));
        let target = w.sshd.dir().join("upload.bin");
        let mut cmd = w.ssh(&format!("cat > {}", target.display()));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let ssh = spawn("ssh", &mut cmd);
        let stderr = LogBuffer::drain(ssh.take_stderr().unwrap(), None);
        let stdin = ssh.take_stdin().unwrap();
        let source = paced(move || Ok(stdin), Vec::new(), Arc::clone(&data), Vec::new());
        Upload {
            ssh,
            stderr,
            source,
            data,
            target,
        }
    }

    /// Bytes on the VPS so far.
    fn progress(&self) -> usize {
        file_size(&self.target)
    }

    /// Waits for the source and ssh; ssh's exit 0 and the file's sha256 checked.
    /// Returns ssh's stderr (our client's lines).
    fn finish(self) -> String {
        self.source.done.join().unwrap().unwrap();
        let status = self.ssh.wait_timeout(WAIT).unwrap();
        assert!(status.success(), "ssh: {status}\n{}", self.stderr.text());
        assert_eq!(
            sha256_hex(&fs::read(&self.target).unwrap()),
            sha256_hex(&self.data),
            "uploaded file differs"
        );
        self.stderr.text()
    }
}

/// A 100 MB `ssh … 'cat fifo'` through the proxy, the fifo fed by a paced source.
struct Download {
    ssh: Process,
    stderr: LogBuffer,
    got: Received,
    source: Paced,
    data: Arc<Vec<u8>>,
}

impl Download {
    fn start(w: &World, seed: u64) -> Download {
        let data = Arc::new(random_bytes(TOTAL, seed));
        let fifo = w.sshd.dir().join("download.fifo");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let mut cmd = w.ssh(&format!("cat {}", fifo.display()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let ssh = spawn("ssh", &mut cmd);
        let stderr = LogBuffer::drain(ssh.take_stderr().unwrap(), None);
        let got = received(ssh.take_stdout().unwrap());
        // Opening the fifo waits for the remote `cat` to open it.
        let source = paced_into_fifo(&fifo, &data);
        Download {
            ssh,
            stderr,
            got,
            source,
            data,
        }
    }

    /// Bytes received so far (a counter the caller may keep).
    fn counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.got.count)
    }

    /// Waits for the source and ssh; ssh's exit 0 and the bytes' sha256 checked.
    /// Returns ssh's stderr (our client's lines).
    fn finish(self) -> String {
        self.source.done.join().unwrap().unwrap();
        let status = self.ssh.wait_timeout(WAIT).unwrap();
        assert!(status.success(), "ssh: {status}\n{}", self.stderr.text());
        let got = self.got.done.join().unwrap();
        assert_eq!(got.len(), TOTAL);
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&self.data),
            "downloaded bytes differ"
        );
        self.stderr.text()
    }
}

#[test]
fn ssh_upload_survives_sigterm_and_sigkill_restarts() {
    let w = world(Some(FDSTORE));
    let proxy = w.start(&[]);
    let upload = Upload::start(&w, 11);
    let last = restart_twice(&w, proxy, &[], &|| upload.progress(), &upload.source.go);
    upload.finish();
    let line = closed_and_removed(&w, &last);
    assert!(line.contains("task_id=1"), "{line}");
}

#[test]
fn ssh_download_survives_sigterm_and_sigkill_restarts() {
    let w = world(Some(FDSTORE));
    let proxy = w.start(&[]);
    let download = Download::start(&w, 12);
    let count = download.counter();
    let progress = move || count.load(Ordering::Relaxed);
    let last = restart_twice(&w, proxy, &[], &progress, &download.source.go);
    download.finish();
    closed_and_removed(&w, &last);
}

/// HakuRiver 0.3.0's `hakuriver.ssh` as the client (its own local listener and asyncio
/// relay, our proxy restarted under it), on a unit without `$FDSTORE` (systemd 252:
/// the store enabled by `--fd-store on`, as the shipped unit does). Its `ssh` has no
/// remote command: the data goes through the remote login shell's stdin and stdout.
#[test]
fn hakuriver_python_client_upload_and_download_survive_restarts() {
    let w = world(None);
    let args = ["--fd-store", "on"];

    // Upload: `head -c` takes exactly TOTAL bytes (bash reads a pipe byte by byte, so
    // nothing behind the command line is lost to it), then `exit`.
    let proxy = w.start(&args);
    let data = Arc::new(random_bytes(TOTAL, 13));
    let target = w.sshd.dir().join("py-upload.bin");
    let mut cmd = python_client_command(w.sm.addr(), &TASK_OK.to_string(), &w.sshd).unwrap();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let client = spawn("hakuriver.ssh", &mut cmd);
    let out = LogBuffer::drain(client.take_stdout().unwrap(), None);
    let err = LogBuffer::drain(client.take_stderr().unwrap(), None);
    let stdin = client.take_stdin().unwrap();
    let head = format!("head -c {TOTAL} > {}\n", target.display()).into_bytes();
    let source = paced(
        move || Ok(stdin),
        head,
        Arc::clone(&data),
        b"exit\n".to_vec(),
    );
    let progress = || file_size(&target);
    let last = restart_twice(&w, proxy, &args, &progress, &source.go);
    source.done.join().unwrap().unwrap();
    client.wait_timeout(WAIT).unwrap();
    assert_eq!(
        sha256_hex(&fs::read(&target).unwrap()),
        sha256_hex(&data),
        "uploaded file differs; client said:\n{}\n{}",
        out.text(),
        err.text()
    );
    closed_and_removed(&w, &last);
    drop(last);

    // Download: the remote shell cats a fifo the test feeds.
    let proxy = w.start(&args);
    let data = Arc::new(random_bytes(TOTAL, 14));
    let fifo = w.sshd.dir().join("py-download.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut cmd = python_client_command(w.sm.addr(), &TASK_OK.to_string(), &w.sshd).unwrap();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let client = spawn("hakuriver.ssh", &mut cmd);
    let err = LogBuffer::drain(client.take_stderr().unwrap(), None);
    let got = received(client.take_stdout().unwrap());
    let mut stdin = client.take_stdin().unwrap();
    stdin
        .write_all(format!("cat {}\nexit\n", fifo.display()).as_bytes())
        .unwrap();
    drop(stdin);
    let source = paced_into_fifo(&fifo, &data);
    let count = Arc::clone(&got.count);
    let progress = move || count.load(Ordering::Relaxed);
    let last = restart_twice(&w, proxy, &args, &progress, &source.go);
    source.done.join().unwrap().unwrap();
    client.wait_timeout(WAIT).unwrap();
    let got = got.done.join().unwrap();
    // The client writes its own log lines to stdout too, before and after the data.
    let start = got[..got.len().min(MB)]
        .windows(64)
        .position(|w| w == &data[..64])
        .unwrap_or_else(|| panic!("data not found in the output; stderr:\n{}", err.text()));
    assert!(
        got.len() >= start + TOTAL,
        "only {} bytes of data",
        got.len() - start
    );
    assert_eq!(
        sha256_hex(&got[start..start + TOTAL]),
        sha256_hex(&data),
        "downloaded bytes differ"
    );
    closed_and_removed(&w, &last);
}

/// Two clean restarts: the counts of every process add up in the last one's `tunnel
/// closed` line, which names the task, and each new process logs the adoption with the
/// counts so far.
#[test]
fn adopted_tunnel_counts_carry_over_into_the_closing_line() {
    let w = world(Some(FDSTORE));
    let total = 10 * MB;
    let data = Arc::new(random_bytes(total, 15));
    let target = w.sshd.dir().join("counted.bin");
    let mut proxy = w.start(&[]);
    let mut cmd = w.ssh(&format!("cat > {}", target.display()));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let ssh = spawn("ssh", &mut cmd);
    let stderr = LogBuffer::drain(ssh.take_stderr().unwrap(), None);
    let mut stdin = ssh.take_stdin().unwrap();
    let mut sent = 0;
    for round in 1..=2u64 {
        let piece = total / 3;
        stdin.write_all(&data[sent..sent + piece]).unwrap();
        sent += piece;
        wait_for_progress("a piece on disk", sent, &|| file_size(&target));
        w.sm.stop(&proxy, Signal::SIGTERM).unwrap();
        assert!(!proxy.logs().contains("tunnel closed"), "{}", proxy.logs());
        proxy = w.start(&[]);
        proxy
            .wait_for_log("tunnel adopted from the fd store", WAIT)
            .unwrap();
        let logs = proxy.logs();
        let adopted = logs.lines().find(|l| l.contains("tunnel adopted")).unwrap();
        assert!(adopted.contains("task_id=1"), "{adopted}");
        assert!(
            field_u64(adopted, "bytes_up") >= sent as u64,
            "round {round}: {adopted}"
        );
    }
    stdin.write_all(&data[sent..]).unwrap();
    drop(stdin);
    let status = ssh.wait_timeout(WAIT).unwrap();
    assert!(status.success(), "ssh: {status}\n{}", stderr.text());
    assert_eq!(sha256_hex(&fs::read(&target).unwrap()), sha256_hex(&data));
    let line = closed_and_removed(&w, &proxy);
    assert!(line.contains("task_id=1"), "{line}");
    assert_eq!(field_u64(&line, "handovers"), 2, "{line}");
    // ssh's own bytes (key exchange, framing, MACs) come on top of the data.
    let up = field_u64(&line, "bytes_up");
    assert!(
        up >= total as u64 && up < total as u64 + MB as u64,
        "{line}"
    );
    assert!(field_u64(&line, "bytes_down") > 0, "{line}");
}

/// Groups that cannot be a tunnel (a part missing, sockets that are not sockets) are
/// closed and removed from the store, one warning each; new tunnels' serials come after
/// theirs, and a closed tunnel leaves nothing behind.
#[test]
fn broken_stored_groups_are_removed_not_leaked() {
    let w = world(Some(FDSTORE));
    let memfd = || {
        let f = tempfile::tempfile().unwrap();
        std::os::fd::OwnedFd::from(f)
    };
    w.sm.inject("t999.client", memfd());
    w.sm.inject("t999.state", memfd());
    for part in [
        "client", "runner", "up.r", "up.w", "down.r", "down.w", "state",
    ] {
        w.sm.inject(&format!("t5.{part}"), memfd());
    }
    let proxy = w.start(&[]);
    w.sm.sync().unwrap();
    assert!(w.sm.stored_names().is_empty(), "{:?}", w.sm.stored_names());
    let logs = proxy.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("broken tunnel in the fd store"))
        .collect();
    assert_eq!(warnings.len(), 2, "{logs}");
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("group=t999") && l.contains("missing")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("group=t5") && l.contains("not a socket")),
        "{warnings:?}"
    );
    assert!(!logs.contains("adopted"), "{logs}");

    // A tunnel opened now is stored after the highest serial seen, then removed at close.
    let mut cmd = w.ssh("cat");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ssh = spawn("ssh", &mut cmd);
    let got = received(ssh.take_stdout().unwrap());
    let mut stdin = ssh.take_stdin().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    wait_until(WAIT, "the echo", || {
        let n = got.count.load(Ordering::Relaxed);
        Ok(if n >= 5 { Ok(()) } else { Err(n) })
    })
    .unwrap();
    w.sm.sync().unwrap();
    assert_eq!(one_stored_tunnel(&w.sm), "t1000");
    drop(stdin);
    assert!(ssh.wait_timeout(WAIT).unwrap().success());
    closed_and_removed(&w, &proxy);
}

/// With the store off (no `$FDSTORE`, no `--fd-store on`) nothing is stored and SIGTERM
/// drains as before: the open tunnel keeps relaying until it ends, then the proxy exits.
#[test]
fn sigterm_without_the_store_still_drains() {
    let w = world(None);
    let proxy = w.start(&[]);
    let mut cmd = w.ssh("cat");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ssh = spawn("ssh", &mut cmd);
    let got = received(ssh.take_stdout().unwrap());
    let mut stdin = ssh.take_stdin().unwrap();
    let echoed = |n: usize| {
        wait_until(WAIT, "the echo", || {
            let seen = got.count.load(Ordering::Relaxed);
            Ok(if seen >= n { Ok(()) } else { Err(seen) })
        })
        .unwrap();
    };
    stdin.write_all(b"hello\n").unwrap();
    echoed(6);
    w.sm.sync().unwrap();
    assert!(w.sm.stored_names().is_empty(), "{:?}", w.sm.stored_names());
    proxy.signal(Signal::SIGTERM).unwrap();
    proxy
        .wait_for_log("draining open connections", WAIT)
        .unwrap();
    stdin.write_all(b"world\n").unwrap();
    echoed(12);
    assert!(
        proxy.process().try_status().is_none(),
        "exited while draining"
    );
    drop(stdin);
    assert!(ssh.wait_timeout(WAIT).unwrap().success());
    let status = proxy.wait_exit(WAIT).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(got.done.join().unwrap(), b"hello\nworld\n");
    w.sm.sync().unwrap();
    assert!(w.sm.stopping_count() >= 1);
    assert!(proxy.logs().contains("tunnel closed"), "{}", proxy.logs());
}

/// TLS tunnels with our client (resumable): the TLS state cannot pass to the next
/// process, so at SIGTERM each tunnel's runner connection and session (its counts and
/// the bytes the client has not acknowledged) go to the store, and the client resumes
/// on the next process over a new TLS session, verified against the same CA.
struct TlsWorld {
    w: World,
    _pki: tempfile::TempDir,
}

fn world_tls() -> TlsWorld {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let pki = tempfile::tempdir().unwrap();
    let path = |name: &str| pki.path().join(name).display().to_string();
    fs::write(path("ca.pem"), ca.pem()).unwrap();
    fs::write(path("cert.pem"), cert.pem()).unwrap();
    fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    let sm = ServiceManager::new(Some(FDSTORE))
        .unwrap()
        .listener_named("tls");
    let proxy_args = [
        "--tls",
        "--tls-cert",
        &path("cert.pem"),
        "--tls-key",
        &path("key.pem"),
    ]
    .map(String::from)
    .to_vec();
    let mut w = world_with(sm, proxy_args);
    w.client_args = ["-v", "--tls", "--ca-file", &path("ca.pem")]
        .map(String::from)
        .to_vec();
    TlsWorld { w, _pki: pki }
}

/// The stored names form exactly one resumable tunnel's group (runner, record,
/// session).
fn one_handed_over_tunnel(sm: &ServiceManager) -> String {
    let names = sm.stored_names();
    let groups = tunnel_groups(&names);
    assert_eq!(groups.len(), 1, "{names:?}");
    assert!(groups[0].starts_with('r'), "{names:?}");
    let mut parts: Vec<&str> = names
        .iter()
        .filter_map(|n| n.split_once('.').map(|(_, p)| p))
        .collect();
    parts.sort_unstable();
    assert_eq!(parts, ["runner", "session", "state"], "{names:?}");
    groups[0].clone()
}

/// SIGTERM at [`TERM_AT`] and again at [`KILL_AT`], a new start after each, the source
/// released once the new process is up. Returns the last proxy.
fn restart_twice_tls(
    w: &World,
    first: Proxy,
    progress: &dyn Fn() -> usize,
    go: &Sender<()>,
) -> Proxy {
    let mut proxy = first;
    for at in [TERM_AT, KILL_AT] {
        wait_for_progress("before the SIGTERM", at, progress);
        let status = w.sm.stop(&proxy, Signal::SIGTERM).unwrap();
        assert!(status.success(), "{status}\n{}", proxy.logs());
        assert!(
            proxy.logs().contains("handed open tunnels over"),
            "{}",
            proxy.logs()
        );
        one_handed_over_tunnel(&w.sm);
        let next = w.start(&[]);
        next.wait_for_log("adopted 1 tunnels from the fd store", WAIT)
            .unwrap();
        // The session lives in the new process now: the store holds nothing of it.
        w.sm.sync().unwrap();
        assert!(w.sm.stored_names().is_empty(), "{:?}", w.sm.stored_names());
        next.wait_for_log("tunnel resumed", WAIT).unwrap();
        go.send(()).unwrap();
        proxy = next;
    }
    proxy
}

/// Our client's `-v` lines: one "tunnel resumed after" per restart.
fn assert_resumed_twice(client_log: &str) {
    let resumed = client_log.matches("tunnel resumed after").count();
    assert_eq!(resumed, 2, "{client_log}");
}

#[test]
fn tls_upload_survives_two_sigterm_restarts() {
    let tls = world_tls();
    let w = &tls.w;
    let proxy = w.start(&[]);
    let upload = Upload::start(w, 13);
    let last = restart_twice_tls(w, proxy, &|| upload.progress(), &upload.source.go);
    let client_log = upload.finish();
    let line = closed_and_removed(w, &last);
    assert_eq!(field_u64(&line, "handovers"), 2, "{line}");
    // ssh's own framing on top: more than the file, counted across all three processes.
    assert!(field_u64(&line, "bytes_up") > TOTAL as u64, "{line}");
    assert_resumed_twice(&client_log);
}

#[test]
fn tls_download_survives_two_sigterm_restarts() {
    let tls = world_tls();
    let w = &tls.w;
    let proxy = w.start(&[]);
    let download = Download::start(w, 14);
    let count = download.counter();
    let progress = move || count.load(Ordering::Relaxed);
    let last = restart_twice_tls(w, proxy, &progress, &download.source.go);
    let client_log = download.finish();
    let line = closed_and_removed(w, &last);
    assert!(field_u64(&line, "bytes_down") > TOTAL as u64, "{line}");
    assert_resumed_twice(&client_log);
}

/// What a crash does to a TLS tunnel: the bytes the dead process held for the client
/// (read from the runner, not yet acknowledged) died with it, and nothing was stored
/// (resumable tunnels go to the store at a SIGTERM only). The next process does not
/// know the tunnel: the client's resume is refused, it says so in one line and exits
/// 255 as ssh does on a lost connection; the VPS side sees its connection close.
#[test]
fn sigkill_ends_a_tls_tunnel_with_one_line() {
    let tls = world_tls();
    let w = &tls.w;
    let proxy = w.start(&[]);
    let download = Download::start(w, 15);
    let count = download.counter();
    wait_for_progress("before the SIGKILL", TERM_AT, &|| {
        count.load(Ordering::Relaxed)
    });
    let killed = Instant::now();
    w.sm.stop(&proxy, Signal::SIGKILL).unwrap();
    assert!(w.sm.stored_names().is_empty(), "{:?}", w.sm.stored_names());
    let next = w.start(&[]);
    let Download {
        ssh,
        stderr,
        got,
        source,
        data,
    } = download;
    let status = ssh.wait_timeout(WAIT).unwrap();
    let ended_after = killed.elapsed();
    drop(source.go);
    assert_eq!(status.code(), Some(255), "{}", stderr.text());
    let text = stderr.text();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refused to resume the session"))
        .collect();
    assert_eq!(ours.len(), 1, "{text}");
    assert!(ours[0].contains("holds no such tunnel"), "{text}");
    next.wait_for_log("resume refused", WAIT).unwrap();
    let got = got.done.join().unwrap();
    // What arrived is a prefix of the data, cut where the crash lost bytes.
    assert!(
        got.len() < TOTAL && data.starts_with(&got),
        "{} bytes",
        got.len()
    );
    eprintln!(
        "SIGKILL mid-download: ssh ended {ended_after:?} later with exit 255 after {} of {TOTAL} bytes: {}",
        got.len(),
        ours[0]
    );
}

/// The interactive mode over TLS, through a network the test breaks: the proxy is
/// restarted (SIGTERM, a new start) and later the network drops every connection; one
/// ssh, run by our client against its local listener, keeps echoing lines throughout.
/// The exchange is printed (`--nocapture`) as the transcript of such a session.
#[test]
fn an_interactive_session_survives_a_restart_and_a_network_break() {
    use std::io::BufRead;
    let tls = world_tls();
    let w = &tls.w;
    let proxy = w.start(&[]);
    let mut relay = hakuriver_ssh_tests::netbreak::Relay::start(w.sm.addr(), w.sm.dir());
    let mut cmd = Command::new(hakuriver_ssh_tests::bin_path("hakuriver-ssh"));
    cmd.env("HOME", w.home.path())
        .env_remove("HAKURIVER_CONFIG")
        .env_remove("HAKURIVER_SSH_LOG")
        .args(&w.client_args)
        .args(["--host", "127.0.0.1", "--proxy-port"])
        .arg(relay.addr().port().to_string())
        .arg(TASK_OK.to_string())
        .args(w.sshd.ssh_opts())
        .arg("while read -r line; do echo \"$(date +%T) vps: $line\"; done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let client = spawn("hakuriver-ssh", &mut cmd);
    let log = LogBuffer::drain(client.take_stderr().unwrap(), None);
    let mut stdin = client.take_stdin().unwrap();
    let (lines_tx, lines) = channel::<String>();
    let stdout = client.take_stdout().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut transcript = Vec::new();
    let mut say = |text: &str, transcript: &mut Vec<String>| {
        writeln!(stdin, "{text}").unwrap();
        let got = lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no echo of {text:?}: {e}\n{}", log.text()));
        assert!(got.ends_with(&format!("vps: {text}")), "{got}");
        transcript.push(format!("> {text}\n{got}"));
    };
    say("hello before anything happens", &mut transcript);

    w.sm.stop(&proxy, Signal::SIGTERM).unwrap();
    one_handed_over_tunnel(&w.sm);
    transcript.push("[systemctl restart hakuriver-ssh-proxy: SIGTERM, new process]".into());
    let next = w.start(&[]);
    next.wait_for_log("tunnel resumed", WAIT).unwrap();
    say("typed after the proxy restarted", &mut transcript);

    relay.break_and_restore();
    transcript.push("[network break: every connection between client and Host ends]".into());
    say("typed after the network broke", &mut transcript);

    // End of input: the remote loop ends, ssh exits, so does our client.
    drop(stdin);
    let status = client.wait_timeout(WAIT).unwrap();
    let text = log.text();
    assert!(status.success(), "{status}\n{text}");
    assert_eq!(text.matches("tunnel resumed after").count(), 2, "{text}");
    assert_eq!(text.matches("starting ssh").count(), 1, "{text}");
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("lost; resuming") || l.contains("tunnel resumed after"))
        .collect();
    eprintln!(
        "--- transcript ---\n{}\n--- hakuriver-ssh -v ---\n{}",
        transcript.join("\n"),
        ours.join("\n")
    );
    next.wait_for_log("tunnel closed", WAIT).unwrap();
}
