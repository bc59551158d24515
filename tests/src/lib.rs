//! End-to-end test support: real peers for the built binaries.
//!
//! # Layout
//! - [`process`]: owned child processes (signal, wait with a deadline, kill on drop),
//!   drained output buffers, `run` with input and a timeout.
//! - [`sshd`]: a real OpenSSH `sshd` on `127.0.0.1:0` (inetd mode per connection) as
//!   the VPS, with its own host key and client key.
//! - [`haku`]: the HakuRiver 0.3.0 peer from its venv: DBs written by its models
//!   ([`HakuDb`]), its host proxy ([`PyHostProxy`]), its `hakuriver.ssh` client, and a
//!   ProxyCommand tunnel helper.
//! - [`proxy`]: the built `hakuriver-ssh-proxy` ([`Proxy`], [`bin_path`]).
//! - [`fixtures`]: a DB with one task per routing outcome and the expected replies.
//! - [`kohaku`]: KohakuRiver 0.4 / 1.0 (and HakuRiver 0.3.0) databases made by our own
//!   SQL ([`SqlDb`]), the same routing tasks, and users, tokens and assignments on 1.0.
//! - [`net`]: request/reply exchanges, a refusing port, checksums, test data, timeouts.
//! - [`robust`]: our client as ProxyCommand, `/proc` fd/RSS counts, polling with a deadline.
//! - [`service_manager`]: a stand-in for systemd (notify socket, fd store, socket
//!   activation) that restarts the daemon with its stored descriptors.
//!
//! Dependencies come from `tests/setup-deps.sh`; a missing one fails the test with a hint.

pub mod fixtures;
pub mod haku;
pub mod kohaku;
pub mod net;
pub mod netbreak;
pub mod process;
pub mod proxy;
pub mod robust;
pub mod service_manager;
pub mod sshd;

pub use haku::{
    peer_path, run_python_client, ssh_via_tunnel, venv_dir, venv_python, HakuDb, PyHostProxy,
};
pub use kohaku::{Schema, SqlDb};
pub use net::{
    connect, exchange_until_eof, random_bytes, read_line, request_tunnel, sha256_hex, with_timeout,
    RefusedPort, IO_TIMEOUT,
};
pub use process::{run, LogBuffer, Process};
pub use proxy::{
    bin_path, hakuriver_host_config, proxy_command, run_proxy_cli, Proxy, ProxyBuilder, Signal,
    Transport,
};
pub use serde_json::json;
pub use sshd::Sshd;
