//! Helpers for the robustness tests (bad input, real tools, leaks): our client as ssh's
//! ProxyCommand, `/proc` observables of a process, and polling them with a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::proxy::bin_path;
use crate::sshd::{Sshd, SSH};

/// How often [`wait_until`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// `ProxyCommand=<hakuriver-ssh> --host IP --proxy-port PORT [EXTRA...] --stdio TASK`:
/// our client in ProxyCommand mode (no config file needed; `HOME` should point at an
/// empty directory so no user config is read).
pub fn stdio_proxy_command(proxy: SocketAddr, task: &str, extra: &[&str]) -> String {
    let mut words = vec![
        bin_path("hakuriver-ssh").display().to_string(),
        "--host".to_owned(),
        proxy.ip().to_string(),
        "--proxy-port".to_owned(),
        proxy.port().to_string(),
    ];
    words.extend(extra.iter().map(|s| (*s).to_owned()));
    words.push("--stdio".to_owned());
    words.push(task.to_owned());
    format!("ProxyCommand={}", words.join(" "))
}

/// `ssh` with the test key and our client as ProxyCommand to `task` through `proxy`,
/// `HOME` set to `home`; append the remote command.
pub fn ssh_via_client(
    sshd: &Sshd,
    proxy: SocketAddr,
    task: &str,
    extra: &[&str],
    home: &Path,
) -> Command {
    let mut cmd = Command::new(SSH);
    cmd.env("HOME", home)
        .env_remove("HAKURIVER_CONFIG")
        .args(sshd.ssh_opts())
        .arg("-o")
        .arg(stdio_proxy_command(proxy, task, extra))
        .arg("root@vps-task");
    cmd
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| dir.clone())?
        .count())
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .context("empty VmRSS line")?
        .parse()?;
    Ok(kib)
}

/// Established TCP connections whose local or remote port is `port` (from `ss`).
pub fn established_on_port(port: u16) -> Result<usize> {
    let out = crate::process::run(
        Command::new("ss").args(["-Htn", "state", "established"]),
        b"",
        Duration::from_secs(20),
    )?;
    let needle = format!(":{port}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .skip(2)
                .take(2)
                .any(|addr| addr.ends_with(&needle))
        })
        .count())
}

/// Polls `probe` until it returns `Some`, failing after `timeout` with `what` and the
/// last value seen (polling an observable, not sleeping for synchronisation).
pub fn wait_until<T, V: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<std::result::Result<T, V>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe()? {
            Ok(done) => return Ok(done),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Writes `dir/ssh-shim`, an `ssh_program` that appends its pid to `dir/ssh-ran`
/// before exec'ing `/usr/bin/ssh`: a failure test reads that file to prove ssh never
/// started. Returns the shim's path.
pub fn recording_ssh_shim(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let shim = dir.join("ssh-shim");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho $$ >> '{}'\nexec /usr/bin/ssh \"$@\"\n",
            dir.join("ssh-ran").display()
        ),
    )?;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    Ok(shim)
}

/// TCP sockets of `pid` that are not listening (tunnel legs, half-open clients), found
/// by matching the inodes in `/proc/<pid>/fd` against `/proc/net/tcp` and `tcp6`.
pub fn connected_sockets(pid: u32) -> Result<usize> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // An fd may close between listing and reading the link.
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // fields: sl local remote st ... inode (index 9); st 0A = LISTEN.
            if fields.len() > 9 && fields[3] != "0A" && inodes.contains(fields[9]) {
                count += 1;
            }
        }
    }
    Ok(count)
}
