//! Resumable tunnels between hakuriver-ssh and hakuriver-ssh-proxy: a tunnel that
//! outlives its connection to the host.
//!
//! A client that wants one adds `resume=<key>` to its extended TUNNEL request; a host
//! that agrees answers `SUCCESS RESUMABLE ...` ([`wire::Grant`]) instead of `SUCCESS`,
//! and from then on both ends speak [`frame`]s on that connection instead of raw bytes.
//! When the connection breaks, the client connects again (TLS verified as the first
//! time), sends `HAKURIVER_SSH/1 RESUME` with a proof only the two ends can compute
//! ([`wire`]), both tell each other how many bytes they have, and each sends again what
//! the other is missing ([`session`]). HakuRiver's `REQUEST_TUNNEL` and its plain
//! `SUCCESS` are never touched: a host that does not know the extension refuses the
//! extended line as ever, and one that does not resume answers plain `SUCCESS`.

pub mod frame;
pub mod session;
pub mod wire;

pub use session::{Ended, Mismatch, Progress, Session, SessionConfig, Snapshot};
pub use wire::{Grant, KeyPair, PublicKey, ResumeKey, ResumeRequest, Resumed, Side, TunnelId};
