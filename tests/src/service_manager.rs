//! A stand-in for systemd's service manager, for restart tests: the notify socket, the
//! file-descriptor store, socket activation, restarts.
//!
//! It does what systemd documents (sd_notify(3), sd_listen_fds(3), the "File Descriptor
//! Store" page) and nothing else: it binds a unix datagram socket and points the
//! daemon's `NOTIFY_SOCKET` at it (with `FDSTORE=<n>` if asked, as systemd ≥ 254 sets
//! it), takes `READY=1`, `STOPPING=1`, `FDSTORE=1` (+ `SCM_RIGHTS`, `FDNAME=`) and
//! `FDSTOREREMOVE=1` messages, keeps the stored descriptors, and starts each process
//! with its listening socket (name `plain`) plus every stored descriptor as fds 3..,
//! `LISTEN_FDS`, `LISTEN_FDNAMES` (colon-separated) and `LISTEN_PID` (the new process's
//! own pid: the daemon is exec'd by `sh`, whose `$$` it keeps).

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tempfile::TempDir;

use crate::proxy::{Proxy, ProxyBuilder, Signal};

/// How long a daemon may take to send `READY=1` or to exit.
pub const MANAGER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Store {
    /// `(FDNAME, fd)` in the order stored (systemd passes them back in that order).
    fds: Vec<(String, OwnedFd)>,
    /// When each `READY=1` arrived.
    ready: Vec<Instant>,
    stopping: usize,
    barrier: u64,
    /// Every message received, as text.
    messages: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stand-in: notify socket, fd store, the listening socket it passes.
pub struct ServiceManager {
    dir: TempDir,
    socket_path: PathBuf,
    listener: TcpListener,
    store: Arc<(Mutex<Store>, Condvar)>,
    fdstore_env: Option<usize>,
    listener_name: &'static str,
    barriers: Mutex<u64>,
}

impl ServiceManager {
    /// Binds the notify socket and a listening socket on `127.0.0.1:0`. `fdstore_env`:
    /// the `FDSTORE=` value to set (systemd ≥ 254), or `None` (systemd 252 sets none).
    pub fn new(fdstore_env: Option<usize>) -> Result<ServiceManager> {
        let dir = tempfile::Builder::new().prefix("hakuriver-sm-").tempdir()?;
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let store: Arc<(Mutex<Store>, Condvar)> = Arc::default();
        let receiving = Arc::clone(&store);
        std::thread::Builder::new()
            .name("service-manager".into())
            .spawn(move || receive(&socket, &receiving))?;
        Ok(ServiceManager {
            dir,
            socket_path,
            listener,
            store,
            fdstore_env,
            listener_name: "plain",
            barriers: Mutex::new(0),
        })
    }

    /// The same manager passing its listening socket as `name` (`FileDescriptorName=`
    /// of the socket unit): `tls` makes it the daemon's TLS listener.
    pub fn listener_named(mut self, name: &'static str) -> Self {
        self.listener_name = name;
        self
    }

    /// Where clients connect: the passed listening socket, the same for every process.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|e| panic!("listener address: {e}"))
    }

    /// A scratch directory that lives as long as the manager.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `builder`'s daemon as the service: notify socket, `FDSTORE=`, the listening
    /// socket and the whole store passed. Waits for its `READY=1` (the `n`-th one).
    pub fn start(&self, builder: ProxyBuilder) -> Result<Proxy> {
        let stored = lock(&self.store.0)
            .fds
            .iter()
            .map(|(name, fd)| Ok((fd.try_clone()?, name.clone())))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(self.start_passing(builder, stored)?.0)
    }

    /// [`ServiceManager::start`], but the store's descriptors are moved to the process,
    /// not copied: systemd keeps them outside the test's descriptor table, so with
    /// thousands stored a test process cannot hold a copy of each as well. The store is
    /// empty afterwards (what the daemon stores again comes back). Returns when the
    /// process's `READY=1` arrived, too.
    pub fn start_handing_over(&self, builder: ProxyBuilder) -> Result<(Proxy, Instant)> {
        let stored = std::mem::take(&mut lock(&self.store.0).fds)
            .into_iter()
            .map(|(name, fd)| (fd, name))
            .collect();
        self.start_passing(builder, stored)
    }

    fn start_passing(
        &self,
        builder: ProxyBuilder,
        stored: Vec<(OwnedFd, String)>,
    ) -> Result<(Proxy, Instant)> {
        let ready_before = lock(&self.store.0).ready.len();
        let mut passed = vec![(
            OwnedFd::from(self.listener.try_clone()?),
            self.listener_name.to_owned(),
        )];
        passed.extend(stored);
        let mut builder = builder
            .env("NOTIFY_SOCKET", &self.socket_path)
            .passed_fds(passed);
        if let Some(n) = self.fdstore_env {
            builder = builder.env("FDSTORE", n.to_string());
        }
        let proxy = builder.start()?;
        self.wait(MANAGER_TIMEOUT, "READY=1", |s| s.ready.len() > ready_before)
            .map_err(|e| e.context(format!("proxy log:\n{}", proxy.logs())))?;
        let ready = lock(&self.store.0).ready[ready_before];
        Ok((proxy, ready))
    }

    /// Stops `proxy` with `signal` (SIGTERM: `systemctl restart`; SIGKILL: a crash),
    /// waits for its exit, then for every message it sent to be taken in.
    pub fn stop(&self, proxy: &Proxy, signal: Signal) -> Result<std::process::ExitStatus> {
        let status = proxy.process().signal_and_wait(signal, MANAGER_TIMEOUT)?;
        self.sync()?;
        Ok(status)
    }

    /// Waits until every message sent so far was processed (a marker datagram of our own
    /// queued behind them comes back).
    pub fn sync(&self) -> Result<()> {
        let n = {
            let mut b = lock(&self.barriers);
            *b += 1;
            *b
        };
        let sender = UnixDatagram::unbound()?;
        sender.send_to(format!("X_BARRIER={n}\n").as_bytes(), &self.socket_path)?;
        self.wait(MANAGER_TIMEOUT, "the barrier message", |s| s.barrier >= n)
    }

    /// The names in the store, in order.
    pub fn stored_names(&self) -> Vec<String> {
        lock(&self.store.0)
            .fds
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Puts `fd` into the store as `name`, as if a daemon had stored it.
    pub fn inject(&self, name: &str, fd: OwnedFd) {
        lock(&self.store.0).fds.push((name.to_owned(), fd));
    }

    /// `READY=1` messages so far.
    pub fn ready_count(&self) -> usize {
        lock(&self.store.0).ready.len()
    }

    /// Descriptors in the store now.
    pub fn stored_count(&self) -> usize {
        lock(&self.store.0).fds.len()
    }

    /// `STOPPING=1` messages so far.
    pub fn stopping_count(&self) -> usize {
        lock(&self.store.0).stopping
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<String> {
        lock(&self.store.0).messages.clone()
    }

    fn wait(&self, timeout: Duration, what: &str, done: impl Fn(&Store) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let (m, cond) = &*self.store;
        let mut store = lock(m);
        while !done(&store) {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "service manager: no {what} within {timeout:?}; messages: {:?}",
                    store.messages
                );
            }
            store = cond
                .wait_timeout(store, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

/// The notify socket's reader: one datagram at a time, with its descriptors.
fn receive(socket: &UnixDatagram, store: &(Mutex<Store>, Condvar)) {
    let mut data = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(253))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut data)];
        let received = rustix::net::recvmsg(
            socket.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let Ok(msg) = received else { return };
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
        let (m, cond) = store;
        let mut s = lock(m);
        if field("READY").as_deref() == Some("1") {
            s.ready.push(Instant::now());
        }
        if field("STOPPING").as_deref() == Some("1") {
            s.stopping += 1;
        }
        if let Some(n) = field("X_BARRIER").and_then(|n| n.parse().ok()) {
            s.barrier = n;
        }
        if field("FDSTORE").as_deref() == Some("1") {
            // systemd's default name for an unnamed stored fd.
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
        if !text.starts_with("X_BARRIER=") {
            s.messages.push(text);
        }
        cond.notify_all();
    }
}

/// Makes `cmd`'s child start with `fds` as its descriptors 3, 4, ... (not close-on-exec),
/// as systemd passes them. Returns the copies that must stay open until `spawn` returns.
///
/// The copies are made above every target number first, so moving one into place never
/// overwrites another still to be moved.
pub fn pass_fds(cmd: &mut Command, fds: &[OwnedFd]) -> io::Result<Vec<OwnedFd>> {
    let first_free = RawFd::try_from(3 + fds.len()).map_err(io::Error::other)?;
    let copies = fds
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, first_free).map_err(io::Error::from))
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    let raw: Vec<RawFd> = copies.iter().map(AsRawFd::as_raw_fd).collect();
    dup_into_place(cmd, raw);
    Ok(copies)
}

/// The `pre_exec` half of [`pass_fds`].
#[allow(unsafe_code)]
fn dup_into_place(cmd: &mut Command, raw: Vec<RawFd>) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls dup2(2) only (no allocation: `raw`
    // was built in the parent). Each source is a close-on-exec copy numbered above
    // every target, open in the child because fork copies the parent's table, and
    // dup2 leaves the new number without FD_CLOEXEC, so exec keeps it.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                let target = 3 + i as RawFd;
                if nix::libc::dup2(*fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A `sh -c 'LISTEN_PID=$$ exec "$0" "$@"'` wrapper around `cmd` (same program,
/// arguments and environment changes), so `LISTEN_PID` is the daemon's own pid.
pub fn with_listen_pid(cmd: &Command) -> Command {
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// `Err` naming the first entry of `names` that starts with `prefix`.
pub fn none_starting_with(names: &[String], prefix: &str) -> Result<()> {
    match names.iter().find(|n| n.starts_with(prefix)) {
        Some(n) => Err(anyhow!("{n} is still in the store: {names:?}")),
        None => Ok(()),
    }
}

/// Stored names grouped per tunnel prefix (`t7`), for assertions.
pub fn tunnel_groups(names: &[String]) -> Vec<String> {
    let mut groups: Vec<String> = names
        .iter()
        .filter_map(|n| n.split_once('.').map(|(g, _)| g.to_owned()))
        .collect();
    groups.sort();
    groups.dedup();
    groups
}
