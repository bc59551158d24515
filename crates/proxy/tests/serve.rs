//! In-process integration tests of `serve()`: real sockets on 127.0.0.1:0, SQLite files
//! with HakuRiver 0.3.0's exact schema, fake runners that script their side.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hakuriver_ssh_proxy::config::{Limits, Timeouts};
use hakuriver_ssh_proxy::directory::TaskDirectory;
use hakuriver_ssh_proxy::server::{serve, Listener, ProxyState};
use rusqlite::Connection;

mod common;
use common::{add_node, add_task, create_db, within};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Waits until the proxy counts no open tunnel.
async fn no_open_tunnels(proxy: &Proxy) {
    within("open count drops", async {
        while proxy.state.stats.open_tunnels() != 0 {
            proxy.state.stats.changed().await;
        }
    })
    .await;
}

fn timeouts() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(500),
        connect: Duration::from_secs(5),
        tls_handshake: Duration::from_secs(5),
        idle: None,
    }
}

fn limits() -> Limits {
    Limits {
        max_connections: 1000,
        max_connections_per_ip: 100,
        ..Limits::default()
    }
}

struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    shutdown: CancellationToken,
    handle: JoinHandle<usize>,
}

async fn start_proxy(db: &Path, timeouts: Timeouts, limits: Limits, grace: Duration) -> Proxy {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let state = Arc::new(ProxyState::new(TaskDirectory::new(db), timeouts, limits));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(serve(
        vec![Listener::plain(tcp)],
        Arc::clone(&state),
        shutdown.clone(),
        grace,
    ));
    Proxy {
        addr,
        state,
        shutdown,
        handle,
    }
}

/// Sends `request` and returns the reply line (with its `\n`) and the stream.
async fn exchange(proxy: SocketAddr, request: &[u8]) -> (Vec<u8>, TcpStream) {
    let mut stream = within("connect", TcpStream::connect(proxy))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write request");
    let line = read_line(&mut stream).await;
    (line, stream)
}

async fn read_line<R: AsyncRead + Unpin>(stream: &mut R) -> Vec<u8> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = within("reply line", stream.read(&mut byte))
            .await
            .expect("read reply");
        if n == 0 {
            return line;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return line;
        }
    }
}

async fn read_to_end<R: AsyncRead + Unpin>(stream: &mut R) -> Vec<u8> {
    let mut data = Vec::new();
    within("read to EOF", stream.read_to_end(&mut data))
        .await
        .expect("read");
    data
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hakuriver.db");
    (dir, path)
}

#[tokio::test]
async fn refusals_use_hakurivers_texts() {
    let (_dir, db) = temp_db();
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let runner_port = i64::from(runner.local_addr().expect("addr").port());
    {
        let conn = create_db(&db);
        add_node(&conn, "online1", "http://127.0.0.1:8001", "online");
        add_node(&conn, "offline1", "http://127.0.0.1:8001", "offline");
        add_node(&conn, "badurl", "127.0.0.1:8001", "online");
        add_task(
            &conn,
            1,
            "vps",
            "running",
            Some("online1"),
            Some(runner_port),
        );
        add_task(&conn, 2, "command", "running", Some("online1"), None);
        add_task(
            &conn,
            3,
            "vps",
            "completed",
            Some("online1"),
            Some(runner_port),
        );
        add_task(
            &conn,
            4,
            "vps",
            "running",
            Some("offline1"),
            Some(runner_port),
        );
        add_task(&conn, 5, "vps", "running", Some("online1"), None);
        add_task(&conn, 6, "vps", "running", None, Some(runner_port));
        add_task(
            &conn,
            7,
            "vps",
            "running",
            Some("badurl"),
            Some(runner_port),
        );
        // Port 1 on loopback: nothing listens there, the kernel refuses at once.
        add_task(&conn, 8, "vps", "running", Some("online1"), Some(1));
        add_task(
            &conn,
            9,
            "vps",
            "pending",
            Some("online1"),
            Some(runner_port),
        );
    }
    let proxy = start_proxy(&db, timeouts(), limits(), Duration::from_secs(5)).await;
    let cases: &[(&[u8], &str)] = &[
        (b"REQUEST_TUNNEL 424242\n", "ERROR Task 424242 not found.\n"),
        (b"REQUEST_TUNNEL 2\n", "ERROR Task 2 is not a VPS task.\n"),
        (
            b"REQUEST_TUNNEL 3\n",
            "ERROR VPS task 3 is not active (status: completed).\n",
        ),
        (
            b"REQUEST_TUNNEL 9\n",
            "ERROR VPS task 9 is not active (status: pending).\n",
        ),
        (
            b"REQUEST_TUNNEL 4\n",
            "ERROR Assigned node for VPS task 4 is not online.\n",
        ),
        (
            b"REQUEST_TUNNEL 5\n",
            "ERROR VPS task 5 has no SSH port assigned.\n",
        ),
        (
            b"REQUEST_TUNNEL 6\n",
            "ERROR VPS task 6 has no assigned node.\n",
        ),
        (
            b"REQUEST_TUNNEL 7\n",
            "ERROR Error parsing runner URL for node badurl.\n",
        ),
        (
            b"REQUEST_TUNNEL 8\n",
            "ERROR Connection refused by VPS task 8 on node online1.\n",
        ),
        (b"REQUEST_TUNNEL abc\n", "ERROR Invalid task ID format.\n"),
        (b"REQUEST_TUNNEL -1\n", "ERROR Invalid task ID format.\n"),
        (b"REQUEST_TUNNEL \n", "ERROR Invalid task ID format.\n"),
        (
            b"REQUEST_TUNNEL 99999999999999999999999\n",
            "ERROR Invalid task ID format.\n",
        ),
        (b"request_tunnel 1\n", "ERROR Invalid request format.\n"),
        (b"GET / HTTP/1.1\r\n", "ERROR Invalid request format.\n"),
        (b"REQUEST_TUNNEL 1", "ERROR Timeout waiting for request.\n"),
        (b"", "ERROR Timeout waiting for request.\n"),
    ];
    for (request, want) in cases {
        let (reply, mut stream) = exchange(proxy.addr, request).await;
        assert_eq!(
            String::from_utf8_lossy(&reply),
            *want,
            "request {:?}",
            String::from_utf8_lossy(request)
        );
        assert!(
            read_to_end(&mut stream).await.is_empty(),
            "nothing after the error line"
        );
    }
    // EOF before the newline, and an endless line, are unreadable requests.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(b"REQUEST_TUNNEL 1").await.expect("write");
    stream.shutdown().await.expect("half-close");
    assert_eq!(
        read_line(&mut stream).await,
        b"ERROR Error processing request.\n"
    );
    let (reply, _) = exchange(proxy.addr, &vec![b'7'; 4096]).await;
    assert_eq!(reply, b"ERROR Error processing request.\n");
    // Spaces around the id and CRLF are accepted as HakuRiver accepts them.
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL  1 \r\n").await;
    assert_eq!(reply, b"SUCCESS\n");
    assert_eq!(proxy.state.stats.refusals(), cases.len() as u64 + 2);
}

/// A runner that reads everything until EOF while sending `down`, then closes; it
/// returns what it received.
fn scripted_runner(listener: TcpListener, down: Vec<u8>) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut r, mut w) = stream.into_split();
        let writer = async move {
            w.write_all(&down).await.expect("runner write");
            w.shutdown().await.expect("runner shutdown");
        };
        let mut up = Vec::new();
        let (_, read) = tokio::join!(writer, r.read_to_end(&mut up));
        read.expect("runner read");
        up
    })
}

#[tokio::test]
async fn relays_both_directions_at_once_with_pipelined_bytes() {
    let (_dir, db) = temp_db();
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    {
        let conn = create_db(&db);
        add_node(&conn, "n1", "http://127.0.0.1:8001", "online");
        add_task(
            &conn,
            42,
            "vps",
            "paused",
            Some("n1"),
            Some(i64::from(port)),
        );
    }
    let proxy = start_proxy(&db, timeouts(), limits(), Duration::from_secs(5)).await;
    let up = pattern(8 << 20, 3);
    let down = pattern(6 << 20, 101);
    let runner_task = scripted_runner(runner, down.clone());

    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    // The request line and the first bytes of the SSH stream in one segment.
    let mut first = b"REQUEST_TUNNEL 42\nSSH-2.0-pipelined\r\n".to_vec();
    first.extend_from_slice(&up[..1000]);
    let mut expected_up = b"SSH-2.0-pipelined\r\n".to_vec();
    expected_up.extend_from_slice(&up);
    let rest = up[1000..].to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&first).await.expect("write");
        w.write_all(&rest).await.expect("write");
        w.shutdown().await.expect("shutdown");
    });
    assert_eq!(read_line(&mut r).await, b"SUCCESS\n");
    let got_down = read_to_end(&mut r).await;
    within("writer", writer).await.expect("join");
    let got_up = within("runner", runner_task).await.expect("join");
    assert_eq!(
        Sha256::digest(&got_up),
        Sha256::digest(&expected_up),
        "upstream bytes"
    );
    assert_eq!(
        Sha256::digest(&got_down),
        Sha256::digest(&down),
        "downstream bytes"
    );
}

async fn one_tunnel(port: u16) -> (tempfile::TempDir, Proxy, TcpStream) {
    let (dir, db) = db_with_task_7(port);
    let proxy = start_proxy(&db, timeouts(), limits(), Duration::from_secs(5)).await;
    let (reply, stream) = exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await;
    assert_eq!(reply, b"SUCCESS\n");
    (dir, proxy, stream)
}

#[tokio::test]
async fn half_close_passes_from_client_to_runner() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let runner_task = tokio::spawn(async move {
        let (mut s, _) = runner.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .await
            .expect("read until client EOF");
        // Only after the client's EOF arrived does the runner answer.
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .expect("write");
        s.shutdown().await.expect("shutdown");
    });
    let (_dir, _proxy, mut client) = one_tunnel(port).await;
    client.write_all(b"hello").await.expect("write");
    client.shutdown().await.expect("half-close");
    assert_eq!(read_to_end(&mut client).await, b"got 5 bytes");
    within("runner", runner_task).await.expect("join");
}

#[tokio::test]
async fn half_close_passes_from_runner_to_client() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let runner_task = tokio::spawn(async move {
        let (mut s, _) = runner.accept().await.expect("accept");
        s.write_all(b"banner").await.expect("write");
        s.shutdown().await.expect("runner half-close");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        got
    });
    let (_dir, _proxy, mut client) = one_tunnel(port).await;
    // The runner's EOF reaches us while our direction is still open...
    assert_eq!(read_to_end(&mut client).await, b"banner");
    // ...and what we send afterwards still reaches the runner.
    client.write_all(b"after your EOF").await.expect("write");
    client.shutdown().await.expect("shutdown");
    assert_eq!(
        within("runner", runner_task).await.expect("join"),
        b"after your EOF"
    );
}

#[tokio::test]
async fn client_abort_closes_the_runner_side() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let (_dir, proxy, client) = one_tunnel(port).await;
    let (mut runner_side, _) = within("accept", runner.accept()).await.expect("accept");
    // Reset, not FIN: SO_LINGER 0 then close.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(client);
    let mut buf = [0u8; 16];
    // Either EOF or a reset: both mean the proxy closed its runner socket.
    let closed = within("runner side closes", runner_side.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "runner side still open: {closed:?}"
    );
    no_open_tunnels(&proxy).await;
}

#[tokio::test]
async fn database_missing_then_created_then_replaced_then_garbage() {
    let (_dir, db) = temp_db();
    let proxy = start_proxy(&db, timeouts(), limits(), Duration::from_secs(5)).await;
    let internal = "ERROR Internal server error during task lookup.\n";
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        internal,
        "missing database"
    );

    {
        let conn = create_db(&db);
        add_node(&conn, "n1", "http://127.0.0.1:8001", "online");
        add_task(&conn, 1, "vps", "completed", Some("n1"), Some(1));
    }
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(
        reply, b"ERROR VPS task 1 is not active (status: completed).\n",
        "database appeared"
    );

    // HakuRiver restarted: the file is deleted and a new one written in its place.
    std::fs::remove_file(&db).expect("remove");
    {
        let conn = create_db(&db);
        add_node(&conn, "n1", "http://127.0.0.1:8001", "online");
        add_task(&conn, 1, "command", "running", Some("n1"), Some(1));
    }
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(
        reply, b"ERROR Task 1 is not a VPS task.\n",
        "replaced database is read"
    );

    std::fs::remove_file(&db).expect("remove");
    std::fs::write(&db, vec![0x42; 8192]).expect("garbage");
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(String::from_utf8_lossy(&reply), internal, "not a database");

    std::fs::remove_file(&db).expect("remove");
    Connection::open(&db)
        .expect("other db")
        .execute_batch("CREATE TABLE task (id INTEGER PRIMARY KEY, name TEXT);")
        .expect("other schema");
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        internal,
        "different schema"
    );
}

#[tokio::test]
async fn a_locked_database_fails_one_request_then_recovers() {
    let (_dir, db) = temp_db();
    let writer = create_db(&db);
    add_node(&writer, "n1", "http://127.0.0.1:8001", "online");
    add_task(&writer, 1, "vps", "completed", Some("n1"), Some(1));
    let proxy = start_proxy(&db, timeouts(), limits(), Duration::from_secs(5)).await;
    // An exclusive transaction blocks readers in rollback-journal mode (HakuRiver's).
    writer
        .execute_batch("BEGIN EXCLUSIVE; UPDATE task SET status = 'running';")
        .expect("lock");
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(reply, b"ERROR Internal server error during task lookup.\n");
    writer.execute_batch("ROLLBACK;").expect("unlock");
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert_eq!(
        reply,
        b"ERROR VPS task 1 is not active (status: completed).\n"
    );
}

#[tokio::test]
async fn per_ip_limit_refuses_in_one_line() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let (_dir, db) = db_with_task_7(port);
    let limits = Limits {
        max_connections: 10,
        max_connections_per_ip: 1,
        ..Limits::default()
    };
    let proxy = start_proxy(&db, timeouts(), limits, Duration::from_secs(5)).await;
    let (reply, first) = exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await;
    assert_eq!(reply, b"SUCCESS\n");
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await;
    assert_eq!(
        reply,
        b"ERROR Too many connections from your address; try again later.\n"
    );
    drop(first);
    let (_runner_side, _) = within("accept", runner.accept()).await.expect("accept");
}

#[tokio::test]
async fn shutdown_drains_open_tunnels_and_refuses_new_ones() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let (_dir, proxy, mut client) = one_tunnel(port).await;
    let (mut runner_side, _) = within("accept", runner.accept()).await.expect("accept");
    proxy.shutdown.cancel();
    // The open tunnel keeps flowing during the drain.
    client.write_all(b"still here").await.expect("write");
    let mut buf = [0u8; 10];
    within("relay during drain", runner_side.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"still here");
    // Once both sides close, serve() returns without cutting anything.
    client.shutdown().await.expect("shutdown");
    runner_side.shutdown().await.expect("shutdown");
    assert_eq!(read_to_end(&mut client).await, b"");
    let cut = within("serve returns", proxy.handle).await.expect("join");
    assert_eq!(cut, 0);
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn grace_period_over_cuts_remaining_tunnels() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let (_dir, db) = db_with_task_7(port);
    let proxy = start_proxy(&db, timeouts(), limits(), Duration::from_millis(200)).await;
    let (reply, mut client) = exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await;
    assert_eq!(reply, b"SUCCESS\n");
    let (_runner_side, _) = within("accept", runner.accept()).await.expect("accept");
    proxy.shutdown.cancel();
    let cut = within("serve returns", proxy.handle).await.expect("join");
    assert_eq!(cut, 1);
    assert_eq!(
        read_to_end(&mut client).await,
        b"",
        "client sees the cut tunnel close"
    );
}

fn db_with_task_7(port: u16) -> (tempfile::TempDir, PathBuf) {
    let (dir, db) = temp_db();
    let conn = create_db(&db);
    add_node(&conn, "n1", "http://127.0.0.1:8001", "online");
    add_task(
        &conn,
        7,
        "vps",
        "running",
        Some("n1"),
        Some(i64::from(port)),
    );
    (dir, db)
}

#[tokio::test]
async fn clients_outside_allowed_networks_are_refused() {
    let (_dir, db) = db_with_task_7(1);
    let only_lan = Limits {
        allowed_clients: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..limits()
    };
    let proxy = start_proxy(&db, timeouts(), only_lan, Duration::from_secs(5)).await;
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await;
    assert_eq!(
        reply,
        b"ERROR Connections from your address are not allowed.\n"
    );
    let loopback = Limits {
        allowed_clients: vec!["127.0.0.0/8".parse().expect("cidr")],
        ..limits()
    };
    let proxy = start_proxy(&db, timeouts(), loopback, Duration::from_secs(5)).await;
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 8\n").await;
    assert_eq!(reply, b"ERROR Task 8 not found.\n");
}

#[tokio::test]
async fn lookup_rate_per_address_slows_enumeration() {
    let (_dir, db) = db_with_task_7(1);
    let three = Limits {
        lookups_per_minute_per_ip: 3,
        ..limits()
    };
    let proxy = start_proxy(&db, timeouts(), three, Duration::from_secs(5)).await;
    for id in 100..103 {
        let (reply, _) = exchange(proxy.addr, format!("REQUEST_TUNNEL {id}\n").as_bytes()).await;
        assert_eq!(reply, format!("ERROR Task {id} not found.\n").as_bytes());
    }
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 103\n").await;
    assert_eq!(
        reply,
        b"ERROR Too many requests from your address; try again later.\n"
    );
    // Malformed requests never reach the database and cost nothing.
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL x\n").await;
    assert_eq!(reply, b"ERROR Invalid task ID format.\n");
}

#[tokio::test]
async fn idle_timeout_closes_silent_tunnels_only() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let (_dir, db) = db_with_task_7(port);
    let idle = Timeouts {
        idle: Some(Duration::from_secs(1)),
        ..timeouts()
    };
    let proxy = start_proxy(&db, idle, limits(), Duration::from_secs(5)).await;
    let (reply, mut client) = exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await;
    assert_eq!(reply, b"SUCCESS\n");
    let (mut runner_side, _) = within("accept", runner.accept()).await.expect("accept");
    // Traffic keeps the tunnel open past the idle period: each echo is well within it.
    let mut buf = [0u8; 4];
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        client.write_all(b"ping").await.expect("write");
        within("runner reads", runner_side.read_exact(&mut buf))
            .await
            .expect("read");
        runner_side.write_all(b"pong").await.expect("write");
        within("client reads", client.read_exact(&mut buf))
            .await
            .expect("read");
        assert_eq!(&buf, b"pong");
    }
    // Silence: the proxy closes both legs.
    assert_eq!(read_to_end(&mut client).await, b"");
    assert_eq!(
        within("runner side closed", runner_side.read(&mut buf))
            .await
            .expect("read"),
        0
    );
    assert_eq!(proxy.state.stats.open_tunnels(), 0);
}

#[tokio::test]
async fn black_holed_runner_times_out_and_others_are_served() {
    // A runner whose accept queue is full: the kernel drops further SYNs, so a connect
    // hangs exactly like one to a black-holed address (only loopback is used here).
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind");
    socket.listen(0).expect("listen");
    let black_hole: std::net::TcpListener = socket.into();
    let port = black_hole.local_addr().expect("addr").port();
    let _fills_the_queue =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("first connect");
    let (_dir, db) = db_with_task_7(port);
    let quick = Timeouts {
        connect: Duration::from_millis(500),
        ..timeouts()
    };
    let proxy = start_proxy(&db, quick, limits(), Duration::from_secs(5)).await;
    let blocked = tokio::spawn(async move { exchange(proxy.addr, b"REQUEST_TUNNEL 7\n").await.0 });
    // While that connect hangs, other requests are answered.
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 8\n").await;
    assert_eq!(reply, b"ERROR Task 8 not found.\n");
    let reply = within("timeout reply", blocked).await.expect("join");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "ERROR Timeout connecting to Runner for task 7.\n"
    );
}

#[tokio::test]
async fn runner_reset_mid_stream_closes_the_client() {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    let (_dir, proxy, mut client) = one_tunnel(port).await;
    let (mut runner_side, _) = within("accept", runner.accept()).await.expect("accept");
    client.write_all(b"some bytes").await.expect("write");
    let mut buf = [0u8; 10];
    within("runner reads", runner_side.read_exact(&mut buf))
        .await
        .expect("read");
    runner_side
        .write_all(b"partial answer")
        .await
        .expect("write");
    // Reset, not FIN.
    socket2::SockRef::from(&runner_side)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(runner_side);
    // The client gets at most what was relayed before the reset, then its connection
    // ends, by EOF or by reset (`within` fails the test if it stays open).
    let mut got = Vec::new();
    let _ = within("client side closes", client.read_to_end(&mut got)).await;
    assert!(b"partial answer".starts_with(&got), "{got:?}");
    no_open_tunnels(&proxy).await;
}

/// Refusals at accept (allowlist, limits) and failed TLS handshakes wake the `STATUS=`
/// reporter like every other counter change.
#[tokio::test]
async fn refusals_at_accept_and_in_tls_notify_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("hakuriver.db");
    create_db(&db);

    // Allowlist: 127.0.0.1 is outside 10.0.0.0/8.
    let mut only_ten = limits();
    only_ten.allowed_clients = vec!["10.0.0.0/8".parse().expect("cidr")];
    let proxy = start_proxy(&db, timeouts(), only_ten, Duration::from_secs(1)).await;
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert!(reply.starts_with(b"ERROR "), "{reply:?}");
    within("allowlist refusal notifies", proxy.state.stats.changed()).await;
    assert_eq!(proxy.state.stats.refusals(), 1);
    proxy.shutdown.cancel();
    within("proxy stops", proxy.handle).await.expect("serve");

    // Connection limit: the second connection while the first is open.
    let mut one = limits();
    one.max_connections = 1;
    let proxy = start_proxy(&db, timeouts(), one, Duration::from_secs(1)).await;
    let _first = within("connect", TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    let (reply, _) = exchange(proxy.addr, b"REQUEST_TUNNEL 1\n").await;
    assert!(reply.starts_with(b"ERROR "), "{reply:?}");
    within("limit refusal notifies", proxy.state.stats.changed()).await;
    assert_eq!(proxy.state.stats.refusals(), 1);
    proxy.shutdown.cancel();
    within("proxy stops", proxy.handle).await.expect("serve");

    // A TLS listener fed garbage instead of a ClientHello.
    let store =
        hakuriver_tunnel::tls::ServerCertStore::self_signed(dir.path(), &["localhost".to_owned()])
            .expect("self-signed");
    let config = hakuriver_tunnel::tls::server_config(Arc::new(store)).expect("config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let state = Arc::new(ProxyState::new(
        TaskDirectory::new(&db),
        timeouts(),
        limits(),
    ));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(serve(
        vec![Listener::tls(tcp, tokio_rustls::TlsAcceptor::from(config))],
        Arc::clone(&state),
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream
        .write_all(b"REQUEST_TUNNEL 1\n")
        .await
        .expect("write");
    within("TLS failure notifies", state.stats.changed()).await;
    assert_eq!(state.stats.refusals(), 1);
    shutdown.cancel();
    within("proxy stops", handle).await.expect("serve");
}
