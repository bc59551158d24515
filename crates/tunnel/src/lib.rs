//! Pieces shared by the `hakuriver-ssh` client and the `hakuriver-ssh-proxy` daemon.
//!
//! # Layout
//! - [`protocol`]: the HakuRiver 0.3.0 tunnel handshake (`REQUEST_TUNNEL <id>\n` →
//!   `SUCCESS\n` | `ERROR <message>\n`): [`TaskId`], [`Request`], [`Response`], pure
//!   parse/encode functions and the capped line reader both sides use.
//! - [`relay`](mod@relay): the one byte relay every data path uses (proxy client⇄runner, client
//!   ssh⇄tunnel, stdio⇄tunnel), with half-close and byte counts.
//! - [`resume`]: resumable tunnels between our client and our proxy (negotiated; the
//!   plain protocol is untouched): keys, resume lines, frames and the session engine.
//! - [`net`]: socket options both legs of a tunnel get (`TCP_NODELAY`, keepalive).
//! - [`tls`]: rustls configurations, self-signed certificates, SHA-256 fingerprints and
//!   the pinning verifier.
//! - [`config`]: the parts of HakuRiver's `config.toml` both binaries read, and the
//!   duration type our own sections use.

#![forbid(unsafe_code)]

pub mod config;
pub mod net;
pub mod protocol;
pub mod relay;
pub mod resume;
pub mod tls;

pub use protocol::{Request, RequestError, Response, TaskId};
pub use relay::{relay, RelayStats};
