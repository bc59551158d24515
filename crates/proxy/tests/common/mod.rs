//! Shared fixtures: SQLite files with HakuRiver 0.3.0's exact schema.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use hakuriver_tunnel::tls::{client_config, ClientTrust, Fingerprint};

use rusqlite::Connection;

/// Upper bound on every wait in these tests.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `sqlite3 hakuriver.db .schema` of a database made by HakuRiver 0.3.0.
pub const HAKURIVER_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS "node" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "last_heartbeat" DATETIME NOT NULL, "status" VARCHAR(255) NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "memory_total_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT);
CREATE TABLE IF NOT EXISTS "task" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "status" VARCHAR(255) NOT NULL, "assigned_node_id" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME, "assignment_suspicion_count" INTEGER NOT NULL, "required_memory_bytes" INTEGER, "systemd_unit_name" VARCHAR(255), "target_numa_node_id" INTEGER, "batch_id" INTEGER, "ssh_port" INTEGER, FOREIGN KEY ("assigned_node_id") REFERENCES "node" ("hostname"));
CREATE INDEX "task_assigned_node_id" ON "task" ("assigned_node_id");
CREATE INDEX "task_batch_id" ON "task" ("batch_id");
"#;

/// Awaits `f`, failing the test after [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

pub fn create_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("create db");
    conn.execute_batch(HAKURIVER_SCHEMA).expect("schema");
    conn
}

pub fn add_node(conn: &Connection, hostname: &str, url: &str, status: &str) {
    conn.execute(
        "INSERT INTO node (hostname, url, total_cores, last_heartbeat, status) VALUES (?1, ?2, 8, '2026-11-29 10:00:00.000000', ?3)",
        (hostname, url, status),
    )
    .expect("node");
}

pub fn add_task(
    conn: &Connection,
    id: i64,
    task_type: &str,
    status: &str,
    node: Option<&str>,
    ssh_port: Option<i64>,
) {
    conn.execute(
        "INSERT INTO task (task_id, task_type, command, arguments, env_vars, required_cores, required_gpus, status, assigned_node_id, stdout_path, stderr_path, submitted_at, assignment_suspicion_count, ssh_port) \
         VALUES (?1, ?2, '', '[]', '{}', 1, '[]', ?3, ?4, '', '', '2026-11-29 10:00:00.000000', 0, ?5)",
        (id, task_type, status, node, ssh_port),
    )
    .expect("task");
}

/// Path of the binary under test.
pub const PROXY: &str = env!("CARGO_BIN_EXE_hakuriver-ssh-proxy");

/// A runner that echoes every connection back until EOF.
pub fn echo_runner() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind runner");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().expect("clone");
                let _ = std::io::copy(&mut reader, &mut stream);
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A database with VPS task 5 routed to `127.0.0.1:<port>`.
pub fn database(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("hakuriver.db");
    let conn = create_db(&path);
    add_node(&conn, "runner1", "http://127.0.0.1:8001", "online");
    add_task(
        &conn,
        5,
        "vps",
        "running",
        Some("runner1"),
        Some(i64::from(port)),
    );
    path
}

/// Lines of a child's stderr, delivered through a channel so every wait has a timeout.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Lines read so far.
    pub seen: Vec<String>,
}

impl Lines {
    /// Starts collecting `child`'s stderr.
    pub fn of(child: &mut Child) -> Lines {
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The first line (from now on) containing `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Takes in whatever lines have arrived by now, without waiting.
    pub fn drain_now(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
    }

    /// Everything until the child closes stderr.
    pub fn rest(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

pub fn addr_field(line: &str) -> String {
    let start = line.find("addr=").expect("addr= field") + 5;
    line[start..]
        .split_whitespace()
        .next()
        .expect("value")
        .to_owned()
}

/// A child killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// Sends a request on `stream`, expects `SUCCESS`, then checks an echo round trip.
pub fn tunnel_round_trip<S: Read + Write>(mut stream: S, task: u64) {
    stream
        .write_all(format!("REQUEST_TUNNEL {task}\n").as_bytes())
        .expect("request");
    stream.flush().expect("flush");
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply, b"SUCCESS\n");
    stream.write_all(b"ping through the tunnel").expect("write");
    stream.flush().expect("flush");
    let mut echoed = [0u8; 23];
    stream.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping through the tunnel");
}

pub fn plain_round_trip(addr: &str, task: u64) {
    let stream = TcpStream::connect(addr).expect("connect plain");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    tunnel_round_trip(stream, task);
}

pub fn tls_round_trip(addr: &str, pin: Fingerprint, task: u64) {
    let config = client_config(&ClientTrust {
        pins: vec![pin],
        ..Default::default()
    })
    .expect("client config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::clone(&config), name).expect("tls client");
    let tcp = TcpStream::connect(addr).expect("connect tls");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tunnel_round_trip(rustls::StreamOwned::new(conn, tcp), task);
}

pub fn fingerprint(state_dir: &Path) -> Fingerprint {
    let out = Command::new(PROXY)
        .args(["fingerprint", "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("run fingerprint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    text.trim()
        .parse()
        .expect("fingerprint in the form clients accept")
}
