//! The proxy's config parser on arbitrary text. Used by the `config_parser` fuzz target
//! and replayed on stable by `crates/proxy/tests/fuzz_corpus.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};

use hakuriver_ssh_proxy::config::{from_str, Overrides};

/// Any UTF-8 text: `from_str` returns (no panic), and settings it accepts are usable:
/// at least one listener, every timeout and limit non-zero.
///
/// Inputs that would make it resolve a host name are skipped: that is a DNS query per
/// execution (slow, and fuzzer-made names on the network), and resolution is the
/// system's code, not ours.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if resolves_names(text) {
        return;
    }
    if let Ok(settings) = from_str(text, &Overrides::default()) {
        assert!(!settings.listeners.is_empty());
        assert!(!settings.timeouts.request.is_zero());
        assert!(!settings.timeouts.connect.is_zero());
        assert!(!settings.timeouts.tls_handshake.is_zero());
        assert!(settings.timeouts.idle.map_or(true, |d| !d.is_zero()));
        assert!(settings.limits.max_connections > 0);
        assert!(settings.limits.max_connections_per_ip > 0);
    }
}

/// Whether the config names a bind or listen host that is not an IP literal.
pub fn resolves_names(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return false; // the proxy's parser fails on the same TOML before resolving
    };
    let mut hosts = Vec::new();
    if let Some(bind) = table
        .get("network")
        .and_then(|n| n.get("host_bind_ip"))
        .and_then(toml::Value::as_str)
    {
        hosts.push(bind.to_owned());
    }
    let proxy = table.get("ssh_proxy");
    let lists = [
        proxy.and_then(|p| p.get("listen")),
        proxy
            .and_then(|p| p.get("tls"))
            .and_then(|t| t.get("listen")),
    ];
    for list in lists.into_iter().flatten() {
        for entry in list.as_array().into_iter().flatten() {
            let Some(entry) = entry.as_str() else {
                continue;
            };
            if entry.parse::<SocketAddr>().is_ok() {
                continue;
            }
            match entry.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => hosts.push(host.to_owned()),
                _ => {} // rejected before any lookup
            }
        }
    }
    hosts.iter().any(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_err()
    })
}
