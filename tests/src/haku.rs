//! The HakuRiver 0.3.0 reference peer from its venv: databases written by its own
//! peewee models, its host proxy, and its `hakuriver.ssh` client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::process::{self, LogBuffer, Process};
use crate::sshd::Sshd;

/// How long a Python helper may take to start and answer.
const PY_TIMEOUT: Duration = Duration::from_secs(60);

/// The venv with `hakuriver==0.3.0 pyzmq` (`$HAKURIVER_VENV`, default `/opt/hakuriver-venv`).
pub fn venv_dir() -> PathBuf {
    std::env::var_os("HAKURIVER_VENV")
        .map_or_else(|| PathBuf::from("/opt/hakuriver-venv"), PathBuf::from)
}

/// The venv's python; panics with a hint to run `tests/setup-deps.sh` when missing.
pub fn venv_python() -> PathBuf {
    let python = venv_dir().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `sudo bash tests/setup-deps.sh` (creates the HakuRiver 0.3.0 venv)",
        python.display()
    );
    python
}

/// `tests/peer/<name>`: the Python helpers and shims shipped with the tests.
pub fn peer_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peer")
        .join(name)
}

/// A HakuRiver database in a tempdir, created and changed only through HakuRiver's
/// own models (`tests/peer/seed_db.py`).
pub struct HakuDb {
    dir: TempDir,
    path: PathBuf,
}

impl HakuDb {
    /// Creates the DB with `spec` (`{"nodes": [...], "tasks": [...]}`, see seed_db.py).
    pub fn create(spec: &Value) -> Result<HakuDb> {
        let dir = tempfile::Builder::new().prefix("hakuriver-db-").tempdir()?;
        let path = dir.path().join("hakuriver.db");
        let db = HakuDb { dir, path };
        db.apply(spec)?;
        Ok(db)
    }

    /// Applies `spec` to the existing DB: inserts `nodes`/`tasks`, changes columns with
    /// `update_nodes`/`update_tasks`, removes `delete_tasks`.
    pub fn apply(&self, spec: &Value) -> Result<()> {
        let out = process::run(
            Command::new(venv_python())
                .arg(peer_path("seed_db.py"))
                .arg(&self.path)
                .arg("-"),
            spec.to_string().as_bytes(),
            PY_TIMEOUT,
        )?;
        if !out.status.success() || out.stdout != b"OK\n" {
            bail!(
                "seed_db.py failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Sets one task's columns, e.g. `json!({"status": "completed"})`.
    pub fn update_task(&self, task_id: i64, columns: Value) -> Result<()> {
        let mut row = columns;
        row["task_id"] = task_id.into();
        self.apply(&serde_json::json!({ "update_tasks": [row] }))
    }

    /// Sets one node's columns, e.g. `json!({"status": "offline"})`.
    pub fn update_node(&self, hostname: &str, columns: Value) -> Result<()> {
        let mut row = columns;
        row["hostname"] = hostname.into();
        self.apply(&serde_json::json!({ "update_nodes": [row] }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tempdir holding the database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A Python peer script from `tests/peer/` run by the venv's python against `db`,
/// once it printed `PORT <n>` (it listens on `127.0.0.1:<n>`).
struct PyPeer {
    process: Process,
    addr: SocketAddr,
    stdout: LogBuffer,
    stderr: LogBuffer,
}

impl PyPeer {
    fn start(script: &str, db: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Result<PyPeer> {
        let mut cmd = Command::new(venv_python());
        cmd.arg("-u").arg(peer_path(script)).arg(db);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = Process::spawn(script, &mut cmd)?;
        let stdout = LogBuffer::drain(
            process.take_stdout().ok_or_else(|| anyhow!("no stdout"))?,
            None,
        );
        let stderr = LogBuffer::drain(
            process.take_stderr().ok_or_else(|| anyhow!("no stderr"))?,
            None,
        );
        let port = stdout
            .wait_for(PY_TIMEOUT, &format!("PORT line of {script}"), |text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PORT ")?.trim().parse::<u16>().ok())
            })
            .map_err(|e| e.context(format!("{script} stderr:\n{}", stderr.text())))?;
        Ok(PyPeer {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stdout,
            stderr,
        })
    }
}

/// HakuRiver 0.3.0's own host proxy (`tests/peer/host_proxy.py`) on `127.0.0.1:0`.
pub struct PyHostProxy {
    process: Process,
    addr: SocketAddr,
    logs: LogBuffer,
}

impl PyHostProxy {
    /// Starts it against `db` and waits for its `PORT <n>` line.
    pub fn start(db: &Path) -> Result<PyHostProxy> {
        let peer = PyPeer::start("host_proxy.py", db, &[])?;
        Ok(PyHostProxy {
            process: peer.process,
            addr: peer.addr,
            logs: peer.stderr,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HakuRiver's log lines so far.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// The child process.
    pub fn process(&self) -> &Process {
        &self.process
    }
}

/// HakuRiver 0.3.0's own Host HTTP API (`tests/peer/host_api.py`) on `127.0.0.1:0`.
pub struct PyHostApi {
    _process: Process,
    addr: SocketAddr,
    logs: LogBuffer,
    stdout: LogBuffer,
}

impl PyHostApi {
    /// Starts it against `db` and waits for its `PORT <n>` line.
    pub fn start(db: &Path) -> Result<PyHostApi> {
        let config = peer_path("hakuriver-client.toml");
        let peer = PyPeer::start(
            "host_api.py",
            db,
            &[("HAKURIVER_CONFIG", config.as_os_str())],
        )?;
        Ok(PyHostApi {
            _process: peer.process,
            addr: peer.addr,
            logs: peer.stderr,
            stdout: peer.stdout,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log lines so far: stderr, then stdout (uvicorn's access log).
    pub fn logs(&self) -> String {
        format!("{}{}", self.logs.text(), self.stdout.text())
    }

    /// Waits until its access log shows `n` requests for `path` (uvicorn writes the
    /// line after the response).
    pub fn wait_for_requests(&self, path: &str, n: usize, timeout: Duration) -> Result<()> {
        let needle = format!("\"GET {path} HTTP/1.1\"");
        self.stdout
            .wait_for(timeout, &format!("{n} requests for {path}"), |text| {
                (text.matches(&needle).count() >= n).then_some(())
            })
    }

    /// Requests for `path` in its access log so far.
    pub fn requests(&self, path: &str) -> usize {
        let needle = format!("\"GET {path} HTTP/1.1\"");
        self.stdout.text().matches(&needle).count()
    }
}

/// Runs HakuRiver 0.3.0's `hakuriver.ssh TASK --host IP --proxy-port PORT` against
/// `proxy`, with an `ssh` PATH shim that uses `sshd`'s client key (the real client
/// passes ssh no options). `input` is fed to the remote login shell on stdin. Note the
/// client always exits 0 and mixes its log into stdout.
pub fn run_python_client(
    proxy: SocketAddr,
    task_id: &str,
    sshd: &Sshd,
    input: &[u8],
    timeout: Duration,
) -> Result<Output> {
    process::run(
        &mut python_client_command(proxy, task_id, sshd)?,
        input,
        timeout,
    )
}

/// The command [`run_python_client`] runs (HakuRiver 0.3.0's `hakuriver.ssh` with the
/// `ssh` PATH shim), for callers that feed and read it as it runs.
pub fn python_client_command(proxy: SocketAddr, task_id: &str, sshd: &Sshd) -> Result<Command> {
    let client = venv_dir().join("bin/hakuriver.ssh");
    assert!(
        client.exists(),
        "{} is missing: run `sudo bash tests/setup-deps.sh`",
        client.display()
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![peer_path("shim")];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(client);
    cmd.arg(task_id)
        .arg("--host")
        .arg(proxy.ip().to_string())
        .arg("--proxy-port")
        .arg(proxy.port().to_string())
        .env("PATH", std::env::join_paths(paths).context("PATH")?)
        .env("HAKURIVER_CONFIG", peer_path("hakuriver-client.toml"))
        .env("HAKURIVER_TEST_SSH_KEY", sshd.client_key_path());
    Ok(cmd)
}

/// An `ssh` command through `proxy` to `task_id` using `tests/peer/tunnel.py` as
/// ProxyCommand (a tunnel client independent of ours); append the remote command.
pub fn ssh_via_tunnel(sshd: &Sshd, proxy: SocketAddr, task_id: &str) -> Command {
    let proxy_command = format!(
        "ProxyCommand={} {} {} {} {}",
        venv_python().display(),
        peer_path("tunnel.py").display(),
        proxy.ip(),
        proxy.port(),
        task_id
    );
    let mut cmd = Command::new(crate::sshd::SSH);
    cmd.args(sshd.ssh_opts())
        .arg("-o")
        .arg(proxy_command)
        .arg("root@vps-task");
    cmd
}
