//! Resumable tunnels end to end: the real OpenSSH client with our client as its
//! ProxyCommand, our proxy, a real sshd as the VPS, and between client and proxy a
//! relay that the test breaks: it ends every connection it carries (both ends see their
//! TCP connection close, as when the network changes under them) and relays the next.
//!
//! - 100 MB up and 100 MB down survive five breaks each, byte for byte (sha256), and ssh
//!   exits 0.
//! - The interactive mode keeps its local listener and its one ssh across breaks.
//! - A break longer than the grace period ends the session: our client says so in one
//!   line and exits 255 (as ssh does on a lost connection), and the proxy closes the
//!   runner connection.
//! - A replayed RESUME, a forged proof and another tunnel's id are refused with one
//!   line each, and the real tunnel keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_OK};
use hakuriver_ssh_tests::netbreak::Relay;
use hakuriver_ssh_tests::robust::{established_on_port, ssh_via_client, wait_until};
use hakuriver_ssh_tests::{random_bytes, sha256_hex, HakuDb, Proxy, RefusedPort, Sshd};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(60);
const TRANSFER: usize = 100 * 1024 * 1024;
const BREAKS: usize = 5;

struct World {
    sshd: Sshd,
    _refused: RefusedPort,
    _db: HakuDb,
    proxy: Proxy,
    home: TempDir,
    work: TempDir,
}

impl World {
    fn start(config: &str) -> World {
        let sshd = Sshd::start().unwrap();
        let refused = RefusedPort::new().unwrap();
        let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
        let proxy = Proxy::builder(db.path()).config(config).start().unwrap();
        World {
            sshd,
            _refused: refused,
            _db: db,
            proxy,
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// ssh through our client (`--stdio`, `-v` so breaks and resumes are logged) via
    /// `relay`, running `command` on the VPS.
    fn ssh(&self, relay: &Relay, command: &str) -> Command {
        let mut cmd = ssh_via_client(
            &self.sshd,
            relay.addr(),
            &TASK_OK.to_string(),
            &["-v"],
            self.home.path(),
        );
        cmd.arg(command);
        cmd
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Reads stderr on a thread, so ssh never blocks on it; returns it at the end.
fn drain(stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stream).read_to_string(&mut text);
        text
    })
}

#[test]
fn transfers_survive_five_network_breaks_each_way() {
    let world = World::start("");
    let mut relay = Relay::start(world.proxy.addr(), world.work.path());
    let data = random_bytes(TRANSFER, 14);
    let chunk = TRANSFER / (BREAKS + 1);

    // Upload: after each sixth of the data is written and has partly arrived, the
    // connection to the Host breaks.
    let target = world.work.path().join("uploaded");
    let mut ssh = world
        .ssh(&relay, &format!("cat > {}", target.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain(ssh.stderr.take().unwrap());
    let mut stdin = ssh.stdin.take().unwrap();
    for (i, piece) in data.chunks(chunk).enumerate() {
        stdin.write_all(piece).unwrap();
        if i < BREAKS {
            let want = (i * chunk + chunk / 2) as u64;
            wait_until(WAIT, "upload progress", || {
                let len = file_len(&target);
                Ok(if len >= want { Ok(()) } else { Err(len) })
            })
            .unwrap();
            relay.break_and_restore();
        }
    }
    drop(stdin);
    let status = wait_child(&mut ssh);
    let log = stderr.join().unwrap();
    assert!(status.success(), "upload ssh failed: {status:?}\n{log}");
    assert_eq!(file_len(&target), TRANSFER as u64);
    assert_eq!(
        sha256_hex(&fs::read(&target).unwrap()),
        sha256_hex(&data),
        "upload intact"
    );
    assert!(
        log.matches("tunnel resumed after").count() >= BREAKS,
        "each break resumed:\n{log}"
    );

    // Download: the test stops reading while it breaks the connection, so bytes are in
    // flight in every buffer on the way.
    let source = world.work.path().join("to-download");
    fs::write(&source, &data).unwrap();
    // The relay instance that carried the upload's end is done: a fresh one.
    relay.break_and_restore();
    let mut ssh = world
        .ssh(&relay, &format!("cat {}", source.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = drain(ssh.stderr.take().unwrap());
    let mut stdout = ssh.stdout.take().unwrap();
    let mut got = vec![0u8; TRANSFER];
    for (i, piece) in got.chunks_mut(chunk).enumerate() {
        if let Err(e) = stdout.read_exact(piece) {
            let _ = ssh.kill();
            panic!("download piece {i}: {e}\n{}", stderr.join().unwrap());
        }
        if i < BREAKS {
            relay.break_and_restore();
        }
    }
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let status = wait_child(&mut ssh);
    let log = stderr.join().unwrap();
    assert!(status.success(), "download ssh failed: {status:?}\n{log}");
    assert!(rest.is_empty(), "{} bytes too many", rest.len());
    assert!(sha256_hex(&got) == sha256_hex(&data), "download intact");
    assert!(
        log.matches("tunnel resumed after").count() >= BREAKS,
        "each break resumed:\n{log}"
    );
    let proxy_log = world.proxy.logs();
    assert!(
        proxy_log.matches("tunnel resumed").count() >= 2 * BREAKS,
        "{proxy_log}"
    );
    assert!(proxy_log.contains("bytes_replayed="), "{proxy_log}");
}

fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    wait_until(WAIT * 3, "ssh to exit", || {
        Ok(match child.try_wait()? {
            Some(status) => Ok(status),
            None => Err(()),
        })
    })
    .unwrap()
}

/// An interactive `cat` on the VPS: a line written comes back.
struct Echo {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Echo {
    fn start(world: &World, relay: &Relay) -> Echo {
        Echo::spawn(world.ssh(relay, "cat"))
    }

    /// The interactive mode: `hakuriver-ssh -v TASK <ssh options> cat`, our client
    /// running ssh against its local listener.
    fn interactive(world: &World, relay: &Relay) -> Echo {
        let mut cmd = Command::new(hakuriver_ssh_tests::bin_path("hakuriver-ssh"));
        cmd.env("HOME", world.home.path())
            .env_remove("HAKURIVER_CONFIG")
            .env_remove("HAKURIVER_SSH_LOG")
            .args(["-v", "--host", "127.0.0.1", "--proxy-port"])
            .arg(relay.addr().port().to_string())
            .arg(TASK_OK.to_string())
            .args(world.sshd.ssh_opts())
            .arg("cat");
        Echo::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Echo {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Some(drain(child.stderr.take().unwrap()));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut echo = Echo {
            child,
            stdin,
            stdout,
            stderr,
        };
        echo.round_trip("hello");
        echo
    }

    fn round_trip(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), text);
    }
}

#[test]
fn the_interactive_mode_keeps_ssh_across_breaks() {
    let world = World::start("");
    let mut relay = Relay::start(world.proxy.addr(), world.work.path());
    let mut echo = Echo::interactive(&world, &relay);
    for i in 0..3 {
        relay.break_and_restore();
        echo.round_trip(&format!("after break {i}"));
    }
    drop(echo.stdin);
    let status = wait_child(&mut echo.child);
    let log = echo.stderr.take().unwrap().join().unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert_eq!(log.matches("tunnel resumed after").count(), 3, "{log}");
    // One ssh ran for the whole session: it never saw the breaks.
    assert_eq!(log.matches("starting ssh").count(), 1, "{log}");
}

#[test]
fn a_break_longer_than_the_grace_period_ends_the_session_with_255() {
    let world = World::start("[ssh_proxy.resume]\ngrace_secs = 2\n");
    let mut relay = Relay::start(world.proxy.addr(), world.work.path());
    let mut echo = Echo::start(&world, &relay);
    assert_eq!(
        established_on_port(world.sshd.port()).unwrap(),
        2,
        "proxy ⇄ sshd up"
    );
    relay.kill();
    let status = wait_child(&mut echo.child);
    let log = echo.stderr.take().unwrap().join().unwrap();
    assert_eq!(status.code(), Some(255), "{log}");
    assert!(
        log.contains("could not resume the session within its 2s grace period"),
        "{log}"
    );
    world
        .proxy
        .wait_for_log("no resume within the grace period; tunnel closed", WAIT)
        .unwrap();
    // The proxy closed its runner connection (both ends of it gone from the table).
    wait_until(WAIT, "the runner connection closed", || {
        let n = established_on_port(world.sshd.port())?;
        Ok(if n == 0 { Ok(()) } else { Err(n) })
    })
    .unwrap();
}

/// Sends one line straight to the proxy and returns its one-line answer.
fn ask(proxy: SocketAddr, line: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(line).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).unwrap();
    answer
}

fn line_starting(bytes: &[u8], prefix: &str) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .find(|l| l.starts_with(prefix))
        .map(|l| format!("{l}\n"))
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn replayed_forged_and_foreign_resumes_are_refused_and_disturb_nothing() {
    let world = World::start("");
    fs::create_dir_all(world.work.path().join("a")).unwrap();
    fs::create_dir_all(world.work.path().join("b")).unwrap();
    let mut relay_a = Relay::start(world.proxy.addr(), &world.work.path().join("a"));
    let relay_b = Relay::start(world.proxy.addr(), &world.work.path().join("b"));
    let mut a = Echo::start(&world, &relay_a);
    let mut b = Echo::start(&world, &relay_b);
    let grant_b = line_starting(
        &relay_b.downstream(relay_b.generation()),
        "SUCCESS RESUMABLE ",
    )
    .expect("b's grant");
    let id_b = field(&grant_b, "id").to_owned();

    // A break: the client resumes through the next relay instance, which records the
    // RESUME line.
    let before = relay_a.generation();
    relay_a.break_and_restore();
    a.round_trip("after the break");
    let resume = line_starting(
        &relay_a.upstream(relay_a.generation()),
        "HAKURIVER_SSH/1 RESUME ",
    )
    .unwrap_or_else(|| panic!("no RESUME after instance {before}"));

    // 1. The same line again: its generation is spent.
    let answer = ask(world.proxy.addr(), resume.as_bytes());
    assert!(
        answer.starts_with("ERROR Resume refused: the resume proof does not match"),
        "{answer}"
    );
    // 2. A forged proof.
    let proof = field(&resume, "proof");
    let forged = resume.replace(proof, &"A".repeat(proof.len()));
    let answer = ask(world.proxy.addr(), forged.as_bytes());
    assert!(
        answer.starts_with("ERROR Resume refused: the resume proof does not match"),
        "{answer}"
    );
    // 3. The next generation with A's proof but B's tunnel id.
    let id_a = field(&resume, "id");
    let generation: u64 = field(&resume, "gen").parse().unwrap();
    let foreign = resume.replace(id_a, &id_b).replace(
        &format!("gen={generation}"),
        &format!("gen={}", generation + 1),
    );
    let answer = ask(world.proxy.addr(), foreign.as_bytes());
    assert!(
        answer.starts_with("ERROR Resume refused: the resume proof does not match"),
        "{answer}"
    );
    // 4. A tunnel this Host never had.
    let unknown = resume.replace(id_a, "AAAAAAAAAAAAAAAAAAAAAA");
    let answer = ask(world.proxy.addr(), unknown.as_bytes());
    assert!(
        answer.starts_with("ERROR Resume refused: this Host holds no such tunnel"),
        "{answer}"
    );

    // Both real tunnels are untouched.
    a.round_trip("a still works");
    b.round_trip("b still works");
    let log = world.proxy.logs();
    assert_eq!(log.matches("resume refused peer=").count(), 4, "{log}");
    drop(a.stdin);
    drop(b.stdin);
    assert!(wait_child(&mut a.child).success());
    assert!(wait_child(&mut b.child).success());
}
