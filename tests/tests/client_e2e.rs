//! End to end: the built `hakuriver-ssh` client with the real OpenSSH client, through the
//! built `hakuriver-ssh-proxy` (and through HakuRiver 0.3.0's own Python host proxy) into
//! a real sshd playing the VPS, routed by rows HakuRiver's own models wrote.
//!
//! Every run goes through an `ssh_program` shim that records that it ran (and its pid)
//! before exec'ing `/usr/bin/ssh`, so the failure tests can prove ssh never started.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_COMPLETED, TASK_OK, TASK_SNOWFLAKE};
use hakuriver_ssh_tests::proxy::Signal;
use hakuriver_ssh_tests::{
    bin_path, random_bytes, run, sha256_hex, HakuDb, LogBuffer, Process, Proxy, PyHostProxy,
    RefusedPort, Sshd,
};
use tempfile::TempDir;

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);
const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// sshd as the VPS, a HakuRiver DB routing to it, our proxy, and a client home with a
/// HakuRiver client config and the recording ssh shim.
struct World {
    sshd: Sshd,
    refused: RefusedPort,
    db: HakuDb,
    proxy: Proxy,
    home: TempDir,
}

impl World {
    fn start() -> World {
        World::start_with(Proxy::start)
    }

    /// Our proxy with a TLS main listener (self-signed certificate) and an extra plain one.
    fn start_tls() -> World {
        World::start_with(|db| {
            Proxy::builder(db)
                .args(["--tls", "--listen", "127.0.0.1:0"])
                .listeners(2)
                .start()
        })
    }

    fn start_with(proxy: impl FnOnce(&Path) -> anyhow::Result<Proxy>) -> World {
        let sshd = Sshd::start().unwrap();
        let refused = RefusedPort::new().unwrap();
        let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
        let proxy = proxy(db.path()).unwrap();
        let home = tempfile::Builder::new()
            .prefix("hakuriver-client-")
            .tempdir()
            .unwrap();
        let w = World {
            sshd,
            refused,
            db,
            proxy,
            home,
        };
        // write_config names this shim as ssh_program.
        hakuriver_ssh_tests::robust::recording_ssh_shim(w.home.path()).unwrap();
        w.write_config(w.proxy.listeners()[0].0.port(), "");
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn config_path(&self) -> PathBuf {
        self.path("config.toml")
    }

    /// HakuRiver's client config (its sections unchanged) plus our `[ssh_client]` with
    /// the recording shim as `ssh_program`.
    fn write_config(&self, proxy_port: u16, extra_client_keys: &str) {
        self.write_config_with(proxy_port, &self.path("ssh-shim"), extra_client_keys);
    }

    fn write_config_with(&self, proxy_port: u16, ssh_program: &Path, extra_client_keys: &str) {
        let text = format!(
            "[network]\nhost_reachable_address = \"127.0.0.1\"\nhost_port = 8000\n\
             host_ssh_proxy_port = {proxy_port}\n\n\
             [paths]\nshared_dir = \"/tmp/hakuriver-test-shared\"\n\n\
             [ssh_client]\nssh_program = \"{program}\"\n{extra_client_keys}\n",
            program = ssh_program.display()
        );
        fs::write(self.config_path(), text).unwrap();
    }

    /// `hakuriver-ssh --config <ours> ARGS...`, environment scrubbed.
    fn client(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_path("hakuriver-ssh"));
        cmd.env_remove("HAKURIVER_CONFIG")
            .env_remove("HAKURIVER_SSH_LOG")
            .env("HOME", self.home.path())
            .arg("--config")
            .arg(self.config_path())
            .args(args);
        cmd
    }

    /// `hakuriver-ssh --config <ours> TASK <ssh test options> REMOTE_COMMAND`.
    fn session(&self, task: &str, remote: &str) -> Command {
        let mut cmd = self.client(&[task]);
        cmd.args(self.sshd.ssh_opts()).arg(remote);
        cmd
    }

    fn ssh_runs(&self) -> Vec<u32> {
        fs::read_to_string(self.path("ssh-ran"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// An ssh_config: the `ssh-config` output (for `extra` client flags) plus the test's
    /// key and a known_hosts file of its own.
    fn ssh_config(&self, extra: &[&str]) -> PathBuf {
        let mut args = extra.to_vec();
        args.push("ssh-config");
        let out = run(&mut self.client(&args), b"", FAIL_TIMEOUT).unwrap();
        assert!(out.status.success(), "ssh-config: {}", text(&out.stderr));
        let block = text(&out.stdout);
        let extra = format!(
            "\nHost *\n    IdentityFile {key}\n    IdentitiesOnly yes\n    \
             UserKnownHostsFile {kh}\n    StrictHostKeyChecking accept-new\n    \
             BatchMode yes\n    LogLevel ERROR\n    ConnectTimeout 20\n",
            key = self.sshd.client_key_path().display(),
            kh = self.path("known_hosts").display()
        );
        let path = self.path("ssh_config");
        fs::write(&path, format!("{block}{extra}")).unwrap();
        path
    }

    fn context(&self, out: &Output) -> String {
        format!(
            "status: {}\nstdout:\n{}\nstderr:\n{}\nproxy log:\n{}\nsshd log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.proxy.logs(),
            self.sshd.log()
        )
    }
}

/// The serving certificate's fingerprint, as `hakuriver-ssh-proxy fingerprint` prints it.
fn proxy_fingerprint(w: &World) -> String {
    let out = hakuriver_ssh_tests::run_proxy_cli(
        [
            "fingerprint".as_ref(),
            "-c".as_ref(),
            w.proxy.config_path().as_os_str(),
            "--state-dir".as_ref(),
            w.proxy.state_dir().as_os_str(),
            "--tls".as_ref(),
        ],
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert!(out.status.success(), "fingerprint: {}", text(&out.stderr));
    let fp = text(&out.stdout).trim().to_owned();
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
    fp
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one-line failure contract: exit 255, nothing on stdout, exactly one stderr line.
fn assert_one_line_failure(w: &World, out: &Output, expected: &str) {
    assert_eq!(out.status.code(), Some(255), "{}", w.context(out));
    assert!(out.stdout.is_empty(), "{}", w.context(out));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", w.context(out));
    assert!(
        stderr.contains(expected),
        "want {expected:?}\n{}",
        w.context(out)
    );
    assert!(
        w.ssh_runs().is_empty(),
        "ssh was started: {}",
        w.context(out)
    );
}

#[test]
fn remote_output_and_exit_status_pass_through() {
    let w = World::start();
    let out = run(
        &mut w.session(
            &TASK_OK.to_string(),
            "echo hello from the vps; echo to-stderr >&2; exit 7",
        ),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", w.context(&out));
    // Only the remote's bytes on stdout: nothing of ours, no banner, no log.
    assert_eq!(
        text(&out.stdout),
        "hello from the vps\n",
        "{}",
        w.context(&out)
    );
    assert_eq!(text(&out.stderr), "to-stderr\n", "{}", w.context(&out));
    assert_eq!(w.ssh_runs().len(), 1);
}

#[test]
fn ssh_options_after_the_task_id_reach_ssh() {
    let w = World::start();
    // `-v` after the ID is ssh's (debug1 lines), not ours; the snowflake ID routes too.
    let mut cmd = w.client(&[&TASK_SNOWFLAKE.to_string(), "-v"]);
    cmd.args(w.sshd.ssh_opts()).arg("exit 0");
    let out = run(&mut cmd, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert!(out.stdout.is_empty(), "{}", w.context(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("debug1:"), "{}", w.context(&out));
    // HostKeyAlias names the VPS, so known_hosts gets one stable entry per task.
    assert!(
        stderr.contains(&format!("hakuriver-{TASK_SNOWFLAKE}")),
        "{}",
        w.context(&out)
    );
}

#[test]
fn our_verbose_output_goes_to_stderr_only() {
    let w = World::start();
    let mut cmd = w.client(&["-vv", &TASK_OK.to_string()]);
    cmd.args(w.sshd.ssh_opts()).arg("echo payload");
    let out = run(&mut cmd, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "payload\n", "{}", w.context(&out));
    assert!(
        text(&out.stderr).contains("tunnel open"),
        "{}",
        w.context(&out)
    );
}

#[test]
fn fifty_mib_each_way_keep_their_sha256() {
    let w = World::start();
    let data = random_bytes(50 * 1024 * 1024, 7);
    let want = sha256_hex(&data);

    let upload = w.path("upload.bin");
    let out = run(
        &mut w.session(
            &TASK_OK.to_string(),
            &format!("cat > '{}'", upload.display()),
        ),
        &data,
        TRANSFER_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(sha256_hex(&fs::read(&upload).unwrap()), want, "upload");

    let source = w.path("download.bin");
    fs::write(&source, &data).unwrap();
    let out = run(
        &mut w.session(&TASK_OK.to_string(), &format!("cat '{}'", source.display())),
        b"",
        TRANSFER_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(out.stdout.len(), data.len(), "download length");
    assert_eq!(sha256_hex(&out.stdout), want, "download");
}

#[test]
fn later_local_connections_get_fresh_tunnels() {
    let w = World::start();
    // An ssh_program that connects twice to the same local port, one after the other.
    let twice = w.path("ssh-twice");
    fs::write(
        &twice,
        "#!/bin/sh\n/usr/bin/ssh \"$@\" && exec /usr/bin/ssh \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&twice, fs::Permissions::from_mode(0o755)).unwrap();
    w.write_config_with(w.proxy.addr().port(), &twice, "");
    let out = run(
        &mut w.session(&TASK_OK.to_string(), "echo run"),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "run\nrun\n", "{}", w.context(&out));
    assert_eq!(
        w.proxy.logs().matches("tunnel opened").count(),
        2,
        "{}",
        w.context(&out)
    );
}

#[test]
fn proxycommand_mode_serves_ssh_scp_rsync_and_sftp() {
    let w = World::start();
    let config = w.ssh_config(&[]);
    let block = fs::read_to_string(&config).unwrap();
    assert!(block.contains("Host hakuriver-*\n"), "{block}");
    assert!(
        block.contains(&format!(
            "ProxyCommand {} --config {} --stdio %n",
            bin_path("hakuriver-ssh").display(),
            w.config_path().display()
        )),
        "{block}"
    );
    let host = format!("hakuriver-{TASK_OK}");
    let ssh = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.arg("-F").arg(&config).args(args);
        cmd
    };

    let out = run(
        &mut ssh(&[&host, "echo via proxycommand; exit 3"]),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", w.context(&out));
    assert_eq!(
        text(&out.stdout),
        "via proxycommand\n",
        "{}",
        w.context(&out)
    );
    // The host key is filed under the VPS's name, not 127.0.0.1:<port>.
    let known = fs::read_to_string(w.path("known_hosts")).unwrap();
    assert!(known.starts_with(&format!("{host} ")), "{known}");

    let data = random_bytes(3 * 1024 * 1024 + 17, 11);
    let want = sha256_hex(&data);
    let local = w.path("local.bin");
    fs::write(&local, &data).unwrap();
    let remote_dir = w.sshd.dir().join("remote");
    fs::create_dir_all(&remote_dir).unwrap();
    let remote = |name: &str| format!("{host}:{}", remote_dir.join(name).display());
    let check = |path: &Path, what: &str| {
        assert_eq!(sha256_hex(&fs::read(path).unwrap()), want, "{what}");
    };
    let ok = |cmd: &mut Command, what: &str| {
        let out = run(cmd, b"", TRANSFER_TIMEOUT).unwrap();
        assert!(out.status.success(), "{what}: {}", w.context(&out));
        assert!(
            out.stdout.is_empty() || what.starts_with("sftp"),
            "{what}: {}",
            w.context(&out)
        );
    };

    // scp both ways (SFTP protocol, OpenSSH's default) and the legacy protocol (-O).
    for (flag, tag) in [(None, "scp"), (Some("-O"), "scp-legacy")] {
        let mut up = Command::new("/usr/bin/scp");
        up.arg("-F")
            .arg(&config)
            .args(flag)
            .arg(&local)
            .arg(remote(&format!("{tag}.bin")));
        ok(&mut up, &format!("{tag} upload"));
        check(
            &remote_dir.join(format!("{tag}.bin")),
            &format!("{tag} upload"),
        );
        let back = w.path(&format!("{tag}-back.bin"));
        let mut down = Command::new("/usr/bin/scp");
        down.arg("-F")
            .arg(&config)
            .args(flag)
            .arg(remote(&format!("{tag}.bin")))
            .arg(&back);
        ok(&mut down, &format!("{tag} download"));
        check(&back, &format!("{tag} download"));
    }

    // rsync over `ssh -F <config>`, both ways.
    let rsh = format!("/usr/bin/ssh -F {}", config.display());
    let mut up = Command::new("rsync");
    up.args(["-a", "-e", &rsh])
        .arg(&local)
        .arg(remote("rsync.bin"));
    ok(&mut up, "rsync upload");
    check(&remote_dir.join("rsync.bin"), "rsync upload");
    let back = w.path("rsync-back.bin");
    let mut down = Command::new("rsync");
    down.args(["-a", "-e", &rsh])
        .arg(remote("rsync.bin"))
        .arg(&back);
    ok(&mut down, "rsync download");
    check(&back, "rsync download");

    // sftp in batch mode: put, get, and a listing.
    let batch = w.path("sftp.batch");
    let sftp_back = w.path("sftp-back.bin");
    fs::write(
        &batch,
        format!(
            "put {local} {dir}/sftp.bin\nget {dir}/sftp.bin {back}\nls {dir}\n",
            local = local.display(),
            dir = remote_dir.display(),
            back = sftp_back.display()
        ),
    )
    .unwrap();
    let mut sftp = Command::new("/usr/bin/sftp");
    sftp.arg("-F").arg(&config).arg("-b").arg(&batch).arg(&host);
    ok(&mut sftp, "sftp batch");
    check(&remote_dir.join("sftp.bin"), "sftp put");
    check(&sftp_back, "sftp get");
}

#[test]
fn stdio_mode_accepts_a_bare_id_and_reports_refusals() {
    let w = World::start();
    // A bare ID in the ProxyCommand works as well as hakuriver-<id>.
    let proxy_command = format!(
        "ProxyCommand={} --config {} --stdio {TASK_OK}",
        bin_path("hakuriver-ssh").display(),
        w.config_path().display()
    );
    let mut cmd = Command::new("/usr/bin/ssh");
    cmd.args(w.sshd.ssh_opts())
        .args(["-o", &proxy_command, "vps", "echo bare id"]);
    let out = run(&mut cmd, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "bare id\n", "{}", w.context(&out));

    // Refused in stdio mode: one line, 255, nothing on stdout (which is ssh's channel).
    let out = run(
        &mut w.client(&["--stdio", "hakuriver-424242"]),
        b"",
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert_one_line_failure(&w, &out, "Proxy Error: Task 424242 not found.");
    let out = run(
        &mut w.client(&["--stdio", "hakuriver-x1"]),
        b"",
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert_one_line_failure(&w, &out, "Invalid task ID format");
}

#[test]
fn failures_print_one_line_exit_255_and_never_start_ssh() {
    let w = World::start();
    let fail = |args: &[&str], expected: &str| {
        let mut cmd = w.client(args);
        cmd.args(w.sshd.ssh_opts()).arg("echo should-not-run");
        let out = run(&mut cmd, b"", FAIL_TIMEOUT).unwrap();
        assert_one_line_failure(&w, &out, expected);
        text(&out.stderr)
    };

    let line = fail(&["424242"], "Proxy Error: Task 424242 not found.");
    assert_eq!(line, "Proxy Error: Task 424242 not found.\n");
    fail(
        &[&TASK_COMPLETED.to_string()],
        &format!("Proxy Error: VPS task {TASK_COMPLETED} is not active (status: completed)."),
    );
    fail(
        &[&fixtures::TASK_REFUSED.to_string()],
        &format!(
            "Proxy Error: Connection refused by VPS task {} on node n1.",
            fixtures::TASK_REFUSED
        ),
    );
    // Checked locally: no connection is even attempted (the host does not exist).
    for bad in ["abc", "-1x", "99999999999999999999999", "12a"] {
        fail(
            &["--host", "unreachable.invalid", "--", bad],
            "Invalid task ID format",
        );
    }
    // Nothing listening on the proxy port.
    let port = w.refused.port().to_string();
    let line = fail(
        &["--proxy-port", &port, &TASK_OK.to_string()],
        &format!("hakuriver-ssh: cannot reach the HakuRiver proxy at 127.0.0.1:{port}: connection refused"),
    );
    assert!(line.contains("host_ssh_proxy_port"), "{line}");
}

#[test]
fn unreachable_host_fails_within_the_connect_timeout() {
    let w = World::start();
    w.write_config(w.proxy.addr().port(), "connect_timeout_secs = 2");
    for host in ["192.0.2.1", "no-such-host.invalid"] {
        let mut cmd = w.client(&["--host", host, &TASK_OK.to_string()]);
        cmd.args(w.sshd.ssh_opts()).arg("true");
        let out = run(&mut cmd, b"", FAIL_TIMEOUT).unwrap();
        assert_one_line_failure(
            &w,
            &out,
            &format!("hakuriver-ssh: cannot reach the HakuRiver proxy at {host}:"),
        );
    }
}

#[test]
fn missing_or_wrong_config_is_one_clear_line() {
    let w = World::start();
    fs::write(
        w.config_path(),
        "[network]\nhost_reachable_address = \"127.0.0.1\"\n[ssh_client]\nusr = \"bob\"\n",
    )
    .unwrap();
    let out = run(&mut w.client(&[&TASK_OK.to_string()]), b"", FAIL_TIMEOUT).unwrap();
    assert_one_line_failure(&w, &out, "usr");
    fs::remove_file(w.config_path()).unwrap();
    let out = run(&mut w.client(&[&TASK_OK.to_string()]), b"", FAIL_TIMEOUT).unwrap();
    assert_one_line_failure(&w, &out, "config.toml");
}

#[test]
fn hakuriver_dot_ssh_name_works_the_same() {
    let w = World::start();
    let alias = w.path("hakuriver.ssh");
    std::os::unix::fs::symlink(bin_path("hakuriver-ssh"), &alias).unwrap();
    let with_alias = |args: &[&str]| {
        let mut cmd = Command::new(&alias);
        // The config via HakuRiver's variable this time.
        cmd.env("HAKURIVER_CONFIG", w.config_path())
            .env("HOME", w.home.path())
            .args(args);
        cmd
    };
    let help = run(&mut with_alias(&["--help"]), b"", FAIL_TIMEOUT).unwrap();
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("hakuriver.ssh"));
    let mut cmd = with_alias(&[&TASK_OK.to_string()]);
    cmd.args(w.sshd.ssh_opts()).arg("echo alias; exit 4");
    let out = run(&mut cmd, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "alias\n");
}

#[test]
fn sigterm_tears_down_ssh_and_the_tunnel() {
    let w = World::start();
    let mut cmd = w.session(&TASK_OK.to_string(), "echo started; exec sleep 600");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let client = Process::spawn("hakuriver-ssh", &mut cmd).unwrap();
    let stdout = LogBuffer::drain(client.take_stdout().unwrap(), None);
    let stderr = LogBuffer::drain(client.take_stderr().unwrap(), None);
    stdout
        .wait_for_text("started\n", SSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nstderr: {}", stderr.text()));
    let ssh_pid = w.ssh_runs()[0];
    let status = client
        .signal_and_wait(Signal::SIGTERM, FAIL_TIMEOUT)
        .unwrap();
    // ssh got the SIGTERM passed on and ended; its status (signal → 128+15, or ssh's
    // own 255) is ours.
    assert!(
        matches!(status.code(), Some(143 | 255)),
        "{status}\nstderr: {}",
        stderr.text()
    );
    assert!(
        !Path::new(&format!("/proc/{ssh_pid}")).exists()
            || fs::read_to_string(format!("/proc/{ssh_pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "ssh (pid {ssh_pid}) still running"
    );
    stdout.wait_eof(FAIL_TIMEOUT).unwrap();
}

#[test]
fn python_host_proxy_interop() {
    let w = World::start();
    let py = PyHostProxy::start(w.db.path()).unwrap();
    w.write_config(py.addr().port(), "");

    let out = run(
        &mut w.session(&TASK_OK.to_string(), "echo through hakuriver 0.3.0; exit 5"),
        b"",
        SSH_TIMEOUT,
    )
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}\npy: {}",
        w.context(&out),
        py.logs()
    );
    assert_eq!(text(&out.stdout), "through hakuriver 0.3.0\n");

    // Its `b'ERROR '...` lines are shown as the message they carry.
    fs::remove_file(w.path("ssh-ran")).unwrap();
    let mut cmd = w.client(&["424242"]);
    cmd.args(w.sshd.ssh_opts()).arg("true");
    let out = run(&mut cmd, b"", FAIL_TIMEOUT).unwrap();
    assert_one_line_failure(&w, &out, "Proxy Error: Task 424242 not found.");
    assert_eq!(text(&out.stderr), "Proxy Error: Task 424242 not found.\n");

    // ProxyCommand mode through the Python host, with scp.
    let config = w.ssh_config(&[]);
    let data = random_bytes(1024 * 1024, 3);
    let local = w.path("py.bin");
    fs::write(&local, &data).unwrap();
    let dest = w.sshd.dir().join("py-up.bin");
    let mut scp = Command::new("/usr/bin/scp");
    scp.arg("-F")
        .arg(&config)
        .arg(&local)
        .arg(format!("hakuriver-{TASK_OK}:{}", dest.display()));
    let out = run(&mut scp, b"", TRANSFER_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "{}\npy: {}",
        w.context(&out),
        py.logs()
    );
    assert_eq!(sha256_hex(&fs::read(&dest).unwrap()), sha256_hex(&data));
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let w = World::start();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&mut w.client(&["completions", shell]), b"", FAIL_TIMEOUT).unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains("hakuriver-ssh"), "{shell}");
        assert!(script.contains("proxy-port"), "{shell}");
    }
    let out = run(&mut w.client(&["man"]), b"", FAIL_TIMEOUT).unwrap();
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    assert!(page.contains("ssh\\-config"), "{page}");
}

#[test]
fn tls_with_a_pinned_fingerprint_and_its_failures() {
    let w = World::start_tls();
    let fp = proxy_fingerprint(&w);
    w.write_config(w.proxy.tls_addr().port(), "");
    let session = |flags: &[&str], remote: &str| {
        let mut args = flags.to_vec();
        let task = TASK_OK.to_string();
        args.push(&task);
        let mut cmd = w.client(&args);
        cmd.args(w.sshd.ssh_opts()).arg(remote);
        run(&mut cmd, b"", SSH_TIMEOUT).unwrap()
    };

    let out = session(&["--tls", "--fingerprint", &fp], "echo over tls; exit 6");
    assert_eq!(out.status.code(), Some(6), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "over tls\n");
    assert!(out.stderr.is_empty(), "{}", w.context(&out));
    assert_eq!(w.proxy.logs().matches("tunnel opened").count(), 1);
    fs::remove_file(w.path("ssh-ran")).unwrap();

    // Nothing about the task reaches a proxy that failed verification.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = session(&["--tls", "--fingerprint", &wrong], "true");
    assert_one_line_failure(&w, &out, &fp);
    assert!(text(&out.stderr).contains(&wrong), "{}", w.context(&out));
    // Self-signed and nothing pinned: refused, with the fingerprint to compare.
    let out = session(&["--tls"], "true");
    assert_one_line_failure(&w, &out, "TLS with the HakuRiver proxy at 127.0.0.1:");
    assert!(text(&out.stderr).contains(&fp), "{}", w.context(&out));
    assert_eq!(w.proxy.logs().matches("tunnel opened").count(), 1);
    assert!(!w.proxy.logs().contains("refused"), "{}", w.proxy.logs());

    // TLS client on the plain port, plain client on the TLS port.
    let plain = w.proxy.addr().port().to_string();
    let out = session(
        &["--tls", "--fingerprint", &fp, "--proxy-port", &plain],
        "true",
    );
    assert_one_line_failure(&w, &out, "plain (non-TLS) port");
    let out = session(&[], "true");
    assert_one_line_failure(&w, &out, "add --tls");
}

#[test]
fn tls_trust_on_first_use_and_the_trust_command() {
    let w = World::start_tls();
    let fp = proxy_fingerprint(&w);
    let addr = w.proxy.tls_addr();
    w.write_config(addr.port(), "[ssh_client.tls]\nenable = true");
    let store = w.home.path().join(".hakuriver/known_proxies");
    let session = |flags: &[&str]| {
        let mut args = flags.to_vec();
        let task = TASK_OK.to_string();
        args.push(&task);
        let mut cmd = w.client(&args);
        cmd.args(w.sshd.ssh_opts()).arg("echo ok");
        run(&mut cmd, b"", SSH_TIMEOUT).unwrap()
    };

    let out = session(&["--trust-on-first-use"]);
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "ok\n");
    assert!(
        text(&out.stderr).contains("trusting the proxy"),
        "{}",
        w.context(&out)
    );
    assert_eq!(
        fs::read_to_string(&store).unwrap(),
        format!("{addr} {fp}\n")
    );
    // Remembered: the next run verifies against the stored fingerprint, silently.
    let out = session(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert!(out.stderr.is_empty(), "{}", w.context(&out));

    // `trust` with the fingerprint the admin handed out.
    fs::remove_file(&store).unwrap();
    let wrong = format!("sha256:{}", "1".repeat(64));
    let out = run(&mut w.client(&["trust", &wrong]), b"", FAIL_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", w.context(&out));
    assert!(
        text(&out.stderr).contains("nothing saved"),
        "{}",
        w.context(&out)
    );
    assert!(!store.exists());
    let out = run(&mut w.client(&["trust", &fp]), b"", FAIL_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(
        fs::read_to_string(&store).unwrap(),
        format!("{addr} {fp}\n")
    );
    let out = session(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));

    // ProxyCommand mode over TLS, trust from the store.
    let config = w.ssh_config(&[]);
    let mut ssh = Command::new("/usr/bin/ssh");
    // The ProxyCommand finds the store under the same HOME.
    ssh.env("HOME", w.home.path())
        .arg("-F")
        .arg(&config)
        .arg(format!("hakuriver-{TASK_OK}"))
        .arg("echo stdio over tls");
    let out = run(&mut ssh, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "stdio over tls\n");
}

#[test]
fn tls_with_a_ca_file_checks_the_name() {
    // A CA and a proxy certificate for localhost/127.0.0.1, minted now.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let pki = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        pki.path().join("ca.pem"),
        pki.path().join("cert.pem"),
        pki.path().join("key.pem"),
    );
    fs::write(&ca_pem, ca.pem()).unwrap();
    fs::write(&cert_pem, cert.pem()).unwrap();
    fs::write(&key_pem, key.serialize_pem()).unwrap();

    let w = World::start_with(|db| {
        Proxy::builder(db)
            .arg("--tls")
            .arg("--tls-cert")
            .arg(&cert_pem)
            .arg("--tls-key")
            .arg(&key_pem)
            .start()
    });
    w.write_config(w.proxy.tls_addr().port(), "");
    let ca_arg = ca_pem.display().to_string();
    let session = |flags: &[&str]| {
        let mut args = vec!["--tls", "--ca-file", &ca_arg];
        args.extend_from_slice(flags);
        let task = TASK_OK.to_string();
        args.push(&task);
        let mut cmd = w.client(&args);
        cmd.args(w.sshd.ssh_opts()).arg("echo ca ok");
        run(&mut cmd, b"", SSH_TIMEOUT).unwrap()
    };
    let out = session(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "ca ok\n");
    let out = session(&["--server-name", "localhost"]);
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    fs::remove_file(w.path("ssh-ran")).unwrap();
    let out = session(&["--server-name", "elsewhere.example"]);
    assert_one_line_failure(&w, &out, "not valid for");
}
