//! The built `hakuriver-ssh-proxy` daemon under test.

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Result};
pub use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{self, LogBuffer, Process};
use crate::service_manager;

/// How long the daemon may take to bind its listeners.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables that would change how the daemon starts or logs.
const SCRUBBED_ENV: &[&str] = &[
    "HAKURIVER_CONFIG",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "STATE_DIRECTORY",
    "RUST_LOG",
];

/// `target/<profile>/<name>`: a binary built next to this test executable
/// (`target/<profile>/deps/<test>`). Panics, telling to `cargo build --workspace`, if absent.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace` (same profile and CARGO_TARGET_DIR as the tests) first",
        path.display()
    );
    path
}

/// HakuRiver's host `config.toml`, all sections as HakuRiver ships them, pointed at `db`;
/// the proxy must accept it unchanged.
pub fn hakuriver_host_config(db: &Path) -> String {
    format!(
        r#"[network]
host_bind_ip = "127.0.0.1"
host_port = 8000
host_ssh_proxy_port = 8002
host_reachable_address = "127.0.0.1"
runner_address = "127.0.0.1"
runner_port = 8001

[paths]
shared_dir = "/tmp/hakuriver-test-shared"
local_temp_dir = "/tmp/hakuriver-test-local"
numactl_path = ""

[database]
db_file = "{db}"

[timing]
heartbeat_interval = 5
heartbeat_timeout_factor = 6
cleanup_check_interval = 10

[docker]
container_dir = "hakuriver-containers"
default_container_name = "hakuriver-base"
initial_base_image = "python:3.12-alpine"
tasks_privileged = false
additional_mounts = []
"#,
        db = db.display()
    )
}

/// A `hakuriver-ssh-proxy` command with the daemon-changing environment removed
/// (add the subcommand and flags).
pub fn proxy_command() -> Command {
    scrubbed(Command::new(bin_path("hakuriver-ssh-proxy")))
}

fn scrubbed(mut cmd: Command) -> Command {
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs `hakuriver-ssh-proxy ARGS` to completion (for `check`, `health`, `fingerprint`).
pub fn run_proxy_cli<I, S>(args: I, timeout: Duration) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = proxy_command();
    cmd.args(args.into_iter().map(Into::into));
    process::run(&mut cmd, b"", timeout)
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The plain-TCP protocol.
    Plain,
    /// The protocol inside TLS.
    Tls,
}

/// How to start the daemon: [`Proxy::builder`], then [`ProxyBuilder::start`].
pub struct ProxyBuilder {
    program: Option<PathBuf>,
    echo_logs: bool,
    db: PathBuf,
    args: Vec<OsString>,
    extra_config: String,
    database: Option<String>,
    listeners: usize,
    env: Vec<(OsString, OsString)>,
    default_args: bool,
    passed: Vec<(OwnedFd, String)>,
}

impl ProxyBuilder {
    /// Appends a command-line argument (after the defaults).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Replaces the generated config's `[database]` section (header included) with `toml`.
    pub fn database_section(mut self, toml: &str) -> Self {
        self.database = Some(toml.to_owned());
        self
    }

    /// Appends TOML (e.g. an `[ssh_proxy]` section) to the generated HakuRiver config.
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    /// How many `listening` lines to wait for (default 1).
    pub fn listeners(mut self, n: usize) -> Self {
        self.listeners = n;
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the daemon socket-activated, as systemd would: `fds` as 3.., with
    /// `LISTEN_FDS`, `LISTEN_FDNAMES` (their names) and `LISTEN_PID` (see
    /// [`crate::service_manager`]).
    pub fn passed_fds(mut self, fds: Vec<(OwnedFd, String)>) -> Self {
        self.passed = fds;
        self
    }

    /// Runs this binary instead of the `hakuriver-ssh-proxy` built beside the tests.
    pub fn program(mut self, path: &Path) -> Self {
        self.program = Some(path.to_path_buf());
        self
    }

    /// Keeps the daemon's log in its buffer only, without copying it to stderr (for
    /// runs that open thousands of tunnels).
    pub fn quiet(mut self) -> Self {
        self.echo_logs = false;
        self
    }

    /// Leaves out the default `--bind 127.0.0.1 --port 0 --db ...` flags (the config file
    /// and `-c`, `--state-dir`, `--log-format text` stay).
    pub fn without_default_listener(mut self) -> Self {
        self.default_args = false;
        self
    }

    /// Spawns the daemon and waits until it logged every expected listener.
    pub fn start(self) -> Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix("hakuriver-proxy-")
            .tempdir()?;
        let config_path = dir.path().join("config.toml");
        let state_dir = dir.path().join("state");
        fs::create_dir_all(&state_dir)?;
        let mut host_config = hakuriver_host_config(&self.db);
        if let Some(database) = &self.database {
            let ours = format!("[database]\ndb_file = \"{}\"\n", self.db.display());
            host_config = host_config.replace(&ours, database);
        }
        fs::write(
            &config_path,
            format!("{host_config}\n{}", self.extra_config),
        )?;
        let mut cmd = match &self.program {
            Some(path) => scrubbed(Command::new(path)),
            None => proxy_command(),
        };
        cmd.arg("serve")
            .arg("-c")
            .arg(&config_path)
            .arg("--state-dir")
            .arg(&state_dir);
        cmd.args(["--log-format", "text"]);
        if self.default_args {
            cmd.args(["--bind", "127.0.0.1", "--port", "0", "--db"])
                .arg(&self.db);
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut _passed_copies = Vec::new();
        if !self.passed.is_empty() {
            let names: Vec<&str> = self.passed.iter().map(|(_, n)| n.as_str()).collect();
            cmd.env("LISTEN_FDS", self.passed.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            cmd = service_manager::with_listen_pid(&cmd);
            let fds: Vec<OwnedFd> = self.passed.into_iter().map(|(fd, _)| fd).collect();
            _passed_copies = service_manager::pass_fds(&mut cmd, &fds)?;
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = Process::spawn("hakuriver-ssh-proxy", &mut cmd)?;
        drop(_passed_copies);
        let stdout = LogBuffer::drain(
            process.take_stdout().ok_or_else(|| anyhow!("no stdout"))?,
            None,
        );
        let logs = LogBuffer::drain(
            process.take_stderr().ok_or_else(|| anyhow!("no stderr"))?,
            self.echo_logs.then(|| "[proxy] ".to_string()),
        );
        let expected = self.listeners;
        let listeners = logs.wait_for(
            STARTUP_TIMEOUT,
            &format!("{expected} `listening addr=` line(s)"),
            |text| {
                let found = parse_listeners(text);
                (found.len() >= expected).then_some(found)
            },
        )?;
        Ok(Proxy {
            dir,
            config_path,
            state_dir,
            process,
            logs,
            stdout,
            listeners,
        })
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .map(|v| v.trim_matches('"'))
}

/// The `(addr, transport)` of every `listening addr=<ip:port> transport=plain|tls` line.
pub fn parse_listeners(log: &str) -> Vec<(SocketAddr, Transport)> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("listening"))
        .filter_map(|l| {
            let addr = field(l, "addr=")?.parse().ok()?;
            let transport = match field(l, "transport=")? {
                "plain" => Transport::Plain,
                "tls" => Transport::Tls,
                _ => return None,
            };
            Some((addr, transport))
        })
        .collect()
}

/// A running `hakuriver-ssh-proxy serve`, killed when dropped.
pub struct Proxy {
    dir: TempDir,
    config_path: PathBuf,
    state_dir: PathBuf,
    process: Process,
    logs: LogBuffer,
    stdout: LogBuffer,
    listeners: Vec<(SocketAddr, Transport)>,
}

impl Proxy {
    /// A builder for a daemon reading `db`, with a HakuRiver host config in a tempdir
    /// and `--bind 127.0.0.1 --port 0 --db <db>`.
    pub fn builder(db: &Path) -> ProxyBuilder {
        ProxyBuilder {
            program: None,
            echo_logs: true,
            db: db.to_path_buf(),
            args: Vec::new(),
            extra_config: String::new(),
            database: None,
            listeners: 1,
            env: Vec::new(),
            default_args: true,
            passed: Vec::new(),
        }
    }

    /// Starts a daemon with the defaults of [`Proxy::builder`].
    pub fn start(db: &Path) -> Result<Proxy> {
        Proxy::builder(db).start()
    }

    /// The first plain listener; panics if there is none.
    pub fn addr(&self) -> SocketAddr {
        self.first(Transport::Plain)
            .unwrap_or_else(|| panic!("no plain listener in {:?}", self.listeners))
    }

    /// The first TLS listener; panics if there is none.
    pub fn tls_addr(&self) -> SocketAddr {
        self.first(Transport::Tls)
            .unwrap_or_else(|| panic!("no TLS listener in {:?}", self.listeners))
    }

    fn first(&self, t: Transport) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(_, tr)| *tr == t)
            .map(|(a, _)| *a)
    }

    /// Every listener the daemon announced at start.
    pub fn listeners(&self) -> &[(SocketAddr, Transport)] {
        &self.listeners
    }

    /// The admin listener's address, once the log says it listens (`--admin-listen`).
    pub fn admin_addr(&self, timeout: Duration) -> Result<String> {
        self.wait_for_log("admin listening", timeout)?;
        let logs = self.logs();
        logs.lines()
            .find(|l| l.contains("admin listening"))
            .and_then(|l| l.split_once("addr="))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no admin address in the log:\n{logs}"))
    }

    /// Its stderr so far (ANSI escapes removed).
    pub fn logs(&self) -> String {
        strip_ansi(&self.logs.text())
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// Waits until its stderr contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.logs
            .wait_for(timeout, &format!("log {needle:?}"), |t| {
                strip_ansi(t).contains(needle).then_some(())
            })
    }

    /// The generated config file (`-c`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The `--state-dir` (self-signed certificate lives here).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The tempdir holding config and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The daemon's process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Sends a signal (SIGTERM, SIGHUP, ...).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.process.signal(sig)
    }

    /// Waits for the daemon to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        self.process.wait_timeout(timeout)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&self, timeout: Duration) -> Result<ExitStatus> {
        self.process.signal_and_wait(Signal::SIGTERM, timeout)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn listening_lines_in_tracing_text_forms() {
        let log = "2026-01-01T00:00:00Z  INFO listening addr=127.0.0.1:4000 transport=plain\n\
                   \u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m[::1]:4001 \u{1b}[3mtransport\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"tls\"\n\
                   INFO tunnel opened addr=127.0.0.1:9 task_id=1\n";
        assert_eq!(
            parse_listeners(log),
            vec![
                ("127.0.0.1:4000".parse().unwrap(), Transport::Plain),
                ("[::1]:4001".parse().unwrap(), Transport::Tls)
            ]
        );
    }
}
