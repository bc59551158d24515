//! Half-close with real tools: OpenSSH's ssh, scp, sftp, rsync and an `ssh -L` forward
//! whose client half-closes, through our client's ProxyCommand mode
//! (`hakuriver-ssh --stdio`), the built proxy (plain and TLS with a pinned
//! fingerprint) and a real sshd. Every payload is checked by SHA-256. Plus the two
//! crashes: a client killed with SIGKILL mid-transfer (the proxy logs the close and
//! keeps no connection) and a killed sshd (the client sees the close, no hang).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_OK};
use hakuriver_ssh_tests::proxy::Signal;
use hakuriver_ssh_tests::robust::{established_on_port, wait_until};
use hakuriver_ssh_tests::{
    bin_path, random_bytes, run, run_proxy_cli, sha256_hex, HakuDb, LogBuffer, Process, Proxy,
    RefusedPort, Sshd,
};
use tempfile::TempDir;

const TOOL_TIMEOUT: Duration = Duration::from_secs(180);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

struct World {
    sshd: Sshd,
    _refused: RefusedPort,
    _db: HakuDb,
    proxy: Proxy,
    home: TempDir,
    fingerprint: String,
}

#[derive(Clone, Copy, Debug)]
enum Hop {
    Plain,
    Tls,
}

impl World {
    fn start() -> World {
        let sshd = Sshd::start().unwrap();
        let refused = RefusedPort::new().unwrap();
        let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
        let proxy = Proxy::builder(db.path())
            // Our client's tunnels are resumable: a killed client's tunnel is held for
            // the grace period (it could be a network break), so keep that short here.
            .config(
                "[ssh_proxy]\nlookups_per_minute_per_ip = 0\n[ssh_proxy.resume]\ngrace_secs = 2\n",
            )
            .args(["--tls-listen", "127.0.0.1:0"])
            .listeners(2)
            .start()
            .unwrap();
        let out = run_proxy_cli(
            [
                "fingerprint".as_ref(),
                "-c".as_ref(),
                proxy.config_path().as_os_str(),
                "--state-dir".as_ref(),
                proxy.state_dir().as_os_str(),
                "--tls-listen".as_ref(),
                "127.0.0.1:0".as_ref(),
            ],
            CLOSE_TIMEOUT,
        )
        .unwrap();
        let fingerprint = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && fingerprint.starts_with("sha256:"),
            "fingerprint: {fingerprint} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let home = tempfile::Builder::new()
            .prefix("hakuriver-tools-")
            .tempdir()
            .unwrap();
        let w = World {
            sshd,
            _refused: refused,
            _db: db,
            proxy,
            home,
            fingerprint,
        };
        for hop in [Hop::Plain, Hop::Tls] {
            w.write_ssh_config(hop);
        }
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn ssh_config(&self, hop: Hop) -> PathBuf {
        self.path(&format!("ssh_config-{hop:?}"))
    }

    /// `Host vps-task` with the test key and our client as ProxyCommand over `hop`.
    fn write_ssh_config(&self, hop: Hop) {
        let (port, tls) = match hop {
            Hop::Plain => (self.proxy.addr().port(), String::new()),
            Hop::Tls => (
                self.proxy.tls_addr().port(),
                format!(" --tls --fingerprint {}", self.fingerprint),
            ),
        };
        let text = format!(
            "Host vps-task\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  \
             LogLevel ERROR\n  ConnectTimeout 20\n  \
             ProxyCommand {bin} --host 127.0.0.1 --proxy-port {port}{tls} --stdio {TASK_OK}\n",
            key = self.sshd.client_key_path().display(),
            bin = bin_path("hakuriver-ssh").display(),
        );
        fs::write(self.ssh_config(hop), text).unwrap();
    }

    /// `program -F <config for hop> ARGS...` with HOME in the tempdir.
    fn tool(&self, program: &str, hop: Hop) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.home.path())
            .env_remove("HAKURIVER_CONFIG")
            .arg("-F")
            .arg(self.ssh_config(hop));
        cmd
    }

    /// The "VPS" shares our filesystem: a scratch path both sides see.
    fn remote(&self, name: &str) -> PathBuf {
        self.sshd.dir().join(name)
    }

    fn context(&self, out: &Output) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}\nproxy log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.proxy.logs(), 20)
        )
    }

    fn run_ok(&self, cmd: &mut Command, input: &[u8]) -> Output {
        let out = run(cmd, input, TOOL_TIMEOUT).unwrap();
        assert!(out.status.success(), "{:?}: {}", cmd, self.context(&out));
        out
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<_> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn sha_file(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap())
}

/// Newline-separated pseudo-random decimal lines, and the same lines sorted bytewise.
fn lines_and_sorted(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let raw = random_bytes(n * 8, seed);
    let mut lines: Vec<String> = raw
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()).to_string())
        .collect();
    let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    lines.sort();
    let sorted = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    (text.into_bytes(), sorted.into_bytes())
}

fn tools_through(w: &World, hop: Hop) {
    let tag = format!("{hop:?}").to_lowercase();
    let data = random_bytes(8 << 20, 0x700 + tag.len() as u64);
    let want = sha256_hex(&data);

    // ssh host 'cat > f' < file: our EOF must reach cat, or ssh never returns.
    let uploaded = w.remote(&format!("cat-{tag}.bin"));
    w.run_ok(
        w.tool("ssh", hop)
            .arg("vps-task")
            .arg(format!("cat > {}", uploaded.display())),
        &data,
    );
    assert_eq!(sha_file(&uploaded), want, "{tag}: ssh 'cat > f' < file");

    // ssh host sort < data: sort prints only after EOF on its stdin.
    let (lines, sorted) = lines_and_sorted(200_000, 0x50 + tag.len() as u64);
    let out = w.run_ok(
        w.tool("ssh", hop).arg("vps-task").arg("LC_ALL=C sort"),
        &lines,
    );
    assert_eq!(
        sha256_hex(&out.stdout),
        sha256_hex(&sorted),
        "{tag}: ssh sort"
    );

    // scp up and down.
    let local = w.path(&format!("local-{tag}.bin"));
    fs::write(&local, &data).unwrap();
    let scp_up = w.remote(&format!("scp-up-{tag}.bin"));
    w.run_ok(
        w.tool("scp", hop)
            .arg(&local)
            .arg(format!("vps-task:{}", scp_up.display())),
        b"",
    );
    assert_eq!(sha_file(&scp_up), want, "{tag}: scp up");
    let scp_down = w.path(&format!("scp-down-{tag}.bin"));
    w.run_ok(
        w.tool("scp", hop)
            .arg(format!("vps-task:{}", scp_up.display()))
            .arg(&scp_down),
        b"",
    );
    assert_eq!(sha_file(&scp_down), want, "{tag}: scp down");

    // sftp -b: put then get.
    let sftp_up = w.remote(&format!("sftp-up-{tag}.bin"));
    let sftp_down = w.path(&format!("sftp-down-{tag}.bin"));
    let batch = w.path(&format!("sftp-batch-{tag}"));
    fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            local.display(),
            sftp_up.display(),
            sftp_up.display(),
            sftp_down.display()
        ),
    )
    .unwrap();
    w.run_ok(
        w.tool("sftp", hop).arg("-b").arg(&batch).arg("vps-task"),
        b"",
    );
    assert_eq!(sha_file(&sftp_up), want, "{tag}: sftp put");
    assert_eq!(sha_file(&sftp_down), want, "{tag}: sftp get");

    // rsync -e ssh, a directory up and back.
    let src = w.path(&format!("rsync-src-{tag}"));
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.bin"), &data).unwrap();
    fs::write(src.join("sub/b.txt"), &lines).unwrap();
    let rsync_up = w.remote(&format!("rsync-up-{tag}"));
    let rsync_back = w.path(&format!("rsync-back-{tag}"));
    let e = format!("ssh -F {}", w.ssh_config(hop).display());
    let rsync = |from: String, to: String| {
        let mut cmd = Command::new("rsync");
        cmd.env("HOME", w.home.path())
            .args(["-a", "-e", &e])
            .arg(from)
            .arg(to);
        w.run_ok(&mut cmd, b"");
    };
    rsync(
        format!("{}/", src.display()),
        format!("vps-task:{}/", rsync_up.display()),
    );
    rsync(
        format!("vps-task:{}/", rsync_up.display()),
        format!("{}/", rsync_back.display()),
    );
    for dir in [&rsync_up, &rsync_back] {
        assert_eq!(
            sha_file(&dir.join("a.bin")),
            want,
            "{tag}: rsync {}",
            dir.display()
        );
        assert_eq!(
            sha_file(&dir.join("sub/b.txt")),
            sha256_hex(&lines),
            "{tag}: rsync"
        );
    }

    forward_with_half_close(w, hop, &tag, &lines, &sorted);
}

/// `ssh -L local.sock:remote.sock` while the same session runs a `socat` sort service on
/// remote.sock; a local client sends lines, shuts its write side, and must get them
/// back sorted: the EOF crosses the forward, the tunnel and socat into sort.
fn forward_with_half_close(w: &World, hop: Hop, tag: &str, lines: &[u8], sorted: &[u8]) {
    let local_sock = w.path(&format!("fwd-{tag}.sock"));
    let remote_sock = w.remote(&format!("svc-{tag}.sock"));
    let mut cmd = w.tool("ssh", hop);
    cmd.arg("-o")
        .arg("ExitOnForwardFailure=yes")
        .arg("-L")
        .arg(format!(
            "{}:{}",
            local_sock.display(),
            remote_sock.display()
        ))
        .arg("vps-task")
        .arg(format!(
            "exec socat -t 60 UNIX-LISTEN:{},unlink-early EXEC:'env LC_ALL=C sort'",
            remote_sock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ssh = Process::spawn("ssh -L", &mut cmd).unwrap();
    let err = LogBuffer::drain(ssh.take_stderr().unwrap(), Some(format!("[ssh -L {tag}] ")));
    let _out = LogBuffer::drain(ssh.take_stdout().unwrap(), None);
    // Both sockets are files we can see: the forward is up and socat listens.
    wait_until(TOOL_TIMEOUT, "forward and service sockets", || {
        Ok(if local_sock.exists() && remote_sock.exists() {
            Ok(())
        } else {
            Err((local_sock.exists(), remote_sock.exists(), err.text()))
        })
    })
    .unwrap();
    let mut client = UnixStream::connect(&local_sock).unwrap();
    client.set_read_timeout(Some(TOOL_TIMEOUT)).unwrap();
    let mut writer = client.try_clone().unwrap();
    let lines_owned = lines.to_vec();
    let feeder = std::thread::spawn(move || {
        writer.write_all(&lines_owned).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    feeder.join().unwrap();
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(sorted),
        "{tag}: sort through ssh -L"
    );
    // socat exits after one connection, ending the session.
    let status = ssh.wait_timeout(TOOL_TIMEOUT).unwrap();
    assert!(status.success(), "{tag}: ssh -L {status}: {}", err.text());
}

#[test]
fn ssh_scp_sftp_rsync_and_forward_over_plain() {
    let w = World::start();
    tools_through(&w, Hop::Plain);
}

#[test]
fn ssh_scp_sftp_rsync_and_forward_over_tls() {
    let w = World::start();
    tools_through(&w, Hop::Tls);
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Waits until the proxy has logged more `tunnel closed` lines than `before`.
fn wait_for_tunnel_closed(w: &World, before: usize) {
    wait_until(CLOSE_TIMEOUT, "`tunnel closed` in the proxy log", || {
        let logs = w.proxy.logs();
        Ok(if count(&logs, "tunnel closed") > before {
            Ok(())
        } else {
            Err(tail(&logs, 5))
        })
    })
    .unwrap();
}

/// Child pids of `pid` (all threads), from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            all.push(c);
            todo.push(c);
        }
    }
    all
}

fn sigkill(pid: u32) {
    // The process may already be gone (it died with its parent): that is fine.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        Signal::SIGKILL,
    );
}

/// An `ssh vps-task 'cat > /dev/null'` fed forever, started and seen open by the proxy.
fn endless_upload(w: &World, hop: Hop) -> (Process, LogBuffer, std::thread::JoinHandle<()>) {
    let opened_before = count(&w.proxy.logs(), "tunnel opened");
    let mut cmd = w.tool("ssh", hop);
    cmd.arg("vps-task")
        .arg("cat > /dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let ssh = Process::spawn("ssh upload", &mut cmd).unwrap();
    let err = LogBuffer::drain(ssh.take_stderr().unwrap(), Some("[ssh] ".into()));
    let mut stdin = ssh.take_stdin().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = random_bytes(64 << 10, 1);
        // Ends when ssh is gone (EPIPE); bounded so a stuck ssh cannot keep it alive.
        for _ in 0..1_000_000 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    wait_until(TOOL_TIMEOUT, "the proxy to open the tunnel", || {
        let logs = w.proxy.logs();
        Ok(if count(&logs, "tunnel opened") > opened_before {
            Ok(())
        } else {
            Err(err.text())
        })
    })
    .unwrap();
    (ssh, err, feeder)
}

#[test]
fn killed_client_leaves_no_tunnel_behind() {
    let w = World::start();
    for hop in [Hop::Plain, Hop::Tls] {
        let closed_before = count(&w.proxy.logs(), "tunnel closed");
        let (ssh, _err, feeder) = endless_upload(&w, hop);
        // SIGKILL the ProxyCommand (it holds the proxy connection) and ssh itself.
        let proxy_command = children(ssh.pid());
        assert!(
            !proxy_command.is_empty(),
            "{hop:?}: no ProxyCommand child of ssh"
        );
        for pid in &proxy_command {
            sigkill(*pid);
        }
        ssh.signal(Signal::SIGKILL).unwrap();
        let _ = ssh.wait_timeout(CLOSE_TIMEOUT).unwrap();
        feeder.join().unwrap();
        wait_for_tunnel_closed(&w, closed_before);
        // Nothing established to the proxy's listeners nor to sshd any more.
        wait_until(CLOSE_TIMEOUT, "no established connection left", || {
            let open = (
                established_on_port(w.proxy.addr().port())?,
                established_on_port(w.proxy.tls_addr().port())?,
                established_on_port(w.sshd.port())?,
            );
            Ok(if open == (0, 0, 0) { Ok(()) } else { Err(open) })
        })
        .unwrap();
    }
    // And it still serves.
    let out = w.run_ok(
        w.tool("ssh", Hop::Plain).arg("vps-task").arg("echo alive"),
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
}

#[test]
fn killed_sshd_ends_the_client_without_a_hang() {
    let w = World::start();
    for hop in [Hop::Plain, Hop::Tls] {
        let closed_before = count(&w.proxy.logs(), "tunnel closed");
        let before: Vec<u32> = children(std::process::id());
        let sshd_dir = w.sshd.dir().display().to_string();
        let (ssh, err, feeder) = endless_upload(&w, hop);
        // The sshd serving this session: the `sshd -i` child the harness spawned for
        // it (a child of this test process that was not there before), and its own
        // children (the privilege-separated session).
        // The harness spawns it when the proxy's connection arrives, which may be just
        // after the proxy logged the tunnel open: wait for it to appear.
        let sshd_pids: Vec<u32> = wait_until(TOOL_TIMEOUT, "the sshd serving this session", || {
            let pids: Vec<u32> = children(std::process::id())
                .into_iter()
                .filter(|p| !before.contains(p) && *p != ssh.pid())
                .filter(|p| {
                    // Only this world's sshd: its stderr is the log file in this world's
                    // directory. (Not its command line: sshd rewrites that with
                    // setproctitle once the session starts.)
                    fs::read_link(format!("/proc/{p}/fd/2"))
                        .map(|log| log.starts_with(&sshd_dir))
                        .unwrap_or(false)
                })
                .collect();
            Ok(if pids.len() == 1 { Ok(pids) } else { Err(pids) })
        })
        .unwrap_or_else(|e| panic!("{hop:?}: {e:#}"));
        let mut doomed = descendants(sshd_pids[0]);
        doomed.push(sshd_pids[0]);
        for pid in doomed {
            sigkill(pid);
        }
        let status = ssh.wait_timeout(CLOSE_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "{hop:?}: ssh still running after sshd was killed: {e:#}\n{}",
                err.text()
            )
        });
        assert!(!status.success(), "{hop:?}: ssh {status}");
        feeder.join().unwrap();
        wait_for_tunnel_closed(&w, closed_before);
    }
    let out = w.run_ok(
        w.tool("ssh", Hop::Tls).arg("vps-task").arg("echo alive"),
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alive\n");
}
