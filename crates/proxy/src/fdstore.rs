//! systemd's file-descriptor store: descriptors the service manager keeps for the daemon
//! across a restart or a crash, and passes back to the next process in `LISTEN_FDS`,
//! next to the listening sockets (`listener::from_systemd` tells them apart by name).
//!
//! # Names
//! A stored descriptor is named `<kind><serial>.<part>`, e.g. `t7.client`: the kind says
//! what the group is ([`KINDS`]: [`PLAIN_TUNNEL`], [`RESUMABLE_TUNNEL`]), the serial numbers the group
//! (a process continues after the highest serial it adopted, so a serial is never used
//! twice in one store), the part says which descriptor of the group it is. Names are
//! ASCII without `:` (systemd joins them with `:` in `LISTEN_FDNAMES`).
//!
//! # Messages
//! - store: `FDSTORE=1`, `FDNAME=<name>`, `FDPOLL=0`, the descriptor attached. `FDPOLL=0`
//!   because entries are removed explicitly: systemd would otherwise drop a socket at
//!   its first `POLLHUP`, which a half-closed tunnel reports while it still relays.
//! - remove: `FDSTOREREMOVE=1`, `FDNAME=<name>`. Closing our copy is not enough: the
//!   store's copy keeps the socket open and the peer never sees it close.
//!
//! # State records
//! [`StateFile`]: a memfd holding one JSON value, stored with its group and rewritten in
//! place when counters must carry over (at a SIGTERM handover). After a SIGKILL the next
//! process reads whatever was written last.
//!
//! # Enabling
//! [`FdStore::from_env`]: only with `NOTIFY_SOCKET` set, and then by [`FdStoreMode`]:
//! `auto` needs `$FDSTORE` > 0 (systemd ≥ 254 sets it to `FileDescriptorStoreMax=`),
//! `on` trusts the unit (systemd 252 sets no `$FDSTORE`), `off` never.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sd_notify::NotifyState;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use crate::config::FdStoreMode;

/// The variable systemd (≥ 254) sets to the unit's `FileDescriptorStoreMax=`.
pub const FDSTORE_ENV: &str = "FDSTORE";
/// Kind of a plain (TCP ⇄ TCP, splice) tunnel's group.
pub const PLAIN_TUNNEL: &str = "t";
/// Kind of a resumable tunnel's group (`crate::resume`): its runner connection and
/// session, stored at a SIGTERM only.
pub const RESUMABLE_TUNNEL: &str = "r";
/// Every group kind this build knows; other names are listening sockets.
pub const KINDS: &[&str] = &[PLAIN_TUNNEL, RESUMABLE_TUNNEL];
/// Longest name accepted (systemd's own limit is 255).
pub const MAX_NAME: usize = 255;
/// Bytes of `LISTEN_FDNAMES` the stored names may take. systemd passes every name in
/// that one variable, and Linux refuses to exec a process with a single environment
/// string longer than 128 KiB (`MAX_ARG_STRLEN`, E2BIG): a store whose names outgrow it
/// would make every restart fail. The rest is left for the sockets' names.
pub const NAMES_BUDGET: usize = 120 * 1024;

/// One group of stored descriptors: `<kind><serial>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId {
    /// One of [`KINDS`].
    pub kind: &'static str,
    /// Unique within the store.
    pub serial: u64,
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.kind, self.serial)
    }
}

impl GroupId {
    /// The stored name of `part` of this group, e.g. `t7.client`.
    pub fn name(&self, part: &str) -> String {
        format!("{self}.{part}")
    }
}

/// `(group, part)` if `name` is a store entry of a known kind, `None` for anything else
/// (`plain`, `tls`, `admin`, a socket unit's name).
pub fn parse_name(name: &str) -> Option<(GroupId, &str)> {
    KINDS.iter().find_map(|kind| {
        let rest = name.strip_prefix(kind)?;
        let (serial, part) = rest.split_once('.')?;
        if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_digit()) || part.is_empty() {
            return None;
        }
        Some((
            GroupId {
                kind,
                serial: serial.parse().ok()?,
            },
            part,
        ))
    })
}

/// Whether systemd accepts `name` as an `FDNAME=`: 1 to [`MAX_NAME`] printable ASCII
/// characters, no `:`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The descriptors of one group passed back by systemd.
#[derive(Debug)]
pub struct StoredGroup {
    /// Which group.
    pub id: GroupId,
    /// `(part, fd)` in the order systemd passed them.
    pub fds: Vec<(String, OwnedFd)>,
}

impl StoredGroup {
    /// Takes the descriptor of `part` out of the group.
    pub fn take(&mut self, part: &str) -> Option<OwnedFd> {
        let i = self.fds.iter().position(|(p, _)| p == part)?;
        Some(self.fds.remove(i).1)
    }

    /// The stored names of every descriptor in the group (to remove them all).
    pub fn names(&self) -> Vec<String> {
        self.fds.iter().map(|(p, _)| self.id.name(p)).collect()
    }

    /// [`StoredGroup::names`] and the names of `parts` not passed: what to remove so
    /// nothing of the group stays in the store, whatever came back of it.
    pub fn names_with(&self, parts: &[&str]) -> Vec<String> {
        let mut names = self.names();
        for part in parts {
            let name = self.id.name(part);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// `Err` naming what is missing, doubled or unknown unless the group holds each of
    /// `parts` exactly once and nothing else.
    pub fn check_parts(&self, parts: &[&str]) -> Result<(), String> {
        let mut problems = Vec::new();
        for part in parts {
            match self.fds.iter().filter(|(p, _)| p == part).count() {
                0 => problems.push(format!("{part} missing")),
                1 => {}
                n => problems.push(format!("{part} stored {n} times")),
            }
        }
        for (p, _) in &self.fds {
            if !parts.contains(&p.as_str()) {
                problems.push(format!("unknown part {p}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join(", "))
        }
    }
}

/// Sorts store entries `(name, fd)` into groups, in serial order. Names that are not
/// entries (see [`parse_name`]) come back unchanged as the first value.
pub fn group(
    passed: impl IntoIterator<Item = (String, OwnedFd)>,
) -> (Vec<(String, OwnedFd)>, Vec<StoredGroup>) {
    let mut others = Vec::new();
    let mut groups: BTreeMap<GroupId, Vec<(String, OwnedFd)>> = BTreeMap::new();
    for (name, fd) in passed {
        match parse_name(&name) {
            Some((id, part)) => groups.entry(id).or_default().push((part.to_owned(), fd)),
            None => others.push((name, fd)),
        }
    }
    let groups = groups
        .into_iter()
        .map(|(id, fds)| StoredGroup { id, fds })
        .collect();
    (others, groups)
}

/// The daemon's handle on the store: whether it is on, how full it is, the next serial.
#[derive(Debug, Default)]
pub struct FdStore {
    enabled: bool,
    /// `$FDSTORE`, when systemd said.
    capacity: Option<usize>,
    /// Descriptors stored (or adopted) and not yet removed.
    used: AtomicUsize,
    /// Their names' share of `LISTEN_FDNAMES` (each name and a `:`).
    name_bytes: AtomicUsize,
    next_serial: AtomicU64,
}

/// What `parts` of group `id` add to `LISTEN_FDNAMES`.
fn names_len(id: GroupId, parts: &[&str]) -> usize {
    parts.iter().map(|p| id.name(p).len() + 1).sum()
}

impl FdStore {
    /// A store that is off: nothing is stored (removals are still sent, so entries a
    /// previous process left can be cleared).
    pub fn disabled() -> Self {
        FdStore::default()
    }

    /// The store as `mode` and the environment (`NOTIFY_SOCKET`, `$FDSTORE`) decide.
    pub fn from_env(mode: FdStoreMode) -> Self {
        let notify = std::env::var_os("NOTIFY_SOCKET").is_some();
        let fdstore = std::env::var(FDSTORE_ENV).ok();
        FdStore::decide(mode, notify, fdstore.as_deref())
    }

    /// [`FdStore::from_env`] with the environment given.
    pub fn decide(mode: FdStoreMode, notify_socket: bool, fdstore: Option<&str>) -> Self {
        let capacity = fdstore.and_then(|v| v.trim().parse::<usize>().ok());
        let enabled = notify_socket
            && match mode {
                FdStoreMode::Off => false,
                FdStoreMode::On => capacity != Some(0),
                FdStoreMode::Auto => capacity.is_some_and(|n| n > 0),
            };
        FdStore {
            enabled,
            capacity,
            ..FdStore::default()
        }
    }

    /// Whether descriptors are stored.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `$FDSTORE`, if systemd set it.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// A serial no group in the store has (see [`FdStore::adopted`]).
    pub fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes a group passed back by systemd: new serials come after it, and its `parts`
    /// count against the capacity until removed (none for a group about to be dropped).
    pub fn adopted(&self, id: GroupId, parts: &[&str]) {
        self.next_serial
            .fetch_max(id.serial.saturating_add(1), Ordering::Relaxed);
        self.used.fetch_add(parts.len(), Ordering::Relaxed);
        self.name_bytes
            .fetch_add(names_len(id, parts), Ordering::Relaxed);
    }

    /// Room for `parts` of group `id`: claims it and returns `true`, or `false` when the
    /// store is off, `$FDSTORE` says it would overflow (systemd would drop them) or the
    /// names would pass [`NAMES_BUDGET`].
    pub fn claim(&self, id: GroupId, parts: &[&str]) -> bool {
        if !self.enabled {
            return false;
        }
        let bytes = names_len(id, parts);
        if self
            .name_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= NAMES_BUDGET).then_some(used + bytes)
            })
            .is_err()
        {
            return false;
        }
        let fds = parts.len();
        let fits = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                self.capacity
                    .map_or(true, |capacity| used + fds <= capacity)
                    .then_some(used + fds)
            })
            .is_ok();
        if !fits {
            self.release(&self.name_bytes, bytes);
        }
        fits
    }

    /// Gives back what [`FdStore::claim`] or [`FdStore::adopted`] counted.
    pub fn unclaim(&self, id: GroupId, parts: &[&str]) {
        self.release(&self.used, parts.len());
        self.release(&self.name_bytes, names_len(id, parts));
    }

    fn release(&self, counter: &AtomicUsize, n: usize) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            Some(used.saturating_sub(n))
        });
    }

    /// Descriptors currently counted as stored.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Stores `fd` as `name` (`FDSTORE=1`, `FDNAME=`, `FDPOLL=0`). A no-op when off.
    pub fn store(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if !valid_name(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid fd store name {name:?}"),
            ));
        }
        sd_notify::notify_with_fds(
            false,
            &[
                NotifyState::FdStore,
                NotifyState::FdName(name),
                NotifyState::Custom("FDPOLL=0"),
            ],
            &[fd],
        )
    }

    /// Removes every stored descriptor named `name` (`FDSTOREREMOVE=1`, `FDNAME=`).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        sd_notify::notify(
            false,
            &[NotifyState::FdStoreRemove, NotifyState::FdName(name)],
        )
    }

    /// Stores each `(part, fd)` of group `id`; on a failure removes what was stored
    /// and returns the error.
    pub fn store_group(&self, id: GroupId, fds: &[(&str, BorrowedFd<'_>)]) -> io::Result<()> {
        for (i, (part, fd)) in fds.iter().enumerate() {
            if let Err(e) = self.store(&id.name(part), *fd) {
                self.remove_names(fds[..i].iter().map(|(p, _)| id.name(p)));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes `parts` of group `id` (failures only logged: the group is going away).
    pub fn remove_group(&self, id: GroupId, parts: &[&str]) {
        self.remove_names(parts.iter().map(|p| id.name(p)));
    }

    /// Removes every name (failures only logged).
    pub fn remove_names(&self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if let Err(e) = self.remove(&name) {
                debug!(name = %name, error = %e, "FDSTOREREMOVE failed");
            }
        }
    }
}

/// A small state record in a memfd, stored with its group: one JSON value, rewritten in
/// place (`pwrite` at 0, then `ftruncate`). A reader takes the first JSON value, so a
/// longer old record left behind a shorter new one by a crash between the two calls
/// still reads as the new one.
#[derive(Debug)]
pub struct StateFile {
    fd: OwnedFd,
}

impl StateFile {
    /// A new close-on-exec memfd (`name` shows in `/proc/<pid>/fd`) holding `value`.
    pub fn create(name: &str, value: &impl Serialize) -> io::Result<Self> {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
        let file = StateFile { fd };
        file.write(value)?;
        Ok(file)
    }

    /// Takes a descriptor passed back by systemd; it must be a regular file (a memfd).
    pub fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "state record is not a regular file",
            ));
        }
        Ok(StateFile { fd })
    }

    /// Replaces the record with `value`.
    pub fn write(&self, value: &impl Serialize) -> io::Result<()> {
        let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
        let mut written = 0;
        while written < bytes.len() {
            match rustix::io::pwrite(&self.fd, &bytes[written..], written as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        rustix::fs::ftruncate(&self.fd, bytes.len() as u64)?;
        Ok(())
    }

    /// The record (the first JSON value in the file).
    pub fn read<T: DeserializeOwned>(&self) -> io::Result<T> {
        let bytes = self.bytes(1 << 20)?;
        serde_json::Deserializer::from_slice(&bytes)
            .into_iter::<T>()
            .next()
            .unwrap_or_else(|| Err(serde::de::Error::custom("empty state record")))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The whole file, read by position (the offset is shared with every other
    /// descriptor of it); refused when longer than `max` bytes.
    pub fn bytes(&self, max: usize) -> io::Result<Vec<u8>> {
        let size = rustix::fs::fstat(&self.fd)?.st_size;
        let size = usize::try_from(size)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{size} bytes, more than {max}"),
                )
            })?;
        let mut bytes = vec![0u8; size];
        let mut read = 0;
        while read < size {
            match rustix::io::pread(&self.fd, &mut bytes[read..], read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        bytes.truncate(read);
        Ok(bytes)
    }
}

impl AsFd for StateFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A new close-on-exec memfd named `name` holding what `write` puts in it (a resumable
/// session's snapshot: raw bytes, written once).
pub fn memfd_with(
    name: &str,
    write: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    write(&mut file)?;
    Ok(file.into())
}

/// A stored socket that must be a connected TCP socket; made non-blocking.
pub fn connected_tcp(fd: OwnedFd) -> Result<std::net::TcpStream, String> {
    let socket = socket2::Socket::from(fd);
    let kind = socket.r#type().map_err(|e| format!("not a socket: {e}"))?;
    let domain = socket.domain().map_err(|e| format!("not a socket: {e}"))?;
    if kind != socket2::Type::STREAM
        || !(domain == socket2::Domain::IPV4 || domain == socket2::Domain::IPV6)
    {
        return Err("not a TCP socket".to_owned());
    }
    if socket.is_listener().unwrap_or(false) {
        return Err("a listening socket, not a connection".to_owned());
    }
    socket
        .peer_addr()
        .map_err(|e| format!("not connected: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make it non-blocking: {e}"))?;
    Ok(socket.into())
}

/// A stored pipe end that must be the read (`write == false`) or write end of a pipe;
/// returns the pipe's inode, so the two ends can be matched.
pub fn pipe_end(fd: &OwnedFd, write: bool) -> Result<u64, String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Fifo {
        return Err("not a pipe".to_owned());
    }
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| format!("F_GETFL: {e}"))?;
    let mode = flags & rustix::fs::OFlags::RWMODE;
    let expected = if write {
        rustix::fs::OFlags::WRONLY
    } else {
        rustix::fs::OFlags::RDONLY
    };
    if mode != expected {
        return Err(format!(
            "not the {} end of a pipe",
            if write { "write" } else { "read" }
        ));
    }
    Ok(stat.st_ino)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn fd() -> OwnedFd {
        rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd")
    }

    #[test]
    fn names_of_entries_and_of_everything_else() {
        let id = GroupId {
            kind: PLAIN_TUNNEL,
            serial: 42,
        };
        assert_eq!(id.name("up.r"), "t42.up.r");
        assert_eq!(parse_name("t42.up.r"), Some((id, "up.r")));
        assert_eq!(parse_name("t0.client").map(|(g, _)| g.serial), Some(0));
        for other in [
            "plain",
            "tls",
            "admin",
            "unknown",
            "t.client",
            "t42",
            "t42.",
            "tx.client",
            "t-1.client",
            "t99999999999999999999999.client",
            "hakuriver-ssh-proxy.socket",
            "x42.client",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(valid_name("t1.client"));
        assert!(!valid_name("t1:client"));
        assert!(!valid_name(""));
        assert!(!valid_name("t1 client"));
        assert!(!valid_name(&"t".repeat(256)));
    }

    #[test]
    fn passed_fds_are_grouped_per_tunnel_in_serial_order() {
        let passed = vec![
            ("plain".to_owned(), fd()),
            ("t9.client".to_owned(), fd()),
            ("t2.runner".to_owned(), fd()),
            ("tls".to_owned(), fd()),
            ("t9.runner".to_owned(), fd()),
            ("t2.client".to_owned(), fd()),
            ("t2.client".to_owned(), fd()),
        ];
        let (others, groups) = group(passed);
        assert_eq!(
            others.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["plain", "tls"]
        );
        assert_eq!(
            groups.iter().map(|g| g.id.serial).collect::<Vec<_>>(),
            [2, 9]
        );
        assert_eq!(groups[1].check_parts(&["client", "runner"]), Ok(()));
        assert_eq!(
            groups[0].check_parts(&["client", "runner", "state"]),
            Err("client stored 2 times, state missing".to_owned())
        );
        assert_eq!(
            groups[1].check_parts(&["client"]),
            Err("unknown part runner".to_owned())
        );
        assert_eq!(groups[0].names(), ["t2.runner", "t2.client", "t2.client"]);
        let mut g = groups.into_iter().next().expect("group");
        assert!(g.take("runner").is_some());
        assert!(g.take("runner").is_none());
    }

    #[test]
    fn enabled_by_mode_notify_socket_and_fdstore() {
        use FdStoreMode::*;
        let on = |mode, notify, env| FdStore::decide(mode, notify, env).is_enabled();
        assert!(on(Auto, true, Some("70007")));
        assert!(!on(Auto, true, None), "systemd < 254 sets no $FDSTORE");
        assert!(!on(Auto, true, Some("0")));
        assert!(!on(Auto, false, Some("7")), "no NOTIFY_SOCKET: no systemd");
        assert!(on(On, true, None));
        assert!(
            !on(On, true, Some("0")),
            "FileDescriptorStoreMax=0 drops everything"
        );
        assert!(!on(On, false, None));
        assert!(!on(Off, true, Some("7")));
    }

    #[test]
    fn claims_respect_fdstore_and_serials_follow_adopted_groups() {
        let parts = [
            "client", "runner", "up.r", "up.w", "down.r", "down.w", "state",
        ];
        let store = FdStore::decide(FdStoreMode::Auto, true, Some("14"));
        assert_eq!(store.capacity(), Some(14));
        let id = |serial| GroupId {
            kind: PLAIN_TUNNEL,
            serial,
        };
        store.adopted(id(41), &parts);
        assert_eq!(store.next_serial(), 42);
        assert_eq!(store.next_serial(), 43);
        assert!(store.claim(id(42), &parts));
        assert!(!store.claim(id(43), &parts), "14 descriptors in use");
        store.unclaim(id(42), &parts);
        assert!(store.claim(id(43), &parts));
        assert_eq!(store.used(), 14);
        assert!(!FdStore::disabled().claim(id(1), &parts));
        // Without $FDSTORE (systemd 252) the names' room in LISTEN_FDNAMES is the limit.
        let store = FdStore::decide(FdStoreMode::On, true, None);
        let mut kept = 0u64;
        while store.claim(id(1000 + kept), &parts) {
            kept += 1;
        }
        // t1000.client:t1000.runner:... is 86 bytes a tunnel.
        assert_eq!(kept, (NAMES_BUDGET / 86) as u64);
        store.unclaim(id(1000), &parts);
        assert!(store.claim(id(5000), &parts));
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Record {
        name: String,
        bytes: u64,
    }

    #[test]
    fn state_record_is_rewritten_in_place_and_read_back_by_a_new_owner() {
        let long = Record {
            name: "x".repeat(100),
            bytes: 1,
        };
        let file = StateFile::create("t1.state", &long).expect("create");
        assert_eq!(file.read::<Record>().expect("read"), long);
        let short = Record {
            name: "y".into(),
            bytes: u64::MAX,
        };
        file.write(&short).expect("rewrite");
        // Another owner of the same memfd (the next process) sees the last write.
        let adopted =
            StateFile::adopt(file.as_fd().try_clone_to_owned().expect("dup")).expect("adopt");
        assert_eq!(adopted.read::<Record>().expect("read"), short);
        // A crash between pwrite and ftruncate leaves the old tail: still the new record.
        let bytes = serde_json::to_vec(&short).expect("json");
        file.write(&long).expect("rewrite");
        rustix::io::pwrite(&file.fd, &bytes, 0).expect("pwrite");
        assert_eq!(adopted.read::<Record>().expect("read"), short);
        // Not a memfd, or not a record: refused.
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        assert!(StateFile::adopt(r).is_err());
        let garbage = StateFile::create("g", &"just a string").expect("create");
        assert!(garbage.read::<Record>().is_err());
    }

    #[test]
    fn pipe_ends_and_sockets_are_checked() {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        let ino = pipe_end(&r, false).expect("read end");
        assert_eq!(pipe_end(&w, true), Ok(ino));
        assert!(pipe_end(&r, true).is_err());
        assert!(pipe_end(&fd(), false).is_err());
        assert!(connected_tcp(fd()).is_err());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        assert!(connected_tcp(OwnedFd::from(client)).is_ok());
        assert!(connected_tcp(OwnedFd::from(listener)).is_err());
    }
}
