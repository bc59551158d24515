//! Prometheus metrics, served by the admin listener at `/metrics`.
//!
//! Every counter is updated at a connection's milestones (accept, TLS handshake,
//! `SUCCESS`, close), never per byte: bytes relayed are added once when a tunnel closes,
//! from the relay's own totals. Label values come from fixed sets ([`Transport`],
//! [`REASONS`]), never from what a client sent.

use std::time::Duration;

use hakuriver_tunnel::RequestError;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::error::Refusal;

/// Prefix of every metric name.
pub(crate) const PREFIX: &str = "hakuriver_ssh_proxy";

/// How a client reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// The plain protocol.
    Plain,
    /// TLS, then the plain protocol inside.
    Tls,
}

impl Transport {
    const ALL: [Transport; 2] = [Transport::Plain, Transport::Tls];

    /// The `transport` label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls => "tls",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// Not finished within `tls_handshake_timeout_secs`.
    Timeout,
    /// rustls refused it or the socket failed.
    Error,
}

/// Every `reason` label value, in [`reason_index`] order.
pub(crate) const REASONS: [&str; 32] = [
    "invalid_request",
    "invalid_task_id",
    "unreadable_request",
    "request_timeout",
    "tls_on_plain_port",
    "not_found",
    "not_vps",
    "inactive",
    "no_node",
    "no_ssh_port",
    "node_offline",
    "bad_runner_url",
    "database_error",
    "internal_error",
    "connect_timeout",
    "connect_refused",
    "connect_failed",
    "too_many_connections",
    "too_many_lookups",
    "not_allowed",
    "too_many_from_peer",
    "bad_token",
    "account_disabled",
    "role_too_low",
    "not_found_or_forbidden",
    "no_such_name",
    "ambiguous_name",
    "names_unsupported",
    "auth_unsupported",
    "auth_required",
    "token_over_plain",
    "listing_disabled",
];

/// The fixed `reason` label of a refusal (an index into [`REASONS`]).
pub(crate) fn reason_index(refusal: &Refusal) -> usize {
    match refusal {
        Refusal::Request(RequestError::InvalidFormat) => 0,
        Refusal::Request(RequestError::InvalidTaskId) => 1,
        Refusal::Request(RequestError::Unreadable) => 2,
        Refusal::Request(RequestError::Timeout) => 3,
        Refusal::TlsOnPlainPort => 4,
        Refusal::NotFound(_) => 5,
        Refusal::NotVps(_) => 6,
        Refusal::Inactive(..) => 7,
        Refusal::NoNode(_) => 8,
        Refusal::NoSshPort(_) => 9,
        Refusal::NodeOffline(_) => 10,
        Refusal::BadRunnerUrl(_) => 11,
        Refusal::Database(_) => 12,
        Refusal::Internal(_) => 13,
        Refusal::ConnectTimeout(_) => 14,
        Refusal::ConnectRefused(..) => 15,
        Refusal::ConnectFailed(_) => 16,
        Refusal::TooManyConnections => 17,
        Refusal::TooManyLookups => 18,
        Refusal::NotAllowed => 19,
        Refusal::TooManyFromPeer => 20,
        Refusal::BadToken => 21,
        Refusal::AccountDisabled(_) => 22,
        Refusal::RoleTooLow(_) => 23,
        Refusal::NotFoundOrForbidden(..) => 24,
        Refusal::NoSuchName(_) => 25,
        Refusal::AmbiguousName(..) => 26,
        Refusal::NamesUnsupported => 27,
        Refusal::AuthUnsupported(_) => 28,
        Refusal::AuthRequired => 29,
        Refusal::TokenOverPlain => 30,
        Refusal::ListingDisabled => 31,
        // Its wire text is HakuRiver's "Failed to connect": counted with those.
        Refusal::PortOutOfRange(..) => 16,
    }
}

type Labels = [(&'static str, &'static str); 1];

/// The registry and a handle on each labelled series, resolved once at start so that
/// counting never takes the families' locks.
pub(crate) struct Metrics {
    registry: Registry,
    open_tunnels: [Gauge; 2],
    tunnels_opened: [Counter; 2],
    refusals: Vec<Counter>,
    bytes_up: Counter,
    bytes_down: Counter,
    setup: Histogram,
    lookup: Histogram,
    tls_failures: [Counter; 2],
    database_errors: Counter,
    accept_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let open = Family::<Labels, Gauge>::default();
        registry.register(
            "open_tunnels",
            "Tunnels relaying now, by transport",
            open.clone(),
        );
        let opened = Family::<Labels, Counter>::default();
        registry.register(
            "tunnels_opened",
            "Tunnels that got SUCCESS, by transport",
            opened.clone(),
        );
        let refusals = Family::<Labels, Counter>::default();
        registry.register(
            "refusals",
            "Connections refused (ERROR line or closed at accept), by reason",
            refusals.clone(),
        );
        let bytes = Family::<Labels, Counter>::default();
        registry.register(
            "relayed_bytes",
            "Bytes relayed by closed tunnels; up: client to runner, down: runner to client",
            bytes.clone(),
        );
        let setup = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "setup_duration_seconds",
            "From accept to SUCCESS (TLS handshake, request, lookup, runner connect)",
            setup.clone(),
        );
        let lookup = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "lookup_duration_seconds",
            "Task lookups in the database",
            lookup.clone(),
        );
        let tls = Family::<Labels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that did not complete, by kind (timeout, error)",
            tls.clone(),
        );
        let database_errors = Counter::default();
        registry.register(
            "database_errors",
            "Lookups that could not read the database",
            database_errors.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accept calls (EMFILE, ENFILE, ENOBUFS)",
            accept_errors.clone(),
        );
        registry.register(
            "build",
            "The running build",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let by = |family: &Family<Labels, Counter>, key, value| {
            family.get_or_create(&[(key, value)]).clone()
        };
        Metrics {
            open_tunnels: Transport::ALL
                .map(|t| open.get_or_create(&[("transport", t.name())]).clone()),
            tunnels_opened: Transport::ALL.map(|t| by(&opened, "transport", t.name())),
            refusals: REASONS.iter().map(|r| by(&refusals, "reason", r)).collect(),
            bytes_up: by(&bytes, "direction", "up"),
            bytes_down: by(&bytes, "direction", "down"),
            setup,
            lookup,
            tls_failures: [by(&tls, "kind", "timeout"), by(&tls, "kind", "error")],
            database_errors,
            accept_errors,
            registry,
        }
    }
}

impl Metrics {
    pub(crate) fn tunnel_opened(&self, transport: Transport, setup: Duration) {
        self.open_tunnels[transport.index()].inc();
        self.tunnels_opened[transport.index()].inc();
        self.setup.observe(setup.as_secs_f64());
    }

    /// A tunnel adopted from the fd store is open again (opened by an earlier process).
    pub(crate) fn tunnel_adopted(&self, transport: Transport) {
        self.open_tunnels[transport.index()].inc();
    }

    pub(crate) fn tunnel_closed(&self, transport: Transport, up: u64, down: u64) {
        self.open_tunnels[transport.index()].dec();
        self.bytes_up.inc_by(up);
        self.bytes_down.inc_by(down);
    }

    pub(crate) fn refused(&self, refusal: &Refusal) {
        if let Some(counter) = self.refusals.get(reason_index(refusal)) {
            counter.inc();
        }
        if let Refusal::Database(_) = refusal {
            self.database_errors.inc();
        }
    }

    pub(crate) fn tls_failed(&self, kind: TlsFailure) {
        self.tls_failures[kind as usize].inc();
    }

    pub(crate) fn lookup_took(&self, took: Duration) {
        self.lookup.observe(took.as_secs_f64());
    }

    pub(crate) fn accept_failed(&self) {
        self.accept_errors.inc();
    }

    /// The exposition text (OpenMetrics, which Prometheus reads), ending in `# EOF`.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in REASONS {
            assert!(r.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{r}");
            assert!(seen.insert(r), "{r} twice");
        }
        assert_eq!(REASONS[reason_index(&Refusal::NotAllowed)], "not_allowed");
        assert_eq!(
            REASONS[reason_index(&Refusal::Request(RequestError::Timeout))],
            "request_timeout"
        );
    }
}
