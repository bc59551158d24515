//! `hakuriver-ssh-proxy`: the HakuRiver Host SSH proxy.
//!
//! A client sends `REQUEST_TUNNEL <task_id>\n`; the proxy looks the task up in
//! HakuRiver's SQLite database, connects to the VPS container's sshd on its runner,
//! answers `SUCCESS\n` (or `ERROR <message>\n` and closes), then relays bytes both ways.
//! It never sees SSH plaintext: the user's `ssh` authenticates end to end with the
//! container.
//!
//! # Layout
//! - [`config`]: HakuRiver's Host `config.toml` plus our `[ssh_proxy]` section, resolved
//!   with command-line overrides into [`config::Settings`].
//! - `listener`: binding the configured addresses, or adopting systemd's sockets (and
//!   the fd-store entries passed with them).
//! - [`fdstore`]: systemd's file-descriptor store: names, groups, store/remove
//!   messages, memfd state records.
//! - `handover`: plain tunnels in the fd store: kept at setup, adopted at start,
//!   handed over at SIGTERM.
//! - [`directory`]: [`directory::TaskDirectory`], read-only lookups in HakuRiver's or
//!   KohakuRiver's DB (schema detected per file), and KohakuRiver 1.0's users, tokens and
//!   per-VPS access rule.
//! - `access`: who may ask for what under `[ssh_proxy.auth]` (tokens, names, LIST).
//! - [`error`]: [`error::Refusal`], whose `Display` is the wire text after `ERROR `.
//! - [`proxy_protocol`]: PROXY protocol v1/v2 headers from trusted load balancers.
//! - [`server`]: [`server::serve`], the accept loops, each connection's lifecycle and
//!   drain, with [`server::Stats`].
//! - `admin`: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
//! - `admission`: the allowlist, connection limits and the per-address lookup bucket.
//! - `handshake`: request read, lookup, runner connect, `SUCCESS`/`ERROR`.
//! - `metrics`: the Prometheus registry behind `/metrics`.
//! - `tls`: the serving certificate (files or self-signed) and SIGHUP reload.
//! - `notify`: sd_notify readiness, status, reload, stop and watchdog messages.
//! - `logging`: text, JSON or journald output.
//! - [`cli`]: the command line and the `serve`, `check`, `fingerprint`, `health` commands.

pub(crate) mod access;
mod admin;
mod admission;
pub mod cli;
pub mod config;
pub mod directory;
pub mod error;
pub mod fdstore;
mod handover;
mod handshake;
pub(crate) mod listener;
pub(crate) mod logging;
mod metrics;
pub(crate) mod notify;
pub mod proxy_protocol;
pub mod server;
pub(crate) mod tls;
