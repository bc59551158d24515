//! End to end, `[ssh_proxy.auth] mode = "kohakuriver"`: the built proxy on a KohakuRiver
//! 1.0 database (our own SQL from its DDL), our client with real OpenSSH, a real sshd as
//! every VPS. Who may reach which VPS, every refusal with its one line and exit 255
//! (ssh never started), names and `list`, HakuRiver 0.3.0's own client refused clearly,
//! and the token absent from every log line of proxy and client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::TASK_OK;
use hakuriver_ssh_tests::kohaku::{self, tokens, users, Schema, SqlDb};
use hakuriver_ssh_tests::{bin_path, run, run_python_client, Proxy, RefusedPort, Sshd};
use tempfile::TempDir;

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

/// sshd as the VPS, the 1.0 routing database with its cast, our proxy with auth on (a
/// TLS main listener and a plain extra one), and a client home with the ssh shim.
struct World {
    sshd: Sshd,
    _refused: RefusedPort,
    _db: SqlDb,
    proxy: Proxy,
    home: TempDir,
    fingerprint: String,
}

impl World {
    fn start() -> World {
        World::start_with("[ssh_proxy.auth]\nmode = \"kohakuriver\"\n")
    }

    fn start_with(config: &str) -> World {
        let sshd = Sshd::start().unwrap();
        let refused = RefusedPort::new().unwrap();
        let (db, cast) = kohaku::routing(Schema::Kohaku10, sshd.port(), refused.port()).unwrap();
        assert!(cast.is_some());
        let proxy = Proxy::builder(db.path())
            .config(config)
            .args(["--tls", "--listen", "127.0.0.1:0", "-v"])
            .listeners(2)
            .start()
            .unwrap();
        let home = tempfile::Builder::new()
            .prefix("kohaku-client-")
            .tempdir()
            .unwrap();
        let fingerprint = fingerprint(&proxy);
        let w = World {
            sshd,
            _refused: refused,
            _db: db,
            proxy,
            home,
            fingerprint,
        };
        let shim = hakuriver_ssh_tests::robust::recording_ssh_shim(w.home.path()).unwrap();
        fs::write(
            w.path("config.toml"),
            format!(
                "[network]\nhost_reachable_address = \"127.0.0.1\"\nhost_ssh_proxy_port = {}\n\n\
                 [ssh_client]\nssh_program = \"{}\"\n\n[ssh_client.tls]\nenable = true\n\
                 fingerprints = [\"{}\"]\n",
                w.proxy.tls_addr().port(),
                shim.display(),
                w.fingerprint
            ),
        )
        .unwrap();
        w
    }

    /// The proxy's plain-TCP listener (beside the TLS one).
    fn plain_addr(&self) -> std::net::SocketAddr {
        self.proxy
            .listeners()
            .iter()
            .find(|(_, t)| *t == hakuriver_ssh_tests::Transport::Plain)
            .map(|(a, _)| *a)
            .expect("a plain listener")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// `hakuriver-ssh --config <ours> -vv ARGS...` with `token` in `$KOHAKURIVER_TOKEN`.
    fn client(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_path("hakuriver-ssh"));
        cmd.env_remove("HAKURIVER_CONFIG")
            .env_remove("HAKURIVER_SSH_LOG")
            .env_remove("KOHAKURIVER_TOKEN")
            .env("HOME", self.home.path())
            .arg("--config")
            .arg(self.path("config.toml"))
            .arg("-vv")
            .args(args);
        if let Some(token) = token {
            cmd.env("KOHAKURIVER_TOKEN", token);
        }
        cmd
    }

    /// A session to `task` running `remote`.
    fn session(&self, token: Option<&str>, task: &str, remote: &str) -> Output {
        let mut cmd = self.client(token, &[task]);
        cmd.args(self.sshd.ssh_opts()).arg(remote);
        run(&mut cmd, b"", SSH_TIMEOUT).unwrap()
    }

    fn ssh_runs(&self) -> usize {
        fs::read_to_string(self.path("ssh-ran"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn context(&self, out: &Output) -> String {
        format!(
            "status: {}\nstdout:\n{}\nstderr:\n{}\nproxy log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.proxy.logs()
        )
    }

    /// A refused run: exit 255, nothing on stdout, the `Proxy Error:` line holds
    /// `expected`, ssh never started, no token in anything printed.
    fn assert_refused(&self, out: &Output, expected: &str) {
        assert_eq!(out.status.code(), Some(255), "{}", self.context(out));
        assert!(out.stdout.is_empty(), "{}", self.context(out));
        let stderr = text(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.starts_with("Proxy Error: "))
            .unwrap_or_else(|| panic!("no Proxy Error line\n{}", self.context(out)));
        assert_eq!(
            line,
            format!("Proxy Error: {expected}"),
            "{}",
            self.context(out)
        );
        assert_eq!(self.ssh_runs(), 0, "ssh was started\n{}", self.context(out));
        assert_no_token(&stderr);
    }
}

fn fingerprint(proxy: &Proxy) -> String {
    let out = hakuriver_ssh_tests::run_proxy_cli(
        [
            "fingerprint".as_ref(),
            "-c".as_ref(),
            proxy.config_path().as_os_str(),
            "--state-dir".as_ref(),
            proxy.state_dir().as_os_str(),
            "--tls".as_ref(),
        ],
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert!(out.status.success(), "fingerprint: {}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// No token of the cast appears in `log`.
fn assert_no_token(log: &str) {
    for token in [
        tokens::OWNER,
        tokens::ASSIGNED,
        tokens::OPERATOR,
        tokens::ADMIN,
        tokens::OTHER,
        tokens::VIEWER,
        tokens::INACTIVE,
        tokens::REVOKED,
        tokens::WRONG,
    ] {
        assert!(!log.contains(token), "a token in the log:\n{log}");
        // Not its tail either (a log that cut it short would still leak most of it).
        assert!(
            !log.contains(&token[token.len() - 16..]),
            "a token's tail in the log:\n{log}"
        );
    }
}

#[test]
fn owner_assigned_operator_and_admin_each_get_a_session() {
    let w = World::start();
    let task = TASK_OK.to_string();
    for (token, user) in [
        (tokens::OWNER, users::OWNER),
        (tokens::ASSIGNED, users::ASSIGNED),
        (tokens::OPERATOR, users::OPERATOR),
        (tokens::ADMIN, users::ADMIN),
    ] {
        let out = w.session(Some(token), &task, &format!("echo hello {user}; exit 3"));
        assert_eq!(out.status.code(), Some(3), "{user}: {}", w.context(&out));
        assert_eq!(
            text(&out.stdout),
            format!("hello {user}\n"),
            "{}",
            w.context(&out)
        );
        assert_no_token(&text(&out.stderr));
        w.proxy
            .wait_for_log(&format!("user={user}"), FAIL_TIMEOUT)
            .unwrap();
    }
    let log = w.proxy.logs();
    assert!(log.contains("tunnel opened"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("tunnel closed") && l.contains("user=ada")),
        "{log}"
    );
    assert_no_token(&log);
}

#[test]
fn every_refusal_is_one_line_exit_255_and_ssh_never_runs() {
    let w = World::start();
    let task = TASK_OK.to_string();
    let hidden = format!(
        "Task {TASK_OK} not found, or you may not reach it (only its owner, users assigned to it and operators may)."
    );
    // Another user's task and a task that does not exist read exactly the same.
    w.assert_refused(&w.session(Some(tokens::OTHER), &task, "true"), &hidden);
    w.assert_refused(
        &w.session(Some(tokens::OTHER), "424242", "true"),
        "Task 424242 not found, or you may not reach it (only its owner, users assigned to it and operators may).",
    );
    w.assert_refused(
        &w.session(Some(tokens::INACTIVE), &task, "true"),
        kohaku::texts::INACTIVE_ACCOUNT,
    );
    w.assert_refused(
        &w.session(Some(tokens::REVOKED), &task, "true"),
        kohaku::texts::BAD_TOKEN,
    );
    w.assert_refused(
        &w.session(Some(tokens::WRONG), &task, "true"),
        kohaku::texts::BAD_TOKEN,
    );
    w.assert_refused(
        &w.session(Some(tokens::VIEWER), &task, "true"),
        &kohaku::texts::role_too_low("viewer"),
    );
    let no_token = w.session(None, &task, "true");
    let stderr = text(&no_token.stderr);
    assert!(
        stderr.contains("Proxy Error: Authentication required:") && stderr.contains("--tls"),
        "{}",
        w.context(&no_token)
    );
    assert_eq!(no_token.status.code(), Some(255));
    assert_eq!(w.ssh_runs(), 0);

    // The proxy logged each refusal with its reason (and the user once it was known).
    let log = w.proxy.logs();
    assert!(
        log.lines()
            .any(|l| l.contains("tunnel refused") && l.contains("user=otto")),
        "{log}"
    );
    assert!(log.contains("API token unknown or revoked"), "{log}");
    assert!(log.contains("is disabled"), "{log}");
    assert_no_token(&log);
}

#[test]
fn a_plain_listener_refuses_and_the_client_never_sends_the_token_there() {
    let w = World::start();
    let plain = w.plain_addr();
    let port = plain.port().to_string();
    let mut cmd = w.client(
        Some(tokens::OWNER),
        &["--no-tls", "--proxy-port", &port, &TASK_OK.to_string()],
    );
    cmd.args(w.sshd.ssh_opts()).arg("true");
    let out = run(&mut cmd, b"", FAIL_TIMEOUT).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{}", w.context(&out));
    let line = stderr
        .lines()
        .find(|l| l.starts_with("Proxy Error: Authentication required:"))
        .unwrap_or_else(|| panic!("{}", w.context(&out)));
    assert!(line.contains("add --tls"), "{line}");
    assert_eq!(w.ssh_runs(), 0);

    // A token that does arrive on a plain port (another client's mistake) is refused.
    let mut sock = hakuriver_ssh_tests::connect(plain).unwrap();
    std::io::Write::write_all(
        &mut sock,
        format!(
            "HAKURIVER_SSH/1 TUNNEL task={TASK_OK} token={}\n",
            tokens::OWNER
        )
        .as_bytes(),
    )
    .unwrap();
    let reply = hakuriver_ssh_tests::read_line(&mut sock).unwrap();
    assert!(
        text(&reply).starts_with("ERROR API tokens are accepted only over TLS"),
        "{}",
        text(&reply)
    );
    assert_no_token(&w.proxy.logs());
}

#[test]
fn hakurivers_python_client_gets_a_clear_refusal() {
    let w = World::start();
    let plain = w.plain_addr();
    let out = run_python_client(plain, &TASK_OK.to_string(), &w.sshd, b"", FAIL_TIMEOUT).unwrap();
    // It prints (on stdout, as it does) the proxy's message after "Proxy Error:".
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("Authentication required: this Host admits KohakuRiver users only."),
        "{all}"
    );
}

#[test]
fn names_and_list_show_only_what_the_user_may_reach() {
    let w = World::start();
    let list = |token: &str| -> Vec<serde_json::Value> {
        let out = run(
            &mut w.client(Some(token), &["list", "--json"]),
            b"",
            FAIL_TIMEOUT,
        )
        .unwrap();
        assert!(out.status.success(), "{}", w.context(&out));
        assert_no_token(&text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", w.context(&out)))
    };
    let ids = |tasks: &[serde_json::Value]| -> Vec<String> {
        tasks
            .iter()
            .map(|t| t["task_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let owner = ids(&list(tokens::OWNER));
    assert!(owner.contains(&TASK_OK.to_string()), "{owner:?}");
    assert!(
        owner.contains(&kohaku::TASK_TWIN_A.to_string()),
        "{owner:?}"
    );
    assert!(
        !owner.contains(&kohaku::TASK_OTHERS.to_string()),
        "{owner:?}"
    );
    assert!(
        !owner.contains(&kohaku::TASK_UNOWNED.to_string()),
        "{owner:?}"
    );
    let other = ids(&list(tokens::OTHER));
    assert!(!other.contains(&TASK_OK.to_string()), "{other:?}");
    assert!(
        other.contains(&kohaku::TASK_OTHERS.to_string()),
        "{other:?}"
    );
    let operator = ids(&list(tokens::OPERATOR));
    assert!(
        operator.contains(&kohaku::TASK_UNOWNED.to_string()),
        "{operator:?}"
    );

    // The table form, for people.
    let out = run(
        &mut w.client(Some(tokens::OWNER), &["list"]),
        b"",
        FAIL_TIMEOUT,
    )
    .unwrap();
    let table = text(&out.stdout);
    assert!(table.starts_with("TASK ID"), "{table}");
    assert!(table.contains(kohaku::NAME_UNIQUE), "{table}");

    // A unique name connects; an ambiguous one, another user's and an unknown one do not.
    let out = w.session(Some(tokens::OWNER), kohaku::NAME_UNIQUE, "echo by name");
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "by name\n");
    // That run started ssh; the refusals below must not.
    fs::remove_file(w.path("ssh-ran")).unwrap();
    w.assert_refused(
        &w.session(Some(tokens::OWNER), kohaku::NAME_TWIN, "true"),
        &format!(
            "2 VPS tasks named {:?} that you may reach; use the task ID ('hakuriver-ssh list' shows them).",
            kohaku::NAME_TWIN
        ),
    );
    for name in [kohaku::NAME_OTHERS, "nonexistent-box"] {
        w.assert_refused(
            &w.session(Some(tokens::OWNER), name, "true"),
            &format!("No VPS named {name:?} that you may reach; 'hakuriver-ssh list' shows yours."),
        );
    }
    assert_no_token(&w.proxy.logs());
}

#[test]
fn names_and_lists_are_refused_without_auth_or_allow_listing() {
    let w = World::start_with("");
    let out = run(
        &mut w.client(Some(tokens::OWNER), &["list"]),
        b"",
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", w.context(&out));
    assert!(
        text(&out.stderr).contains(
            "Proxy Error: Task names and lists are not enabled on this Host; use the task ID."
        ),
        "{}",
        w.context(&out)
    );
    // Mode off: the token is not checked, the ID is routed as HakuRiver routes it.
    let out = w.session(Some(tokens::WRONG), &TASK_OK.to_string(), "echo off");
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));

    // allow_listing: every VPS task is listed, to anyone.
    let w = World::start_with("[ssh_proxy]\nallow_listing = true\n");
    let out = run(
        &mut w.client(Some(tokens::OTHER), &["list", "--json"]),
        b"",
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert!(out.status.success(), "{}", w.context(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        listed
            .iter()
            .any(|t| t["task_id"].as_str() == Some(TASK_OK.to_string().as_str())),
        "{listed:?}"
    );
    assert!(listed
        .iter()
        .any(|t| t["task_id"].as_str() == Some(kohaku::TASK_UNOWNED.to_string().as_str())));
}

#[test]
fn ssh_config_and_stdio_work_with_auth_and_names() {
    let w = World::start();
    // The token in a file named on the command line: the ssh-config block carries the
    // path (never the token) into the ProxyCommand.
    let token_file = w.path("token");
    fs::write(&token_file, format!("{}\n", tokens::OWNER)).unwrap();
    let token_path = token_file.display().to_string();
    let out = run(
        &mut w.client(None, &["--token-file", &token_path, "ssh-config"]),
        b"",
        FAIL_TIMEOUT,
    )
    .unwrap();
    assert!(out.status.success(), "{}", w.context(&out));
    let block = text(&out.stdout);
    assert!(block.contains("--token-file"), "{block}");
    assert!(!block.contains(tokens::OWNER), "{block}");
    let config = w.path("ssh_config");
    fs::write(
        &config,
        format!(
            "{block}\nHost *\n    IdentityFile {key}\n    IdentitiesOnly yes\n    \
             UserKnownHostsFile {kh}\n    StrictHostKeyChecking accept-new\n    \
             BatchMode yes\n    LogLevel ERROR\n    ConnectTimeout 20\n",
            key = w.sshd.client_key_path().display(),
            kh = w.path("known_hosts").display()
        ),
    )
    .unwrap();
    for host in [
        format!("hakuriver-{TASK_OK}"),
        format!("hakuriver-{}", kohaku::NAME_UNIQUE),
    ] {
        let mut ssh = Command::new("/usr/bin/ssh");
        ssh.env("HOME", w.home.path())
            .env_remove("KOHAKURIVER_TOKEN")
            .arg("-F")
            .arg(&config)
            .arg(&host)
            .arg("echo via proxycommand");
        let out = run(&mut ssh, b"", SSH_TIMEOUT).unwrap();
        assert_eq!(out.status.code(), Some(0), "{host}: {}", w.context(&out));
        assert_eq!(text(&out.stdout), "via proxycommand\n");
    }
    // Another user's VPS by name, in ProxyCommand mode: one line, ssh's 255.
    let mut ssh = Command::new("/usr/bin/ssh");
    ssh.env("HOME", w.home.path())
        .arg("-F")
        .arg(&config)
        .arg(format!("hakuriver-{}", kohaku::NAME_OTHERS))
        .arg("true");
    let out = run(&mut ssh, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", w.context(&out));
    assert!(
        text(&out.stderr).contains("Proxy Error: No VPS named"),
        "{}",
        w.context(&out)
    );
    // The token never reached a process argument of ssh or of the ProxyCommand.
    assert_no_token(&block);
    assert_no_token(&w.proxy.logs());
}

#[test]
fn kohakurivers_own_client_environment_and_auth_json_are_enough() {
    let w = World::start();
    // No HakuRiver config at all: KohakuRiver's variables name the Host and port, and
    // the token comes from ~/.kohakuriver/auth.json as `kohakuriver auth login` writes it.
    let home = tempfile::tempdir().unwrap();
    fs::create_dir(home.path().join(".kohakuriver")).unwrap();
    fs::write(
        home.path().join(".kohakuriver/auth.json"),
        format!(
            "{{\n  \"token\": \"{}\",\n  \"token_id\": 1,\n  \"username\": \"{}\",\n  \"role\": \"user\"\n}}",
            tokens::ASSIGNED,
            users::ASSIGNED
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin_path("hakuriver-ssh"));
    cmd.env_remove("HAKURIVER_CONFIG")
        .env_remove("KOHAKURIVER_TOKEN")
        .env("HOME", home.path())
        .env("KOHAKURIVER_HOST", "127.0.0.1")
        .env(
            "KOHAKURIVER_SSH_PROXY_PORT",
            w.proxy.tls_addr().port().to_string(),
        )
        .args(["-vv", "--tls", "--fingerprint", &w.fingerprint])
        .arg(TASK_OK.to_string())
        .args(w.sshd.ssh_opts())
        .arg("echo from auth.json");
    let out = run(&mut cmd, b"", SSH_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", w.context(&out));
    assert_eq!(text(&out.stdout), "from auth.json\n");
    assert_no_token(&text(&out.stderr));
    w.proxy
        .wait_for_log(&format!("user={}", users::ASSIGNED), FAIL_TIMEOUT)
        .unwrap();
}
