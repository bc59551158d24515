//! Issue 15 item 4, for real: Debian's HAProxy in TCP mode sends PROXY v2 to three
//! `hakuriver-ssh-proxy` replicas that read the task directory over HTTP from HakuRiver
//! 0.3.0's own Host API. Clients from 127.0.0.2, 127.0.0.3, ... get tunnels through
//! every replica; each replica's logs and per-address limit see the real client
//! address; a killed replica is marked down and new tunnels go to the others; a draining
//! replica's `/readyz` answers 503, HAProxy marks it down on that answer, and new tunnels
//! go to the last one, which also carries a real ssh session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_OK};
use hakuriver_ssh_tests::haku::{HakuDb, PyHostApi};
use hakuriver_ssh_tests::net::http_get;
use hakuriver_ssh_tests::net::{read_line, RefusedPort, IO_TIMEOUT};
use hakuriver_ssh_tests::process::{LogBuffer, Process};
use hakuriver_ssh_tests::proxy::Proxy;
use hakuriver_ssh_tests::robust::{ssh_via_client, wait_until};
use hakuriver_ssh_tests::sshd::Sshd;
use nix::sys::signal::Signal;
use socket2::{Domain, Socket, Type};

const HAPROXY: &str = "/usr/sbin/haproxy";
const WAIT: Duration = Duration::from_secs(30);
const PER_IP_REFUSAL: &str = "ERROR Too many connections from your address; try again later.\n";

/// A free loopback port (bound, then released for HAProxy to bind).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One replica: the daemon over the Host API, trusting HAProxy's address, one tunnel
/// per client address, and its admin listener's address.
struct Replica {
    name: &'static str,
    proxy: Proxy,
    admin: String,
}

impl Replica {
    fn start(name: &'static str, api: SocketAddr) -> Replica {
        let proxy = Proxy::builder(Path::new("/nonexistent/hakuriver.db"))
            .args(["--admin-listen", "127.0.0.1:0"])
            .database_section(&format!(
                "[database]\nkind = \"http\"\nurl = \"http://{api}\"\ncache_secs = 600\n"
            ))
            .config(
                "[ssh_proxy]\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 1\n\
                 shutdown_grace_secs = 60\n",
            )
            .start()
            .unwrap();
        proxy.wait_for_log("Host API readable", WAIT).unwrap();
        let admin = proxy.admin_addr(WAIT).unwrap();
        Replica { name, proxy, admin }
    }

    /// Its `tunnel opened` log lines.
    fn opened(&self) -> Vec<String> {
        self.proxy
            .logs()
            .lines()
            .filter(|l| l.contains("tunnel opened"))
            .map(str::to_owned)
            .collect()
    }

    fn opened_from(&self, ip: &str) -> usize {
        let needle = format!("peer={ip}:");
        self.opened().iter().filter(|l| l.contains(&needle)).count()
    }
}

/// HAProxy in the foreground with a stats socket to read server states from.
struct Haproxy {
    _dir: tempfile::TempDir,
    /// Killed on drop.
    _process: Process,
    logs: LogBuffer,
    _stderr: LogBuffer,
    addr: SocketAddr,
    socket: std::path::PathBuf,
}

impl Haproxy {
    fn start(replicas: &[&Replica]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("haproxy-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("stats.sock");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut servers = String::new();
        for r in replicas {
            let admin_port = r.admin.rsplit(':').next().unwrap();
            servers.push_str(&format!(
                "    server {} {} port {admin_port}\n",
                r.name,
                r.proxy.addr()
            ));
        }
        let cfg = format!(
            r#"global
    log stdout format raw local0
    stats socket {socket} mode 600 level admin
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    retries 2
    option redispatch
frontend hakuriver_ssh
    bind {addr}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server send-proxy-v2 check inter 200ms fall 1 rise 1
{servers}"#,
            socket = socket.display()
        );
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, &cfg).unwrap();
        let mut cmd = Command::new(HAPROXY);
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let process = Process::spawn("haproxy", &mut cmd).unwrap();
        let logs = LogBuffer::drain(
            process.take_stdout().unwrap(),
            Some("[haproxy] ".to_owned()),
        );
        let stderr = LogBuffer::drain(
            process.take_stderr().unwrap(),
            Some("[haproxy!] ".to_owned()),
        );
        let h = Haproxy {
            _dir: dir,
            _process: process,
            logs,
            _stderr: stderr,
            addr,
            socket,
        };
        wait_until(WAIT, "HAProxy's stats socket", || {
            Ok(match UnixStream::connect(&h.socket) {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            })
        })
        .unwrap();
        h
    }

    /// (server, status, check status) of every backend server, from `show stat`.
    fn servers(&self) -> Vec<(String, String, String)> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(b"show stat\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (px, sv, st, ck) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("check_status"),
        );
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > ck && f[px] == "replicas" && f[sv] != "BACKEND")
            .map(|f| (f[sv].to_owned(), f[st].to_owned(), f[ck].to_owned()))
            .collect()
    }

    /// Waits until `server`'s status starts with `status`; returns its check status.
    fn wait_server(&self, server: &str, status: &str) -> String {
        wait_until(WAIT, &format!("HAProxy: {server} {status}"), || {
            let all = self.servers();
            Ok(
                match all
                    .iter()
                    .find(|(s, st, _)| s == server && st.starts_with(status))
                {
                    Some((_, _, check)) => Ok(check.clone()),
                    None => Err(all),
                },
            )
        })
        .unwrap()
    }
}

/// A raw tunnel request for [`TASK_OK`] through `lb` from source address `src`: the
/// stream and the first line of the answer (after `SUCCESS`, the VPS's banner was read).
fn tunnel_from(src: Ipv4Addr, lb: SocketAddr) -> (TcpStream, String) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((src, 0)).into()).unwrap();
    socket.connect_timeout(&lb.into(), IO_TIMEOUT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(format!("REQUEST_TUNNEL {TASK_OK}\n").as_bytes())
        .unwrap();
    let line = String::from_utf8_lossy(&read_line(&mut stream).unwrap()).into_owned();
    if line == "SUCCESS\n" {
        let mut banner = [0u8; 8];
        stream.read_exact(&mut banner).unwrap();
        assert_eq!(&banner, b"SSH-2.0-");
    }
    (stream, line)
}

#[test]
fn haproxy_with_proxy_v2_in_front_of_replicas_over_the_host_api() {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    let api = PyHostApi::start(db.path()).unwrap();
    let a = Replica::start("a", api.addr());
    let b = Replica::start("b", api.addr());
    let c = Replica::start("c", api.addr());
    let replicas = [&a, &b, &c];
    let lb = Haproxy::start(&replicas);
    for r in replicas {
        lb.wait_server(r.name, "UP");
    }

    // From 127.0.0.2: each replica admits one tunnel (max_connections_per_ip = 1), so
    // of four held open at least one is refused, and no replica took two.
    let two: Ipv4Addr = "127.0.0.2".parse().unwrap();
    let three: Ipv4Addr = "127.0.0.3".parse().unwrap();
    let mut held = Vec::new();
    let mut refusals = 0;
    for _ in 0..4 {
        let (stream, line) = tunnel_from(two, lb.addr);
        if line == PER_IP_REFUSAL {
            refusals += 1;
        } else {
            assert_eq!(line, "SUCCESS\n");
            held.push(stream);
        }
    }
    assert!(refusals >= 1, "4 tunnels from 127.0.0.2 and 3 replicas");
    // 127.0.0.3 is another client to the replicas: all of its tunnels are served.
    for _ in 0..3 {
        let (stream, line) = tunnel_from(three, lb.addr);
        assert_eq!(line, "SUCCESS\n", "from 127.0.0.3");
        held.push(stream);
    }
    for r in replicas {
        let logs = r.proxy.logs();
        assert!(
            r.opened_from("127.0.0.2") <= 1,
            "replica {}:\n{logs}",
            r.name
        );
        assert!(
            r.opened_from("127.0.0.3") >= 1,
            "replica {}:\n{logs}",
            r.name
        );
        assert_eq!(r.opened_from("127.0.0.1"), 0, "replica {}:\n{logs}", r.name);
    }
    // Round robin: the three replicas took one tunnel from 127.0.0.2 each, and the
    // fourth was refused by the one that already had it, naming the real client.
    let per_ip: usize = replicas.iter().map(|r| r.opened_from("127.0.0.2")).sum();
    assert_eq!((per_ip, refusals), (3, 1));
    let refused_at: Vec<&str> = replicas
        .iter()
        .filter(|r| {
            r.proxy.logs().lines().any(|l| {
                l.contains("connection refused")
                    && l.contains("peer=127.0.0.2:")
                    && l.contains("Too many connections from your address")
            })
        })
        .map(|r| r.name)
        .collect();
    assert_eq!(refused_at.len(), 1, "{refused_at:?}");

    // Replica a is killed: HAProxy's check marks it down, new tunnels go to b and c.
    let before: Vec<usize> = replicas.iter().map(|r| r.opened().len()).collect();
    a.proxy.signal(Signal::SIGKILL).unwrap();
    a.proxy.wait_exit(WAIT).unwrap();
    let check = lb.wait_server("a", "DOWN");
    eprintln!("HAProxy: a DOWN after SIGKILL, check {check}");
    for i in 0..4u8 {
        let (_stream, line) = tunnel_from(Ipv4Addr::new(127, 0, 1, 10 + i), lb.addr);
        assert_eq!(line, "SUCCESS\n", "tunnel {i} with a down");
    }
    let served: Vec<usize> = [&b, &c]
        .iter()
        .zip(&before[1..])
        .map(|(r, n)| r.opened().len() - n)
        .collect();
    assert_eq!(served.iter().sum::<usize>(), 4, "{served:?}");
    assert!(served.iter().all(|n| *n >= 1), "{served:?}");

    // Replica b drains (SIGTERM with tunnels open): /readyz answers 503, HAProxy marks
    // it down on that HTTP answer, and new tunnels go to c.
    b.proxy.signal(Signal::SIGTERM).unwrap();
    b.proxy
        .wait_for_log("draining open connections", WAIT)
        .unwrap();
    let (status, body) = http_get(&b.admin, "/readyz").unwrap();
    eprintln!("replica b /readyz while draining: {status} {body:?}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let check = lb.wait_server("b", "DOWN");
    eprintln!("HAProxy: b DOWN while draining, check {check}");
    assert!(check.contains("L7STS"), "b's check: {check}");
    let before_c = c.opened().len();
    for i in 0..3u8 {
        let (_stream, line) = tunnel_from(Ipv4Addr::new(127, 0, 2, 10 + i), lb.addr);
        assert_eq!(line, "SUCCESS\n", "tunnel {i} with b draining");
    }
    assert_eq!(c.opened().len() - before_c, 3, "c:\n{}", c.proxy.logs());
    // b still runs for its open tunnels (shutdown_grace_secs = 60).
    assert!(b.proxy.wait_exit(Duration::ZERO).is_err(), "b exited early");

    // A real ssh session through HAProxy, with our client as ProxyCommand.
    let home = tempfile::tempdir().unwrap();
    let out = hakuriver_ssh_tests::process::run(
        ssh_via_client(&sshd, lb.addr, &TASK_OK.to_string(), &[], home.path())
            .arg("echo through-haproxy"),
        b"",
        WAIT,
    )
    .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("through-haproxy"),
        "ssh: {:?}\nstderr: {}\nc:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.proxy.logs()
    );
    assert!(c.opened().iter().any(|l| l.contains("peer=127.0.0.1:")));

    drop(held);
    let (status, metrics) = http_get(&c.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    eprintln!("replica c /metrics after the run:\n{metrics}");
    for r in replicas {
        eprintln!("replica {} tunnels opened:", r.name);
        for l in r.opened() {
            eprintln!("  {l}");
        }
    }
    eprintln!("HAProxy log:\n{}", lb.logs.text());
}
