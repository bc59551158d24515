//! Log output: text or JSON on stderr, or the native journald protocol.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// `SYSLOG_IDENTIFIER` in the journal.
pub const SYSLOG_IDENTIFIER: &str = "hakuriver-ssh-proxy";

/// Whether stderr is the journal stream systemd set up (`JOURNAL_STREAM=dev:ino`).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let value = value.to_string_lossy();
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata());
    match (meta, dev.parse::<u64>(), ino.parse::<u64>()) {
        (Ok(meta), Ok(dev), Ok(ino)) => meta.dev() == dev && meta.ino() == ino,
        _ => false,
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the level (`info`, or `debug`
/// with `-v`).
pub fn init(format: LogFormat, verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let mut fallback_warning = None;
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                // INFO is LOG_INFO, not the crate's default LOG_NOTICE: a tunnel opening
                // is routine, and `journalctl -p notice` should show only what matters.
                let priorities = PriorityMappings {
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    ..PriorityMappings::new()
                };
                let layer = layer
                    .with_priority_mappings(priorities)
                    .with_field_prefix(None)
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => fallback_warning = Some(e),
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    if format == LogFormat::Json {
        tracing_subscriber::registry()
            .with(filter())
            .with(stderr.json().flatten_event(true))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter())
            .with(stderr)
            .init();
    }
    if let Some(e) = fallback_warning {
        tracing::warn!(error = %e, "journald socket unavailable; logging to stderr");
    }
}
