//! A real OpenSSH `sshd` on loopback playing the VPS container's sshd.
//!
//! We bind `127.0.0.1:0` ourselves and run `sshd -i` (inetd mode) per accepted
//! connection with the socket as its stdin/stdout: no fixed port and no
//! bind/close/re-bind race.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process;

/// Path of the OpenSSH server binary.
pub const SSHD: &str = "/usr/sbin/sshd";
/// Path of the OpenSSH client binary.
pub const SSH: &str = "/usr/bin/ssh";

/// A running sshd reachable on [`Sshd::addr`], accepting only [`Sshd::client_key_path`].
pub struct Sshd {
    dir: TempDir,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    children: Arc<Mutex<Vec<Child>>>,
}

fn keygen(path: &Path) -> Result<()> {
    let out = process::run(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "hakuriver-test",
                "-f",
            ])
            .arg(path),
        b"",
        Duration::from_secs(20),
    )?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Sshd {
    /// Generates keys and a config in a tempdir and starts accepting on `127.0.0.1:0`.
    /// Panics, naming `tests/setup-deps.sh`, when OpenSSH is not installed.
    pub fn start() -> Result<Sshd> {
        for bin in [SSHD, SSH] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run `sudo bash tests/setup-deps.sh` (installs OpenSSH)"
            );
        }
        // Privilege separation directory; /run is a tmpfs, so it may be gone.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = tempfile::Builder::new()
            .prefix("hakuriver-sshd-")
            .tempdir()?;
        let host_key = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        keygen(&host_key)?;
        keygen(&client_key)?;
        fs::copy(
            client_key.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )?;
        let config = format!(
            "HostKey {host}\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             PidFile none\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             LoginGraceTime 60\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            host = host_key.display(),
            dir = dir.path().display(),
        );
        let config_path = dir.path().join("sshd_config");
        fs::write(&config_path, config)?;
        let check = process::run(
            Command::new(SSHD).arg("-t").arg("-f").arg(&config_path),
            b"",
            Duration::from_secs(20),
        )?;
        if !check.status.success() {
            bail!(
                "sshd -t rejects the test config: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }

        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let children: Arc<Mutex<Vec<Child>>> = Arc::default();
        let log_path = dir.path().join("sshd.log");
        let accept = {
            let stop = Arc::clone(&stop);
            let children = Arc::clone(&children);
            std::thread::Builder::new()
                .name("sshd-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        if let Err(e) = spawn_inetd(&config_path, &log_path, stream, &children) {
                            eprintln!("sshd harness: {e:#}");
                        }
                    }
                })?
        };
        Ok(Sshd {
            dir,
            addr,
            stop,
            accept: Some(accept),
            children,
        })
    }

    /// Where sshd accepts connections (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of [`Sshd::addr`].
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The client private key that sshd accepts for root.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    /// The server's public host key line (`ssh-ed25519 AAAA... comment`).
    pub fn host_public_key(&self) -> Result<String> {
        Ok(
            fs::read_to_string(self.dir.path().join("host_ed25519.pub"))?
                .trim()
                .to_string(),
        )
    }

    /// The tempdir holding keys, config and `sshd.log` (handy for scratch files too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the sshd processes logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Options that make `ssh` use our key, skip host-key files and prompts, and ignore
    /// the machine's ssh_config: `-F /dev/null -i KEY -o ...`.
    pub fn ssh_opts(&self) -> Vec<String> {
        let mut opts = vec!["-F".to_string(), "/dev/null".to_string(), "-i".to_string()];
        opts.push(self.client_key_path().display().to_string());
        for o in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "LogLevel=ERROR",
            "ConnectTimeout=20",
        ] {
            opts.push("-o".to_string());
            opts.push(o.to_string());
        }
        opts
    }

    /// An `ssh` command with [`Sshd::ssh_opts`], connecting as root straight to this sshd
    /// (append the remote command).
    pub fn ssh_direct(&self) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.args(self.ssh_opts())
            .arg("-p")
            .arg(self.port().to_string())
            .arg("root@127.0.0.1");
        cmd
    }
}

fn spawn_inetd(
    config: &Path,
    log: &Path,
    stream: TcpStream,
    children: &Mutex<Vec<Child>>,
) -> Result<()> {
    let stdin = OwnedFd::from(stream.try_clone()?);
    let stdout = OwnedFd::from(stream);
    let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut children = children.lock().unwrap_or_else(PoisonError::into_inner);
    // Reap finished sessions under the same lock that Drop kills under.
    children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    let child = Command::new(SSHD)
        .arg("-i")
        .arg("-e")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(log))
        .spawn()
        .context("spawning sshd -i")?;
    children.push(child);
    Ok(())
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        for child in children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
