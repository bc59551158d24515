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

use super::{evaluate, DbError, Denied, Route, Row};
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
