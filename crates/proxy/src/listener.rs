//! Listening sockets: bound from the config, or adopted from systemd socket activation.
//!
//! Under socket activation systemd passes the sockets as fds 3.. with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`. A socket named `tls` speaks TLS, one named `admin`
//! serves the admin HTTP endpoints; any other name (`plain`, systemd's default
//! `unknown`, the unit name) speaks the plain protocol. Entries of the fd store come in
//! `LISTEN_FDS` too; their names (`t7.client`, see [`crate::fdstore`]) set them apart.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

use crate::config::ListenSpec;
use crate::fdstore::{self, StoredGroup};

/// Why the listening sockets could not be set up; `Display` is the whole one-line text.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding a configured tunnel address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The system's reason.
        reason: std::io::Error,
    },
    /// Binding an admin address failed.
    #[error("cannot listen on {addr} (admin): {reason}")]
    BindAdmin {
        /// The configured address.
        addr: SocketAddr,
        /// The system's reason.
        reason: std::io::Error,
    },
    /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES` does not make sense.
    #[error("invalid socket activation environment (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES): {0}")]
    Environment(std::io::Error),
    /// systemd claims to pass an fd that is not open.
    #[error("socket-activation fd {fd}: not an open file descriptor (LISTEN_FDS={count})")]
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
        /// `LISTEN_FDS`.
        count: u32,
    },
    /// A passed fd is not a listening TCP socket.
    #[error("socket-activation fd {fd} (name {name:?}): {reason}")]
    Adopt {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// What is wrong with it.
        reason: AdoptError,
    },
}

/// What is wrong with a socket systemd passed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The descriptor is not open.
    #[error("not an open file descriptor")]
    Closed,
    /// The descriptor is not a socket.
    #[error("not a socket: {0}")]
    NotASocket(std::io::Error),
    /// A socket, but not TCP over IP.
    #[error("not a TCP socket (domain {domain:?}, type {kind:?}); expected ListenStream= with an IP address and port")]
    NotTcp {
        /// The socket's address family.
        domain: Domain,
        /// The socket's type.
        kind: Type,
    },
    /// `SO_ACCEPTCONN` could not be read.
    #[error("cannot query SO_ACCEPTCONN: {0}")]
    QueryListening(std::io::Error),
    /// A TCP socket that is not listening.
    #[error("TCP socket is not listening")]
    NotListening,
    /// Making it non-blocking failed.
    #[error("{0}")]
    NonBlocking(std::io::Error),
}

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
pub fn bind_all(specs: &[ListenSpec]) -> Result<Vec<Bound>, ListenError> {
    specs
        .iter()
        .map(|spec| {
            bind(spec.addr)
                .map(|socket| Bound {
                    socket,
                    role: if spec.tls { Role::Tls } else { Role::Plain },
                })
                .map_err(|reason| ListenError::Bind {
                    addr: spec.addr,
                    reason,
                })
        })
        .collect()
}

/// Binds the admin listener's addresses.
pub fn bind_admin(addrs: &[SocketAddr]) -> Result<Vec<Bound>, ListenError> {
    addrs
        .iter()
        .map(|addr| {
            bind(*addr)
                .map(|socket| Bound {
                    socket,
                    role: Role::Admin,
                })
                .map_err(|reason| ListenError::BindAdmin {
                    addr: *addr,
                    reason,
                })
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

/// What systemd passed in `LISTEN_FDS`.
#[derive(Debug, Default)]
pub struct Passed {
    /// The listening sockets; `None` when not socket-activated (no fd, or only
    /// fd-store entries: bind from the config then).
    pub listeners: Option<Vec<Bound>>,
    /// The fd-store entries (names [`crate::fdstore::parse_name`] knows), grouped; not
    /// checked yet.
    pub stored: Vec<StoredGroup>,
}

/// The sockets systemd passed (`None` when not socket-activated) and the fd-store
/// entries passed with them. Must run before any other thread starts: it unsets the
/// `LISTEN_*` variables.
pub fn from_systemd() -> Result<Passed, ListenError> {
    check_passed_fds()?;
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names(true)
        .map_err(ListenError::Environment)?
        .collect();
    let mut entries = Vec::new();
    let mut sockets = Vec::new();
    for (fd, name) in fds {
        if fdstore::parse_name(&name).is_some() {
            // Checked per group by whoever knows the kind; ownership taken here.
            match take_fd(fd) {
                Ok(owned) => entries.push((name, owned)),
                Err(reason) => return Err(ListenError::Adopt { fd, name, reason }),
            }
            continue;
        }
        let socket = match adopt(fd) {
            Ok(socket) => socket,
            Err(reason) => return Err(ListenError::Adopt { fd, name, reason }),
        };
        let role = match name.as_str() {
            TLS_FD_NAME => Role::Tls,
            ADMIN_FD_NAME => Role::Admin,
            _ => Role::Plain,
        };
        sockets.push(Bound { socket, role });
    }
    let (_, stored) = fdstore::group(entries);
    Ok(Passed {
        listeners: (!sockets.is_empty()).then_some(sockets),
        stored,
    })
}

/// Names the first fd systemd claims to pass that is not open, before sd_notify's
/// generic `Bad file descriptor` could hide which one it was.
fn check_passed_fds() -> Result<(), ListenError> {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(pid), Some(count)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
        return Ok(());
    };
    if pid != std::process::id() {
        return Ok(());
    }
    for fd in (0..count.min(1024)).map(|i| 3 + i as RawFd) {
        if !fd_is_open(fd) {
            return Err(ListenError::NotOpen { fd, count });
        }
    }
    Ok(())
}

/// Checks that a passed fd is a listening TCP socket and takes ownership of it.
fn adopt(fd: RawFd) -> Result<StdListener, AdoptError> {
    let socket = Socket::from(take_fd(fd)?);
    let kind = socket.r#type().map_err(AdoptError::NotASocket)?;
    let domain = socket.domain().map_err(AdoptError::NotASocket)?;
    if kind != Type::STREAM || !(domain == Domain::IPV4 || domain == Domain::IPV6) {
        return Err(AdoptError::NotTcp { domain, kind });
    }
    if !socket.is_listener().map_err(AdoptError::QueryListening)? {
        return Err(AdoptError::NotListening);
    }
    socket
        .set_nonblocking(true)
        .map_err(AdoptError::NonBlocking)?;
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
fn take_fd(fd: RawFd) -> Result<OwnedFd, AdoptError> {
    if !fd_is_open(fd) {
        return Err(AdoptError::Closed);
    }
    // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this process for it to own
    // (LISTEN_PID matched our pid), the fd is open (checked above), and
    // `from_systemd` takes each fd exactly once, before anything else could use it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
