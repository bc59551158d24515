//! Listening sockets: bound from the config, or adopted from systemd socket activation.
//!
//! Under socket activation systemd passes the sockets as fds 3.. with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`. A socket named `tls` speaks TLS, one named `admin`
//! serves the admin HTTP endpoints; any other name (`plain`, systemd's default
//! `unknown`, the unit name) speaks the plain protocol.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Socket, Type};

use crate::config::ListenSpec;

/// `FileDescriptorName=` that marks a TLS socket.
pub const TLS_FD_NAME: &str = "tls";
/// `FileDescriptorName=` that marks the admin (metrics and health) socket.
pub const ADMIN_FD_NAME: &str = "admin";
/// `FileDescriptorName=` for a plain socket (any name but [`TLS_FD_NAME`] is plain).
#[allow(dead_code)] // the name the shipped socket units use; nothing needs to match it
pub const PLAIN_FD_NAME: &str = "plain";
/// Pending-connection queue length for sockets we bind ourselves.
pub const BACKLOG: i32 = 1024;

/// What a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Tunnels, plain protocol.
    Plain,
    /// Tunnels, TLS first.
    Tls,
    /// The admin HTTP endpoints.
    Admin,
}

/// A listening socket not yet registered with the async runtime.
#[derive(Debug)]
pub struct Bound {
    /// The socket (non-blocking).
    pub socket: StdListener,
    /// What it serves.
    pub role: Role,
}

impl Bound {
    /// The actual local address (with the port the OS picked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Binds every configured address. IPv6 sockets are v6-only, so `0.0.0.0:8002` and
/// `[::]:8002` can both be configured.
pub fn bind_all(specs: &[ListenSpec]) -> Result<Vec<Bound>> {
    specs
        .iter()
        .map(|spec| {
            bind(spec.addr)
                .map(|socket| Bound {
                    socket,
                    role: if spec.tls { Role::Tls } else { Role::Plain },
                })
                .with_context(|| format!("cannot listen on {}", spec.addr))
        })
        .collect()
}

/// Binds the admin listener's addresses.
pub fn bind_admin(addrs: &[SocketAddr]) -> Result<Vec<Bound>> {
    addrs
        .iter()
        .map(|addr| {
            bind(*addr)
                .map(|socket| Bound {
                    socket,
                    role: Role::Admin,
                })
                .with_context(|| format!("cannot listen on {addr} (admin)"))
        })
        .collect()
}

fn bind(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The sockets systemd passed, or `None` when not socket-activated. Must run before any
/// other thread starts: it unsets the `LISTEN_*` variables.
pub fn from_systemd() -> Result<Option<Vec<Bound>>> {
    check_passed_fds()?;
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(true)
        .context("invalid socket activation environment (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES)")?
        .collect();
    if fds.is_empty() {
        return Ok(None);
    }
    fds.into_iter()
        .map(|(fd, name)| {
            let socket =
                adopt(fd).with_context(|| format!("socket-activation fd {fd} (name {name:?})"))?;
            let role = match name.as_str() {
                TLS_FD_NAME => Role::Tls,
                ADMIN_FD_NAME => Role::Admin,
                _ => Role::Plain,
            };
            Ok(Bound { socket, role })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Names the first fd systemd claims to pass that is not open, before sd_notify's
/// generic `Bad file descriptor` could hide which one it was.
fn check_passed_fds() -> Result<()> {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(pid), Some(count)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
        return Ok(());
    };
    if pid != std::process::id() {
        return Ok(());
    }
    for fd in (0..count.min(1024)).map(|i| 3 + i as RawFd) {
        if !fd_is_open(fd) {
            bail!("socket-activation fd {fd}: not an open file descriptor (LISTEN_FDS={count})");
        }
    }
    Ok(())
}

/// Checks that a passed fd is a listening TCP socket and takes ownership of it.
fn adopt(fd: RawFd) -> Result<StdListener> {
    let socket = Socket::from(take_fd(fd)?);
    let kind = socket.r#type().context("not a socket")?;
    let domain = socket.domain().context("not a socket")?;
    if kind != Type::STREAM || !(domain == Domain::IPV4 || domain == Domain::IPV6) {
        bail!("not a TCP socket (domain {domain:?}, type {kind:?}); expected ListenStream= with an IP address and port");
    }
    if !socket.is_listener().context("cannot query SO_ACCEPTCONN")? {
        bail!("TCP socket is not listening");
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether `fd` is an open descriptor of this process (`fcntl(F_GETFD)` through rustix).
#[allow(unsafe_code)]
fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: nothing safe borrows a descriptor known only by its number. The borrow
    // lives for this one F_GETFD call, which only reads the descriptor flags (the kernel
    // answers EBADF for a number that is not open); nothing is read, written or closed
    // through it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).is_ok()
}

/// Takes ownership of an fd inherited from systemd.
#[allow(unsafe_code)]
fn take_fd(fd: RawFd) -> Result<OwnedFd> {
    if !fd_is_open(fd) {
        bail!("not an open file descriptor");
    }
    // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this process for it to own
    // (LISTEN_PID matched our pid), the fd is open (checked above), and
    // `from_systemd` takes each fd exactly once, before anything else could use it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
