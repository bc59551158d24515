//! Plain tunnels in systemd's fd store, so a restart or crash of the daemon drops none.
//!
//! A plain tunnel (client TCP ⇄ runner TCP) under a store that is on gets its own splice
//! pipes (`relay::TunnelPipes`) at setup, and its seven descriptors go to the store as
//! group `t<serial>` ([`PARTS`]): the two sockets, the four pipe ends (bytes in flight
//! live there, never in the process) and a memfd [`TunnelRecord`]. When the tunnel ends
//! they are removed. At SIGTERM the relays are dropped where they stand and each record
//! is rewritten with its byte counts; the next process adopts the groups ([`adopt_all`])
//! and relays on. After a SIGKILL the records hold what was written last (the counts of
//! the last handover, or zero), the bytes are all there all the same.

use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hakuriver_tunnel::relay::TunnelPipes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::fdstore::{self, FdStore, GroupId, StateFile, StoredGroup, PLAIN_TUNNEL};

/// The client socket.
pub(crate) const CLIENT: &str = "client";
/// The runner socket.
pub(crate) const RUNNER: &str = "runner";
/// Upward pipe (client → runner), read end.
pub(crate) const UP_R: &str = "up.r";
/// Upward pipe, write end.
pub(crate) const UP_W: &str = "up.w";
/// Downward pipe (runner → client), read end.
pub(crate) const DOWN_R: &str = "down.r";
/// Downward pipe, write end.
pub(crate) const DOWN_W: &str = "down.w";
/// The [`TunnelRecord`] memfd.
pub(crate) const STATE: &str = "state";
/// Every part of a plain tunnel's group, in the order they are stored.
pub(crate) const PARTS: [&str; 7] = [CLIENT, RUNNER, UP_R, UP_W, DOWN_R, DOWN_W, STATE];

/// What a stored tunnel's log lines and counters need after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TunnelRecord {
    /// The HakuRiver task.
    pub(crate) task_id: String,
    /// The client's address (after any PROXY header).
    pub(crate) peer: SocketAddr,
    /// The runner's address, as logged.
    pub(crate) runner: String,
    /// Bytes relayed client → runner by earlier processes.
    pub(crate) bytes_up: u64,
    /// Bytes relayed runner → client by earlier processes.
    pub(crate) bytes_down: u64,
    /// When the tunnel opened, wall clock (milliseconds since the Unix epoch).
    pub(crate) started_unix_ms: u64,
    /// The KohakuRiver user (auth mode).
    pub(crate) user: Option<String>,
    /// Clean handovers (SIGTERM) so far.
    #[serde(default)]
    pub(crate) handovers: u32,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A tunnel's place in the store.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) id: GroupId,
    pub(crate) state: StateFile,
}

/// A plain tunnel relayed over its own pipes: [`Kept`] in the store, or not (the store
/// refused it, or is off and the tunnel was adopted from a previous process).
#[derive(Debug)]
pub(crate) struct OwnPipesTunnel {
    pub(crate) client: TcpStream,
    pub(crate) runner: TcpStream,
    pub(crate) pipes: TunnelPipes,
    pub(crate) record: TunnelRecord,
    pub(crate) kept: Option<Kept>,
}

/// Room in the store for one more tunnel: its group id, claimed, or `None` when the
/// store is off or full (the tunnel then takes the pooled path and will not survive a
/// restart).
pub(crate) fn claim(store: &FdStore) -> Option<GroupId> {
    let id = GroupId {
        kind: PLAIN_TUNNEL,
        serial: store.next_serial(),
    };
    store.claim(id, &PARTS).then_some(id)
}

/// Stores a new tunnel's descriptors as group `id` (claimed with [`claim`]): writes the
/// record, sends the seven entries (undoing the ones sent if one fails, and the claim).
pub(crate) fn keep(
    store: &FdStore,
    id: GroupId,
    client: &TcpStream,
    runner: &TcpStream,
    pipes: &TunnelPipes,
    record: &TunnelRecord,
) -> io::Result<Kept> {
    let stored = StateFile::create(&id.name(STATE), record).and_then(|state| {
        use std::os::fd::AsFd;
        let [up_r, up_w, down_r, down_w] = pipes.fds();
        store.store_group(
            id,
            &[
                (CLIENT, client.as_fd()),
                (RUNNER, runner.as_fd()),
                (UP_R, up_r),
                (UP_W, up_w),
                (DOWN_R, down_r),
                (DOWN_W, down_w),
                (STATE, state.as_fd()),
            ],
        )?;
        Ok(Kept { id, state })
    });
    if stored.is_err() {
        store.unclaim(id, &PARTS);
    }
    stored
}

/// Removes a tunnel's group from the store (its peers see the sockets close only then).
pub(crate) fn forget(store: &FdStore, kept: &Kept) {
    store.remove_group(kept.id, &PARTS);
    store.unclaim(kept.id, &PARTS);
}

/// A stored tunnel checked and taken over, sockets not yet registered with the runtime.
#[derive(Debug)]
pub(crate) struct Adopted {
    pub(crate) client: std::net::TcpStream,
    pub(crate) runner: std::net::TcpStream,
    pub(crate) pipes: TunnelPipes,
    pub(crate) record: TunnelRecord,
    pub(crate) kept: Option<Kept>,
}

impl Adopted {
    /// Registers the sockets with the runtime.
    pub(crate) fn into_tunnel(self) -> io::Result<OwnPipesTunnel> {
        Ok(OwnPipesTunnel {
            client: TcpStream::from_std(self.client)?,
            runner: TcpStream::from_std(self.runner)?,
            pipes: self.pipes,
            record: self.record,
            kept: self.kept,
        })
    }
}

/// Checks one passed group and takes it over: every part exactly once, connected TCP
/// sockets, the read and write ends of two distinct pipes, a readable record.
pub(crate) fn adopt(mut group: StoredGroup) -> Result<Adopted, String> {
    if group.id.kind != PLAIN_TUNNEL {
        return Err(format!("unknown kind {:?}", group.id.kind));
    }
    group.check_parts(&PARTS)?;
    let mut take = |part: &str| group.take(part).ok_or_else(|| format!("{part} missing"));
    let client = take(CLIENT)?;
    let runner = take(RUNNER)?;
    let (up_r, up_w, down_r, down_w) = (take(UP_R)?, take(UP_W)?, take(DOWN_R)?, take(DOWN_W)?);
    let state = take(STATE)?;
    let client = fdstore::connected_tcp(client).map_err(|e| format!("{CLIENT}: {e}"))?;
    let runner = fdstore::connected_tcp(runner).map_err(|e| format!("{RUNNER}: {e}"))?;
    let ends = [
        (&up_r, UP_R, false),
        (&up_w, UP_W, true),
        (&down_r, DOWN_R, false),
        (&down_w, DOWN_W, true),
    ];
    let mut inodes = [0u64; 4];
    for (i, (fd, part, write)) in ends.into_iter().enumerate() {
        inodes[i] = fdstore::pipe_end(fd, write).map_err(|e| format!("{part}: {e}"))?;
    }
    if inodes[0] != inodes[1] || inodes[2] != inodes[3] || inodes[0] == inodes[2] {
        return Err("pipe ends do not pair up".to_owned());
    }
    let state = StateFile::adopt(state).map_err(|e| format!("{STATE}: {e}"))?;
    let record: TunnelRecord = state.read().map_err(|e| format!("{STATE}: {e}"))?;
    record
        .task_id
        .parse::<hakuriver_tunnel::TaskId>()
        .map_err(|e| format!("{STATE}: task id {:?}: {e}", record.task_id))?;
    let pipes =
        TunnelPipes::from_fds(up_r, up_w, down_r, down_w).map_err(|e| format!("pipes: {e}"))?;
    Ok(Adopted {
        client,
        runner,
        pipes,
        record,
        kept: Some(Kept {
            id: group.id,
            state,
        }),
    })
}

/// Adopts every passed group that checks out. A broken or incomplete group is closed
/// and removed from the store, with one warning line. With the store off the adopted
/// tunnels still run to their end here, but leave the store at once (they will not
/// survive the next restart).
pub(crate) fn adopt_all(store: &FdStore, groups: Vec<StoredGroup>) -> Vec<Adopted> {
    let mut adopted = Vec::with_capacity(groups.len());
    for group in groups {
        let id = group.id;
        let names = group.names_with(&PARTS);
        // Serials continue after every group seen, broken ones too.
        store.adopted(id, &[]);
        match adopt(group) {
            Ok(mut tunnel) => {
                if store.is_enabled() {
                    store.adopted(id, &PARTS);
                } else {
                    store.remove_names(names);
                    tunnel.kept = None;
                }
                info!(
                    group = %id,
                    task_id = %tunnel.record.task_id,
                    peer = %tunnel.record.peer,
                    runner = %tunnel.record.runner,
                    bytes_up = tunnel.record.bytes_up,
                    bytes_down = tunnel.record.bytes_down,
                    "tunnel adopted from the fd store"
                );
                adopted.push(tunnel);
            }
            Err(why) => {
                warn!(group = %id, error = %why, "broken tunnel in the fd store; closed and removed");
                store.remove_names(names);
            }
        }
    }
    adopted
}
