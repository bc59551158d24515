//! The task directory over the Host's HTTP API (`[database] kind = "http"`), so that a
//! proxy replica needs no database file.
//!
//! Two routes are read: the active VPS tasks (`GET {prefix}/vps/status`: `task_id`,
//! `status`, `assigned_node`, `ssh_port`) and the nodes (`GET {prefix}/nodes`:
//! `hostname`, `url`, `status`); `prefix` is empty for HakuRiver 0.3.0 and KohakuRiver
//! 0.4, `/api` for KohakuRiver 1.0 (with `Authorization: Bearer`). Plain HTTP only.
//!
//! Both lists are fetched together and kept for `cache_secs`. One refresh is in flight
//! at a time: a lookup that finds it running uses the copy it has (if any) instead of
//! waiting, and every fetch has [`FETCH_TIMEOUT`]. While the Host is unreachable the
//! last copy is served for up to `stale_secs` more (logged once per outage); after that
//! lookups are refused as a database error.
//!
//! Refusal texts that differ from the SQLite path, because the API cannot tell the
//! cases apart: `/vps/status` lists only VPS tasks that are pending, assigning,
//! running or paused, so a completed, failed or killed VPS and any non-VPS task read
//! as `Task N not found.` (the SQLite path says `VPS task N is not active (status:
//! ...)` or `Task N is not a VPS task.`). `/status/{id}` is not asked: in 0.3.0 it has
//! no task type, and a request per unknown id would let clients make the Host work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hakuriver_tunnel::TaskId;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::{evaluate, DbError, Denied, Route, Row, TaskSummary};
use crate::config::HttpDirectorySettings;

/// Time one refresh (both requests) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body read.
const MAX_BODY: usize = 16 << 20;

/// One VPS task of `/vps/status`.
#[derive(Debug, Clone)]
struct VpsTask {
    status: Option<String>,
    node: Option<String>,
    ssh_port: Option<i64>,
}

/// One node of `/nodes`.
#[derive(Debug, Clone)]
struct Node {
    url: Option<String>,
    status: Option<String>,
}

/// Both lists as fetched at one moment.
#[derive(Debug)]
struct Snapshot {
    fetched: Instant,
    tasks: HashMap<i64, VpsTask>,
    nodes: HashMap<String, Node>,
}

#[derive(Debug, Default)]
struct State {
    snapshot: Option<Arc<Snapshot>>,
    /// When the current outage began, and its cause (one log line per outage).
    outage: Option<(Instant, String)>,
}

/// The HTTP task directory. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct HttpDirectory {
    settings: HttpDirectorySettings,
    state: Mutex<State>,
    refresh: tokio::sync::Mutex<()>,
}

impl HttpDirectory {
    /// A directory over the API `settings` name. Nothing is fetched yet.
    pub fn new(settings: HttpDirectorySettings) -> Self {
        HttpDirectory {
            settings,
            state: Mutex::new(State::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// `http://authority/prefix`, for logs (never the token).
    pub fn base(&self) -> String {
        format!("http://{}{}", self.settings.authority, self.settings.prefix)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The copy to answer from: fresh, refreshed now, or stale within `stale_secs`.
    async fn snapshot(&self) -> Result<Arc<Snapshot>, DbError> {
        let cached = self.state().snapshot.clone();
        if let Some(s) = &cached {
            if s.fetched.elapsed() < self.settings.cache {
                return Ok(Arc::clone(s));
            }
        }
        let usable = cached
            .as_ref()
            .filter(|s| s.fetched.elapsed() < self.settings.cache + self.settings.stale)
            .cloned();
        // A refresh already running: use the copy we have rather than wait on it.
        let guard = match (self.refresh.try_lock(), &usable) {
            (Ok(guard), _) => guard,
            (Err(_), Some(s)) => return Ok(Arc::clone(s)),
            (Err(_), None) => {
                match tokio::time::timeout(FETCH_TIMEOUT, self.refresh.lock()).await {
                    Ok(guard) => guard,
                    Err(_) => return Err(self.unavailable("another refresh is still waiting")),
                }
            }
        };
        // Someone else may have refreshed while we waited for the lock.
        if let Some(s) = &self.state().snapshot {
            if s.fetched.elapsed() < self.settings.cache {
                return Ok(Arc::clone(s));
            }
        }
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        drop(guard);
        match fetched {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                let mut state = self.state();
                if let Some((since, _)) = state.outage.take() {
                    tracing::info!(api = %self.base(), after = ?since.elapsed(), "Host API reachable again");
                }
                state.snapshot = Some(Arc::clone(&snapshot));
                Ok(snapshot)
            }
            Err(reason) => {
                {
                    let mut state = self.state();
                    if state.outage.is_none() {
                        tracing::warn!(api = %self.base(), error = %reason, stale_secs = self.settings.stale.as_secs(), "Host API unreachable; serving the last task data while it is fresh enough");
                        state.outage = Some((Instant::now(), reason.clone()));
                    }
                }
                match usable {
                    Some(s) if s.fetched.elapsed() < self.settings.cache + self.settings.stale => {
                        Ok(s)
                    }
                    _ => Err(self.unavailable(&reason)),
                }
            }
        }
    }

    fn unavailable(&self, reason: &str) -> DbError {
        DbError::Http(format!("Host API {}: {reason}", self.base()))
    }

    /// Looks a task up with HakuRiver's checks, in its order.
    pub async fn lookup(&self, id: TaskId) -> Result<Route, Denied> {
        let snapshot = self.snapshot().await.map_err(Denied::Database)?;
        let row: Option<Row> = snapshot.tasks.get(&id.get()).map(|task| {
            let node = task.node.as_ref().and_then(|n| snapshot.nodes.get(n));
            (
                Some("vps".to_owned()),
                task.status.clone(),
                task.node.clone(),
                task.ssh_port,
                node.and(task.node.clone()),
                node.and_then(|n| n.status.clone()),
                node.and_then(|n| n.url.clone()),
            )
        });
        evaluate(id, row)
    }

    /// The VPS tasks the Host lists (pending, assigning, running, paused), by task ID;
    /// no names (the API's 0.3.0 lists have none).
    pub async fn list(&self) -> Result<Vec<TaskSummary>, Denied> {
        let snapshot = self.snapshot().await.map_err(Denied::Database)?;
        let mut tasks: Vec<TaskSummary> = snapshot
            .tasks
            .iter()
            .filter_map(|(id, t)| {
                Some(TaskSummary {
                    task_id: TaskId::try_from(*id).ok()?,
                    name: None,
                    status: t.status.clone().unwrap_or_default(),
                    node: t.node.clone(),
                })
            })
            .collect();
        tasks.sort_by_key(|t| t.task_id.get());
        Ok(tasks)
    }

    /// Number of active (running or paused) VPS tasks in the copy served now.
    pub async fn count_active(&self) -> Result<u64, DbError> {
        let snapshot = self.snapshot().await?;
        let n = snapshot
            .tasks
            .values()
            .filter(|t| matches!(t.status.as_deref(), Some("running" | "paused")))
            .count();
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// `None` while the Host answers; the outage's start and cause otherwise (task data
    /// may still be served stale).
    pub fn outage(&self) -> Option<(Duration, String)> {
        self.state()
            .outage
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    async fn fetch(&self) -> Result<Snapshot, String> {
        let (tasks, nodes) = tokio::try_join!(self.get("/vps/status"), self.get("/nodes"))?;
        Ok(Snapshot {
            fetched: Instant::now(),
            tasks: parse_tasks(&tasks)?,
            nodes: parse_nodes(&nodes)?,
        })
    }

    /// One GET; the error names the route and never the token.
    async fn get(&self, route: &str) -> Result<Value, String> {
        let path = format!("{}{route}", self.settings.prefix);
        let stream = TcpStream::connect(&self.settings.authority)
            .await
            .map_err(|e| format!("{path}: connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let conn = tokio::spawn(conn);
        let mut request = Request::get(path.as_str())
            .header(HOST, self.settings.authority.as_str())
            .header(ACCEPT, "application/json");
        if let Some(token) = &self.settings.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|_| format!("{path}: cannot build the request"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("{path}: HTTP {status}"));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{path}: body: {e}"))?
                .to_bytes();
            serde_json::from_slice(&body).map_err(|e| format!("{path}: not JSON: {e}"))
        }
        .await;
        conn.abort();
        result
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `/vps/status`: a JSON array of tasks (`task_id` a number or, in 1.0, a string).
fn parse_tasks(v: &Value) -> Result<HashMap<i64, VpsTask>, String> {
    let list = v.as_array().ok_or("/vps/status: not a JSON array")?;
    let mut tasks = HashMap::with_capacity(list.len());
    for t in list {
        let Some(id) = int(&t["task_id"]) else {
            continue;
        };
        tasks.insert(
            id,
            VpsTask {
                status: text(&t["status"]),
                node: text(&t["assigned_node"]),
                ssh_port: int(&t["ssh_port"]),
            },
        );
    }
    Ok(tasks)
}

/// `/nodes`: a JSON array of nodes.
fn parse_nodes(v: &Value) -> Result<HashMap<String, Node>, String> {
    let list = v.as_array().ok_or("/nodes: not a JSON array")?;
    Ok(list
        .iter()
        .filter_map(|n| {
            Some((
                text(&n["hostname"])?,
                Node {
                    url: text(&n["url"]),
                    status: text(&n["status"]),
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::error::Refusal;

    /// A Host API on loopback serving the documented JSON shapes (KohakuRiver 1.0's:
    /// `/api` routes, string task IDs, a bearer token), counting requests; `hang`
    /// makes it accept and never answer.
    struct Host {
        addr: std::net::SocketAddr,
        requests: Arc<AtomicUsize>,
        hang: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    const TOKEN: &str = "sekrit-token";
    const TASKS: &str = r#"[
        {"task_id": "7", "status": "running", "assigned_node": "n1", "ssh_port": 2222},
        {"task_id": "8", "status": "running", "assigned_node": "n2", "ssh_port": 2223},
        {"task_id": "9", "status": "running", "assigned_node": "n1", "ssh_port": null},
        {"task_id": "10", "status": "pending", "assigned_node": null, "ssh_port": null}
    ]"#;
    const NODES: &str = r#"[
        {"hostname": "n1", "url": "http://127.0.0.1:8001", "status": "online"},
        {"hostname": "n2", "url": "http://127.0.0.2:8001", "status": "offline"}
    ]"#;

    impl Host {
        async fn start() -> Host {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let requests = Arc::new(AtomicUsize::new(0));
            let hang = Arc::new(AtomicBool::new(false));
            let (r, h) = (Arc::clone(&requests), Arc::clone(&hang));
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else {
                        return;
                    };
                    let (r, h) = (Arc::clone(&r), Arc::clone(&h));
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        if h.load(Ordering::SeqCst) {
                            let _ = conn.read(&mut buf).await;
                            return;
                        }
                        let head = String::from_utf8_lossy(&head).to_string();
                        let authorized =
                            head.contains(&format!("authorization: Bearer {TOKEN}\r\n"));
                        let (status, body) = if !authorized {
                            ("401 Unauthorized", "{}")
                        } else if head.starts_with("GET /api/vps/status ") {
                            ("200 OK", TASKS)
                        } else if head.starts_with("GET /api/nodes ") {
                            ("200 OK", NODES)
                        } else {
                            ("404 Not Found", "{}")
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = conn.write_all(reply.as_bytes()).await;
                    });
                }
            });
            Host {
                addr,
                requests,
                hang,
                task,
            }
        }

        fn settings(&self, token: Option<&str>) -> HttpDirectorySettings {
            HttpDirectorySettings {
                authority: self.addr.to_string(),
                prefix: "/api".into(),
                token: token.map(Into::into),
                cache: Duration::from_secs(2),
                stale: Duration::from_secs(60),
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    fn tid(n: i64) -> TaskId {
        TaskId::try_from(n).expect("id")
    }

    async fn wire(d: &HttpDirectory, n: i64) -> Result<String, String> {
        d.lookup(tid(n))
            .await
            .map(|r| r.display_addr())
            .map_err(|e| Refusal::from(e).to_string())
    }

    /// Makes the cached copy look `age` old.
    fn age(d: &HttpDirectory, age: Duration) {
        let mut state = d.state();
        let old = state.snapshot.take().expect("a snapshot");
        state.snapshot = Some(Arc::new(Snapshot {
            fetched: Instant::now().checked_sub(age).expect("instant"),
            tasks: old.tasks.clone(),
            nodes: old.nodes.clone(),
        }));
    }

    #[tokio::test]
    async fn routes_and_refuses_with_hakurivers_texts_and_caches() {
        let host = Host::start().await;
        let d = HttpDirectory::new(host.settings(Some(TOKEN)));
        assert_eq!(wire(&d, 7).await, Ok("127.0.0.1:2222".into()));
        assert_eq!(
            wire(&d, 8).await,
            Err("Assigned node for VPS task 8 is not online.".into())
        );
        assert_eq!(
            wire(&d, 9).await,
            Err("VPS task 9 has no SSH port assigned.".into())
        );
        assert_eq!(
            wire(&d, 10).await,
            Err("VPS task 10 is not active (status: pending).".into())
        );
        assert_eq!(wire(&d, 11).await, Err("Task 11 not found.".into()));
        for _ in 0..20 {
            assert_eq!(wire(&d, 7).await, Ok("127.0.0.1:2222".into()));
        }
        // One fetch (both routes) for all of them, within cache_secs.
        assert_eq!(host.requests(), 2);
        assert_eq!(d.count_active().await.expect("count"), 3);
        let listed: Vec<_> = d
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|t| (t.task_id.get(), t.status))
            .collect();
        assert_eq!(
            listed,
            [
                (7, "running"),
                (8, "running"),
                (9, "running"),
                (10, "pending")
            ]
            .map(|(i, s)| (i, s.to_owned()))
        );
        age(&d, Duration::from_secs(3));
        assert_eq!(wire(&d, 7).await, Ok("127.0.0.1:2222".into()));
        assert_eq!(host.requests(), 4);
        assert!(d.outage().is_none());
    }

    #[tokio::test]
    async fn a_wrong_token_is_a_database_error_that_does_not_show_the_token() {
        let host = Host::start().await;
        let d = HttpDirectory::new(host.settings(Some("wrong-token")));
        let denied = d.lookup(tid(7)).await.expect_err("refused");
        let refusal = Refusal::from(denied);
        assert_eq!(
            refusal.to_string(),
            "Internal server error during task lookup."
        );
        let detail = refusal.detail();
        assert!(detail.contains("401"), "{detail}");
        assert!(!detail.contains("wrong-token"), "{detail}");
    }

    #[tokio::test]
    async fn serves_stale_while_the_host_is_down_then_refuses() {
        let host = Host::start().await;
        let d = HttpDirectory::new(host.settings(Some(TOKEN)));
        assert_eq!(wire(&d, 7).await, Ok("127.0.0.1:2222".into()));
        let server = host.task;
        server.abort();
        let _ = server.await;
        // Past cache_secs, within stale_secs: the last copy, and the outage noted.
        age(&d, Duration::from_secs(30));
        assert_eq!(wire(&d, 7).await, Ok("127.0.0.1:2222".into()));
        let (_, why) = d.outage().expect("outage noted");
        assert!(why.contains("connect"), "{why}");
        // Past cache_secs + stale_secs: refused.
        age(&d, Duration::from_secs(63));
        assert_eq!(
            wire(&d, 7).await,
            Err("Internal server error during task lookup.".into())
        );
    }

    #[tokio::test]
    async fn a_slow_host_holds_no_lookup_past_the_fetch_timeout() {
        let host = Host::start().await;
        let d = Arc::new(HttpDirectory::new(host.settings(Some(TOKEN))));
        assert_eq!(wire(&d, 7).await, Ok("127.0.0.1:2222".into()));
        host.hang.store(true, Ordering::SeqCst);
        age(&d, Duration::from_secs(3));
        // One lookup starts the refresh that hangs...
        let refreshing = {
            let d = Arc::clone(&d);
            tokio::spawn(async move { wire(&d, 7).await })
        };
        while host.requests() < 3 {
            tokio::task::yield_now().await;
        }
        // ...the others answer from the copy at once instead of waiting on it.
        let quick = tokio::time::timeout(Duration::from_secs(1), wire(&d, 7))
            .await
            .expect("a lookup waited on the slow refresh");
        assert_eq!(quick, Ok("127.0.0.1:2222".into()));
        // The refreshing one gives up after FETCH_TIMEOUT and serves the stale copy.
        let started = Instant::now();
        let slow = tokio::time::timeout(FETCH_TIMEOUT * 2, refreshing)
            .await
            .expect("held past its timeout")
            .expect("join");
        assert_eq!(slow, Ok("127.0.0.1:2222".into()));
        assert!(started.elapsed() < FETCH_TIMEOUT + Duration::from_secs(1));
        assert!(d.outage().expect("outage").1.contains("no answer"));
    }
}
