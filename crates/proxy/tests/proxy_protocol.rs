//! PROXY protocol v1/v2 inbound: from a trusted peer the carried address is the client
//! (limits, allowlist, logs); from anyone else the header is a bad request; malformed,
//! truncated and slow headers get the request timeout; TLS behind PROXY v2. In-process
//! `serve()` on 127.0.0.1:0, clients bound to 127.0.0.2 (trusted) or 127.0.0.1, plus the
//! real binary for the log lines.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hakuriver_ssh_proxy::config::{Limits, Timeouts};
use hakuriver_ssh_proxy::directory::TaskDirectory;
use hakuriver_ssh_proxy::server::{serve, Listener, ProxyState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

mod common;
use common::{add_node, add_task, create_db, within};

const TRUSTED: &str = "127.0.0.2";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fn v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 {port} 8002\r\n").into_bytes()
}

fn v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x11, 0, 12]);
    h.extend(client);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(8002u16.to_be_bytes());
    h
}

fn timeouts() -> Timeouts {
    Timeouts {
        request: Duration::from_millis(500),
        connect: Duration::from_secs(5),
        tls_handshake: Duration::from_secs(5),
        idle: None,
    }
}

/// A database with VPS task 1 on an echo runner.
async fn echo_db(dir: &Path) -> std::path::PathBuf {
    let runner = TcpListener::bind("127.0.0.1:0").await.expect("runner");
    let port = runner.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = runner.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let db = dir.join("hakuriver.db");
    let conn = create_db(&db);
    add_node(&conn, "n1", "http://127.0.0.1:8001", "online");
    add_task(
        &conn,
        1,
        "vps",
        "running",
        Some("n1"),
        Some(i64::from(port)),
    );
    db
}

struct Proxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(db: &Path, limits: Limits, tls: Option<tokio_rustls::TlsAcceptor>) -> Proxy {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let state = Arc::new(
        ProxyState::new(TaskDirectory::new(db), timeouts(), limits).with_trusted_proxies(vec![
            TRUSTED.parse().expect("cidr"),
            "10.0.0.0/8".parse().expect("cidr"),
        ]),
    );
    let listener = match tls {
        Some(acceptor) => Listener::tls(tcp, acceptor),
        None => Listener::plain(tcp),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(serve(
        vec![listener],
        state,
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    Proxy { addr, shutdown }
}

fn limits() -> Limits {
    Limits {
        max_connections: 100,
        max_connections_per_ip: 1,
        ..Limits::default()
    }
}

async fn connect_from(source: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind source");
    within("connect", socket.connect(proxy))
        .await
        .expect("connect")
}

async fn read_line<R: AsyncRead + Unpin>(stream: &mut R) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = within("reply", stream.read(&mut byte)).await.unwrap_or(0);
        if n == 0 || byte[0] == b'\n' {
            if n == 1 {
                line.push(b'\n');
            }
            return String::from_utf8_lossy(&line).into_owned();
        }
        line.push(byte[0]);
    }
}

/// Sends `prefix` then a request for task 1 and returns the reply line and the stream.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, prefix: &[u8]) -> (String, S) {
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(b"REQUEST_TUNNEL 1\n");
    stream.write_all(&bytes).await.expect("write");
    let line = read_line(&mut stream).await;
    (line, stream)
}

async fn echo_check<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    stream.write_all(b"through").await.expect("write");
    let mut back = [0u8; 7];
    within("echo", stream.read_exact(&mut back))
        .await
        .expect("echo");
    assert_eq!(&back, b"through");
}

#[tokio::test]
async fn limits_and_allowlist_see_the_carried_address_v1_and_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = echo_db(dir.path()).await;
    let proxy = start(&db, limits(), None).await;

    // One tunnel per client address: the carried address counts, not the proxy's.
    let (reply, mut first) = request(
        connect_from(TRUSTED, proxy.addr).await,
        &v1("192.0.2.7", 50000),
    )
    .await;
    assert_eq!(reply, "SUCCESS\n");
    echo_check(&mut first).await;
    let (reply, _) = request(
        connect_from(TRUSTED, proxy.addr).await,
        &v2([192, 0, 2, 7], 50001),
    )
    .await;
    assert_eq!(
        reply,
        "ERROR Too many connections from your address; try again later.\n"
    );
    let (reply, mut second) = request(
        connect_from(TRUSTED, proxy.addr).await,
        &v2([192, 0, 2, 8], 50002),
    )
    .await;
    assert_eq!(reply, "SUCCESS\n");
    echo_check(&mut second).await;
    drop(first);
    drop(second);

    // The allowlist too: 127.0.0.2 itself is not allowed, the client it names is.
    let mut allow = limits();
    allow.max_connections_per_ip = 10;
    allow.allowed_clients = vec!["192.0.2.0/24".parse().expect("cidr")];
    let proxy = start(&db, allow, None).await;
    let (reply, _) = request(
        connect_from(TRUSTED, proxy.addr).await,
        &v2([192, 0, 2, 9], 1),
    )
    .await;
    assert_eq!(reply, "SUCCESS\n");
    let (reply, _) = request(
        connect_from(TRUSTED, proxy.addr).await,
        &v1("198.51.100.1", 1),
    )
    .await;
    assert_eq!(
        reply,
        "ERROR Connections from your address are not allowed.\n"
    );
    // A LOCAL header (the balancer's own health check) keeps the balancer's address.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0, 0]);
    let (reply, _) = request(connect_from(TRUSTED, proxy.addr).await, &local).await;
    assert_eq!(
        reply,
        "ERROR Connections from your address are not allowed.\n"
    );
}

#[tokio::test]
async fn untrusted_peers_sending_a_header_get_a_bad_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = echo_db(dir.path()).await;
    let proxy = start(&db, limits(), None).await;
    for header in [v1("192.0.2.7", 50000), v2([192, 0, 2, 7], 50000)] {
        let (reply, _) = request(connect_from("127.0.0.1", proxy.addr).await, &header).await;
        assert_eq!(reply, "ERROR Invalid request format.\n", "{header:?}");
    }
    // And without a header it works as always.
    let (reply, _) = request(connect_from("127.0.0.1", proxy.addr).await, b"").await;
    assert_eq!(reply, "SUCCESS\n");
}

#[tokio::test]
async fn malformed_truncated_and_slow_headers_get_the_request_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = echo_db(dir.path()).await;
    let proxy = start(&db, limits(), None).await;
    let timeout = "ERROR Timeout waiting for request.\n";

    // No header at all from a trusted peer: the request line is not a header.
    let (reply, _) = request(connect_from(TRUSTED, proxy.addr).await, b"").await;
    assert_eq!(reply, timeout);
    // Malformed v1 and v2.
    let (reply, _) = request(
        connect_from(TRUSTED, proxy.addr).await,
        b"PROXY TCP4 not-an-ip 127.0.0.1 1 2\r\n",
    )
    .await;
    assert_eq!(reply, timeout);
    let mut bad = v2([192, 0, 2, 7], 1);
    bad[12] = 0x31; // version 3
    let (reply, _) = request(connect_from(TRUSTED, proxy.addr).await, &bad).await;
    assert_eq!(reply, timeout);
    let mut long = b"PROXY TCP4 ".to_vec();
    long.extend([b'1'; 200]);
    let (reply, _) = request(connect_from(TRUSTED, proxy.addr).await, &long).await;
    assert_eq!(reply, timeout);

    // Truncated: the peer half-closes inside the header.
    let mut stream = connect_from(TRUSTED, proxy.addr).await;
    stream
        .write_all(&v2([192, 0, 2, 7], 1)[..20])
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    assert_eq!(read_line(&mut stream).await, timeout);

    // Slow: part of a header, then nothing until the request timeout.
    let mut stream = connect_from(TRUSTED, proxy.addr).await;
    stream
        .write_all(b"PROXY TCP4 192.0.2.7")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    assert_eq!(read_line(&mut stream).await, timeout);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // The shortest header: nothing of the request behind it may be taken with it.
    let (reply, _) = request(
        connect_from(TRUSTED, proxy.addr).await,
        b"PROXY UNKNOWN\r\n",
    )
    .await;
    assert_eq!(reply, "SUCCESS\n");

    // The daemon keeps serving.
    let (reply, _) = request(connect_from(TRUSTED, proxy.addr).await, &v1("192.0.2.7", 1)).await;
    assert_eq!(reply, "SUCCESS\n");
}

#[tokio::test]
async fn tls_behind_proxy_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = echo_db(dir.path()).await;
    let store =
        hakuriver_tunnel::tls::ServerCertStore::self_signed(dir.path(), &["localhost".to_owned()])
            .expect("self-signed");
    let pin = store.fingerprint();
    let config = hakuriver_tunnel::tls::server_config(Arc::new(store)).expect("config");
    let proxy = start(&db, limits(), Some(tokio_rustls::TlsAcceptor::from(config))).await;
    let client = hakuriver_tunnel::tls::client_config(&hakuriver_tunnel::tls::ClientTrust {
        pins: vec![pin],
        ..Default::default()
    })
    .expect("client config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");

    let mut tcp = connect_from(TRUSTED, proxy.addr).await;
    tcp.write_all(&v2([192, 0, 2, 7], 50000))
        .await
        .expect("header");
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::clone(&client)).connect(name.clone(), tcp),
    )
    .await
    .expect("TLS after the PROXY header");
    let (reply, mut tls) = request(tls, b"").await;
    assert_eq!(reply, "SUCCESS\n");
    echo_check(&mut tls).await;
    // The limit counts 192.0.2.7: a second one from it is refused (TLS: closed).
    let mut tcp = connect_from(TRUSTED, proxy.addr).await;
    tcp.write_all(&v2([192, 0, 2, 7], 50001))
        .await
        .expect("header");
    let second = within(
        "TLS refused",
        tokio_rustls::TlsConnector::from(client).connect(name, tcp),
    )
    .await;
    assert!(second.is_err(), "a second tunnel for 192.0.2.7 got through");
}

/// The real binary's log lines name the carried client.
#[test]
fn logs_name_the_carried_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = common::database(dir.path(), common::echo_runner());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[ssh_proxy]\ntrusted_proxies = [\"127.0.0.2\"]\n").expect("config");
    let mut child = Command::new(common::PROXY)
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "text"])
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = common::Lines::of(&mut child);
    let _proxy = common::Killed(child);
    let addr: SocketAddr = common::addr_field(&lines.wait_for("transport=plain"))
        .parse()
        .expect("addr");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().expect("a").into())
        .expect("bind");
    socket.connect(&addr.into()).expect("connect");
    let stream: StdStream = socket.into();
    stream
        .set_read_timeout(Some(common::WAIT))
        .expect("timeout");
    let mut header = v2([203, 0, 113, 5], 40000);
    header.extend_from_slice(b"REQUEST_TUNNEL 5\n");
    (&stream).write_all(&header).expect("write");
    let opened = lines.wait_for("tunnel opened");
    assert!(opened.contains("peer=203.0.113.5:40000"), "{opened}");
    drop(stream);
    let closed = lines.wait_for("tunnel closed");
    assert!(closed.contains("peer=203.0.113.5:40000"), "{closed}");

    // A broken header: one line naming the balancer.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().expect("a").into())
        .expect("bind");
    socket.connect(&addr.into()).expect("connect");
    let stream: StdStream = socket.into();
    (&stream)
        .write_all(b"PROXY TCP4 nonsense\r\n")
        .expect("write");
    let line = lines.wait_for("PROXY header refused");
    assert!(line.contains("proxy=127.0.0.2:"), "{line}");
}
