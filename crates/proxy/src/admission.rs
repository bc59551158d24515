//! Who may connect and how often: the client allowlist, the connection limits (total and
//! per address) and the per-address token bucket of task lookups.
//!
//! An admitted connection holds a [`Slot`]; dropping it gives the place back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;
use crate::error::Refusal;
use crate::server::ProxyState;

/// Above this many tracked addresses, buckets that have refilled completely are dropped.
const MAX_TRACKED_ADDRESSES: usize = 4096;

/// The limits and what counts against them.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    connections: Mutex<Connections>,
    lookups: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Open connections, in total and per client address.
#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A token bucket of task lookups for one client address.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Admission {
    /// Nothing counted yet.
    pub(crate) fn new(limits: Limits) -> Self {
        Admission {
            limits,
            connections: Mutex::new(Connections::default()),
            lookups: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may connect at all (`allowed_clients`).
    pub(crate) fn allowed(&self, ip: IpAddr) -> bool {
        self.limits.allowed_clients.is_empty()
            || self
                .limits
                .allowed_clients
                .iter()
                .any(|net| net.contains(ip))
    }

    /// Takes one lookup from `ip`'s bucket, or refuses when it is empty.
    pub(crate) fn take_lookup(&self, ip: IpAddr) -> Result<(), Refusal> {
        let per_minute = self.limits.lookups_per_minute_per_ip;
        if per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_minute);
        let refill_per_sec = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * refill_per_sec < capacity
            });
        }
        let bucket = buckets.entry(ip.to_canonical()).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * refill_per_sec).min(capacity);
        bucket.updated = now;
        if bucket.tokens < 1.0 {
            return Err(Refusal::TooManyLookups);
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Checks the allowlist and counts a new connection against the limits, or says
    /// which rule refused it.
    pub(crate) fn admit(state: &Arc<ProxyState>, ip: IpAddr) -> Result<Slot, Refusal> {
        let admission = &state.admission;
        if !admission.allowed(ip) {
            return Err(Refusal::NotAllowed);
        }
        let mut c = admission
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if c.total >= admission.limits.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        let from_ip = c.per_ip.entry(ip).or_insert(0);
        if *from_ip >= admission.limits.max_connections_per_ip {
            return Err(Refusal::TooManyFromPeer);
        }
        *from_ip += 1;
        c.total += 1;
        Ok(Slot {
            state: Arc::clone(state),
            ip,
        })
    }

    /// Counts a tunnel adopted from the fd store, whatever the limits say: it is open
    /// already, and refusing it would drop it.
    pub(crate) fn adopt(state: &Arc<ProxyState>, ip: IpAddr) -> Slot {
        let mut c = state
            .admission
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *c.per_ip.entry(ip).or_insert(0) += 1;
        c.total += 1;
        Slot {
            state: Arc::clone(state),
            ip,
        }
    }

    fn release(&self, ip: IpAddr) {
        let mut c = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

/// A connection's place in the limits, released on drop. It also carries the shared
/// state, so a connection's task holds one pointer for both.
pub(crate) struct Slot {
    state: Arc<ProxyState>,
    ip: IpAddr,
}

impl Slot {
    /// The proxy's shared state.
    pub(crate) fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.admission.release(self.ip);
    }
}
