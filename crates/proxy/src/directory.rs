//! The task directory: HakuRiver's or KohakuRiver's SQLite database, read-only.
//!
//! HakuRiver's Host writes the database while we read it, may restart and recreate it,
//! and may not have created it yet when we start. So connections are opened lazily,
//! checked against the file's identity (device, inode) before every lookup and reopened
//! when the file was replaced, and every failure becomes a refusal for that one
//! request: the daemon never stops because of the database.
//!
//! Three schemas are served ([`SchemaKind`]): HakuRiver 0.3.0 (`task`, `node`,
//! `assigned_node_id`), KohakuRiver 0.4 (`tasks`, `nodes`, `assigned_node`) and
//! KohakuRiver 1.0 (0.4 plus task owners, `users`, `tokens`, `vps_assignments`). The kind
//! is read from `sqlite_master` and cached per file identity, so a Host upgraded by
//! replacing its file is re-detected on the next lookup; a query that fails drops the
//! cache too (a schema changed in place).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hakuriver_tunnel::TaskId;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

mod access;
pub mod http;

pub use access::{Role, TaskSummary, User};

/// How long one lookup waits for HakuRiver's writer to release a lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept for reuse.
const POOL_SIZE: usize = 4;

/// Statuses in which a VPS accepts tunnels (HakuRiver's `active_vps_statuses`).
const ACTIVE_STATUSES: [&str; 2] = ["running", "paused"];

/// The lookup on HakuRiver 0.3.0's tables.
const LOOKUP_SQL_030: &str = "SELECT t.task_type, t.status, t.assigned_node_id, t.ssh_port, \
     n.hostname, n.status, n.url \
     FROM task AS t LEFT JOIN node AS n ON n.hostname = t.assigned_node_id \
     WHERE t.task_id = ?1";

/// The lookup on KohakuRiver's tables (0.4 and 1.0 route by the same columns).
const LOOKUP_SQL_KOHAKU: &str = "SELECT t.task_type, t.status, t.assigned_node, t.ssh_port, \
     n.hostname, n.status, n.url \
     FROM tasks AS t LEFT JOIN nodes AS n ON n.hostname = t.assigned_node \
     WHERE t.task_id = ?1";

const COUNT_ACTIVE_SQL_030: &str =
    "SELECT COUNT(*) FROM task WHERE task_type = 'vps' AND status IN ('running', 'paused')";
const COUNT_ACTIVE_SQL_KOHAKU: &str =
    "SELECT COUNT(*) FROM tasks WHERE task_type = 'vps' AND status IN ('running', 'paused')";

/// Which Host's schema a database file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchemaKind {
    /// HakuRiver 0.3.0: `task`, `node`, `task.assigned_node_id`.
    HakuRiver030,
    /// KohakuRiver 0.4: `tasks`, `nodes`, `tasks.assigned_node`; no users.
    Kohaku04,
    /// KohakuRiver 1.0: 0.4 plus `tasks.owner_id`, `users`, `tokens`, `vps_assignments`.
    Kohaku10,
}

impl SchemaKind {
    fn lookup_sql(self) -> &'static str {
        match self {
            SchemaKind::HakuRiver030 => LOOKUP_SQL_030,
            SchemaKind::Kohaku04 | SchemaKind::Kohaku10 => LOOKUP_SQL_KOHAKU,
        }
    }

    fn count_active_sql(self) -> &'static str {
        match self {
            SchemaKind::HakuRiver030 => COUNT_ACTIVE_SQL_030,
            SchemaKind::Kohaku04 | SchemaKind::Kohaku10 => COUNT_ACTIVE_SQL_KOHAKU,
        }
    }
}

impl std::fmt::Display for SchemaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchemaKind::HakuRiver030 => "HakuRiver 0.3.0",
            SchemaKind::Kohaku04 => "KohakuRiver 0.4",
            SchemaKind::Kohaku10 => "KohakuRiver 1.0",
        })
    }
}

/// Where a tunnel for a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The task the route leads to (a name resolves to it).
    pub task_id: TaskId,
    /// Runner host: an IP address or a name, without brackets.
    pub host: String,
    /// The VPS container's published SSH port on that runner.
    pub port: u16,
    /// The runner's HakuRiver hostname (for messages).
    pub node: String,
}

impl Route {
    /// `host:port`, bracketing IPv6 addresses.
    pub fn display_addr(&self) -> String {
        hakuriver_tunnel::net::HostPort::display(&self.host, self.port).to_string()
    }
}

/// Why the database could not answer. Logged in full; the client sees only
/// `Internal server error during task lookup.` (HakuRiver's text).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file does not exist (yet).
    #[error("database {0} does not exist")]
    Missing(PathBuf),
    /// SQLite could not open or query it (locked too long, corrupt, not a database,
    /// missing tables or columns).
    #[error("database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is an SQLite database, but of neither Host's schema (or not created yet).
    #[error("database {path} is neither a HakuRiver 0.3.0 nor a KohakuRiver database: {reason}")]
    UnknownSchema {
        /// The database file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The Host's HTTP API gave no usable answer and the last one is too old.
    #[error("{0}")]
    Http(String),
    /// Stat of the file failed for another reason (permissions).
    #[error("database {path}: {source}")]
    Io {
        /// The database file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why the directory gives no route. `Display` is for the log; the wire text is
/// `error::Refusal`'s (`From<Denied>`), in HakuRiver's wording.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// No such task.
    #[error("task {0} not found")]
    NotFound(TaskId),
    /// The task is a batch command, not a VPS.
    #[error("task {0} is not a VPS task")]
    NotVps(TaskId),
    /// The VPS is not `running` or `paused` (its status).
    #[error("VPS task {0} is not active (status: {1})")]
    Inactive(TaskId, String),
    /// The task has no runner.
    #[error("VPS task {0} has no assigned node")]
    NoNode(TaskId),
    /// The task has no published SSH port (NULL or not positive).
    #[error("VPS task {0} has no SSH port")]
    NoSshPort(TaskId),
    /// The runner is not `online` (or its node row is gone).
    #[error("the node of VPS task {0} is not online")]
    NodeOffline(TaskId),
    /// The node's URL has no usable host (the node's hostname).
    #[error("cannot parse the runner URL of node {0}")]
    BadRunnerUrl(String),
    /// `ssh_port` is above 65535 (HakuRiver would fail to connect).
    #[error("ssh_port {1} of VPS task {0} is out of range")]
    PortOutOfRange(TaskId, i64),
    /// The database could not be read.
    #[error("{0}")]
    Database(#[source] DbError),
    /// Any other internal failure.
    #[error("{0}")]
    Internal(String),
    /// No `tokens` row has this token's hash: unknown or revoked (deleted).
    #[error("API token unknown or revoked")]
    BadToken,
    /// The token is valid but its user's `is_active` is 0 (the username).
    #[error("account {0} is disabled")]
    AccountDisabled(String),
    /// The user's role is below `user`.
    #[error("role {0} may not open SSH sessions")]
    RoleTooLow(Role),
    /// The task does not exist, or the user may not reach it; the wire text is the same
    /// for both, only the log says which.
    #[error("task {id} {}", if *exists { "is not theirs to reach" } else { "not found" })]
    NotFoundOrForbidden {
        /// The task asked for.
        id: TaskId,
        /// Whether it exists (for the log only).
        exists: bool,
    },
    /// No live VPS of this name that the user may reach.
    #[error("no reachable VPS named {0:?}")]
    NoSuchName(String),
    /// Several live VPS of this name that the user may reach (the name, how many).
    #[error("{1} reachable VPS tasks named {0:?}")]
    AmbiguousName(String, usize),
    /// Task names on a database without them (before KohakuRiver 1.0).
    #[error("task names need a KohakuRiver 1.0 database")]
    NamesUnsupported,
    /// Users and tokens asked of a database without them (its kind).
    #[error("auth mode needs a KohakuRiver 1.0 database; this one is {0}")]
    AuthUnsupported(SchemaKind),
}

/// A read-only view of HakuRiver's task and node tables.
#[derive(Debug, Clone)]
pub struct TaskDirectory {
    inner: Arc<Inner>,
    /// `Some`: the directory is the Host's HTTP API, not the file.
    http: Option<Arc<http::HttpDirectory>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Pooled>>,
    /// The schema of the file with this identity, once detected.
    schema: Mutex<Option<((u64, u64), SchemaKind)>>,
}

#[derive(Debug)]
struct Pooled {
    conn: Connection,
    identity: (u64, u64),
}

/// One row of a lookup query.
type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl TaskDirectory {
    /// A directory over the database at `path`. Nothing is opened yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TaskDirectory {
            inner: Arc::new(Inner {
                path: path.into(),
                idle: Mutex::new(Vec::new()),
                schema: Mutex::new(None),
            }),
            http: None,
        }
    }

    /// A directory over the Host's HTTP API ([`http`]): lookups by task ID only; auth
    /// mode, names and lists need the SQLite database.
    pub fn over_http(settings: crate::config::HttpDirectorySettings) -> Self {
        TaskDirectory {
            http: Some(Arc::new(http::HttpDirectory::new(settings))),
            ..TaskDirectory::new(PathBuf::new())
        }
    }

    /// The HTTP directory, when this is one.
    pub fn http(&self) -> Option<&http::HttpDirectory> {
        self.http.as_deref()
    }

    /// Where the directory reads from, for logs: the file or the API's base URL.
    pub fn source(&self) -> String {
        match &self.http {
            Some(h) => h.base(),
            None => self.inner.path.display().to_string(),
        }
    }

    /// Number of active VPS tasks, from async code (either backend).
    pub async fn count_active_async(&self) -> Result<u64, DbError> {
        if let Some(h) = &self.http {
            return h.count_active().await;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.count_active())
            .await
            .unwrap_or_else(|e| Err(DbError::Http(format!("database check failed: {e}"))))
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Looks a task up and applies HakuRiver's rules, in HakuRiver's order. Blocking: call
    /// it from `spawn_blocking` (see [`TaskDirectory::lookup_async`]).
    pub fn lookup(&self, id: TaskId) -> Result<Route, Denied> {
        let row = self
            .with_conn(|conn, kind| query_task(conn, kind, id))
            .map_err(Denied::Database)?;
        evaluate(id, row)
    }

    /// The database's schema, detected now if the file is new to us. Blocking.
    pub fn schema(&self) -> Result<SchemaKind, DbError> {
        self.with_conn(|_, kind| Ok(kind))
    }

    /// Looks a task up from async code.
    ///
    /// The lookup is an indexed read of a small, hot file (tens of microseconds), so it
    /// first runs right here on the async worker: handing it to the blocking pool and
    /// back costs more than the query (two thread wake-ups per tunnel; BENCHMARKS.md).
    /// That fast path never waits: it needs a pooled connection and gives up at once
    /// (busy timeout 0) when HakuRiver holds a write lock. Then, and for opening a
    /// connection, the lookup goes to tokio's blocking pool, where it may wait up to
    /// [`BUSY_TIMEOUT`] without stalling other connections.
    pub async fn lookup_async(&self, id: TaskId) -> Result<Route, Denied> {
        if let Some(h) = &self.http {
            // Boxed: the HTTP lookup's state must not grow every connection's task
            // (the SQLite path's future stays as small as before).
            return Box::pin(h.lookup(id)).await;
        }
        if let Some(result) = self.try_lookup_now(id) {
            return result;
        }
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.lookup(id)).await {
            Ok(result) => result,
            Err(join) => Err(Denied::Internal(format!("lookup task failed: {join}"))),
        }
    }

    /// The non-blocking fast path of [`TaskDirectory::lookup_async`]: `None` when it
    /// would have to open a connection or wait for a lock.
    fn try_lookup_now(&self, id: TaskId) -> Option<Result<Route, Denied>> {
        let identity = file_identity(&self.inner.path).ok()?;
        let kind = self.cached_kind(identity)?;
        let pooled = self.take_idle(identity)?;
        let result = pooled
            .conn
            .busy_timeout(Duration::ZERO)
            .and_then(|()| query_task(&pooled.conn, kind, id));
        let restored = pooled.conn.busy_timeout(BUSY_TIMEOUT);
        let row = match result {
            Ok(row) if restored.is_ok() => row,
            Err(e) if is_busy(&e) && restored.is_ok() => {
                self.give_back(pooled);
                return None;
            }
            // Anything else is the blocking path's to report (and the connection's end).
            _ => return None,
        };
        self.give_back(pooled);
        Some(evaluate(id, row))
    }

    /// A pooled connection to the file with `identity`, if one is idle.
    fn take_idle(&self, identity: (u64, u64)) -> Option<Pooled> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        // A replaced file (HakuRiver restarted and recreated it) invalidates every
        // connection to the old inode.
        idle.retain(|p| p.identity == identity);
        idle.pop()
    }

    fn give_back(&self, pooled: Pooled) {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(pooled);
        }
    }

    /// Number of VPS tasks in `running` or `paused` state (for `check` and readiness).
    pub fn count_active(&self) -> Result<u64, DbError> {
        self.with_conn(|conn, kind| {
            conn.query_row(kind.count_active_sql(), [], |r| r.get::<_, i64>(0))
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
    }

    /// The schema detected for the file with `identity`, if it is that file's.
    fn cached_kind(&self, identity: (u64, u64)) -> Option<SchemaKind> {
        let cached = self.inner.schema.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .filter(|(id, _)| *id == identity)
            .map(|(_, kind)| kind)
    }

    /// The schema of the file with `identity`, detected through `conn` when not cached.
    /// A failed detection is not cached: HakuRiver may be creating its tables right now.
    fn kind(&self, conn: &Connection, identity: (u64, u64)) -> Result<SchemaKind, DbError> {
        if let Some(kind) = self.cached_kind(identity) {
            return Ok(kind);
        }
        let path = &self.inner.path;
        let kind = detect_schema(conn)
            .map_err(|source| DbError::Sqlite {
                path: path.clone(),
                source,
            })?
            .map_err(|reason| DbError::UnknownSchema {
                path: path.clone(),
                reason,
            })?;
        let mut cached = self.inner.schema.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, before)) = *cached {
            if before != kind {
                tracing::info!(db = %path.display(), schema = %kind, was = %before, "database schema changed");
            }
        }
        *cached = Some((identity, kind));
        Ok(kind)
    }

    /// Forgets the detected schema (a query failed: the tables may have changed in place).
    fn forget_kind(&self) {
        *self.inner.schema.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection, SchemaKind) -> rusqlite::Result<T>,
    ) -> Result<T, DbError> {
        let path = &self.inner.path;
        let identity = file_identity(path)?;
        let pooled = match self.take_idle(identity) {
            Some(p) => p,
            None => Pooled {
                conn: open(path).map_err(|source| DbError::Sqlite {
                    path: path.clone(),
                    source,
                })?,
                identity,
            },
        };
        let kind = self.kind(&pooled.conn, identity)?;
        let result = f(&pooled.conn, kind).map_err(|source| DbError::Sqlite {
            path: path.clone(),
            source,
        });
        match &result {
            Ok(_) => self.give_back(pooled),
            Err(DbError::Sqlite { source, .. }) if !is_busy(source) => self.forget_kind(),
            Err(_) => {}
        }
        result
    }
}

/// Reads the schema's kind off `sqlite_master`: the outer error is SQLite's, the inner
/// one says what the file holds instead of a known schema.
fn detect_schema(conn: &Connection) -> rusqlite::Result<Result<SchemaKind, String>> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let has = |t: &str| tables.iter().any(|n| n == t);
    let columns = |table: &str| -> rusqlite::Result<Vec<String>> {
        conn.prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([table], |r| r.get(0))?
            .collect()
    };
    let (kind, task_table, node_table, node_column) = if has("tasks") && has("nodes") {
        (SchemaKind::Kohaku04, "tasks", "nodes", "assigned_node")
    } else if has("task") && has("node") {
        (SchemaKind::HakuRiver030, "task", "node", "assigned_node_id")
    } else if tables.is_empty() {
        return Ok(Err("it has no tables (not created yet?)".to_owned()));
    } else {
        return Ok(Err(format!(
            "no task and node tables (tables: {})",
            tables.join(", ")
        )));
    };
    let task_columns = columns(task_table)?;
    let node_columns = columns(node_table)?;
    let missing: Vec<String> = ["task_id", "task_type", "status", "ssh_port", node_column]
        .iter()
        .filter(|c| !task_columns.iter().any(|t| t == *c))
        .map(|c| format!("{task_table}.{c}"))
        .chain(
            ["hostname", "url", "status"]
                .iter()
                .filter(|c| !node_columns.iter().any(|t| t == *c))
                .map(|c| format!("{node_table}.{c}")),
        )
        .collect();
    if !missing.is_empty() {
        return Ok(Err(format!("missing columns {}", missing.join(", "))));
    }
    // A 0.4 file half-way through KohakuRiver's own 1.0 migration routes as 0.4.
    let is_10 = kind == SchemaKind::Kohaku04
        && task_columns.iter().any(|c| c == "owner_id")
        && ["users", "tokens", "vps_assignments"]
            .iter()
            .all(|t| has(t));
    Ok(Ok(if is_10 { SchemaKind::Kohaku10 } else { kind }))
}

/// Runs `kind`'s lookup for `id` (a prepared statement cached per connection).
fn query_task(conn: &Connection, kind: SchemaKind, id: TaskId) -> rusqlite::Result<Option<Row>> {
    let mut stmt = conn.prepare_cached(kind.lookup_sql())?;
    stmt.query_row([id.get()], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .optional()
}

/// Whether SQLite gave up because another connection holds a conflicting lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn file_identity(path: &Path) -> Result<(u64, u64), DbError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok((meta.dev(), meta.ino())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(DbError::Missing(path.to_owned()))
        }
        Err(source) => Err(DbError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // Read-only and without creating anything: a missing file must stay missing for
    // HakuRiver to create. SQLITE_OPEN_NO_MUTEX: each connection is used by one thread
    // at a time (the pool hands it out under a lock).
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// HakuRiver's checks, in its order, on one joined row.
fn evaluate(id: TaskId, row: Option<Row>) -> Result<Route, Denied> {
    let Some((task_type, status, assigned, ssh_port, node_name, node_status, node_url)) = row
    else {
        return Err(Denied::NotFound(id));
    };
    if task_type.as_deref() != Some("vps") {
        return Err(Denied::NotVps(id));
    }
    let status = status.unwrap_or_default();
    if !ACTIVE_STATUSES.contains(&status.as_str()) {
        return Err(Denied::Inactive(id, status));
    }
    let Some(assigned) = assigned.filter(|a| !a.is_empty()) else {
        return Err(Denied::NoNode(id));
    };
    let port = match ssh_port {
        Some(p) if p > 0 => u16::try_from(p).map_err(|_| Denied::PortOutOfRange(id, p))?,
        _ => return Err(Denied::NoSshPort(id)),
    };
    // A dangling node reference is as unreachable as an offline node.
    if node_status.as_deref() != Some("online") {
        return Err(Denied::NodeOffline(id));
    }
    let node = node_name.unwrap_or(assigned);
    let host = runner_host(node_url.as_deref().unwrap_or_default())
        .ok_or_else(|| Denied::BadRunnerUrl(node.clone()))?;
    Ok(Route {
        task_id: id,
        host,
        port,
        node,
    })
}

/// The host part of a runner URL such as `http://10.0.0.5:8001`, `http://runner-3:8001/`,
/// `http://[fd00::5]:8001` or `http://user@host`. HakuRiver requires the `://`.
pub fn runner_host(url: &str) -> Option<String> {
    let (_, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then(|| host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two tables the lookup reads, with one routable VPS (task 7).
    fn small_db(dir: &Path) -> PathBuf {
        let path = dir.join("hakuriver.db");
        let conn = Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE node (hostname TEXT PRIMARY KEY, url TEXT NOT NULL, status TEXT NOT NULL);
             CREATE TABLE task (task_id INTEGER PRIMARY KEY, task_type TEXT NOT NULL,
                 status TEXT NOT NULL, assigned_node_id TEXT, ssh_port INTEGER);
             INSERT INTO node VALUES ('n1', 'http://10.0.0.5:8001', 'online');
             INSERT INTO task VALUES (7, 'vps', 'running', 'n1', 2222);",
        )
        .expect("schema");
        path
    }

    #[test]
    fn fast_path_runs_with_a_pooled_connection_and_never_waits_for_a_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = small_db(dir.path());
        let directory = TaskDirectory::new(&path);
        let id: TaskId = "7".parse().expect("id");
        let route = Route {
            task_id: id,
            host: "10.0.0.5".into(),
            port: 2222,
            node: "n1".into(),
        };
        let fast_path = || {
            directory
                .try_lookup_now(id)
                .expect("ran on the fast path")
                .expect("found")
        };
        // No connection yet: opening one is the blocking pool's job.
        assert!(directory.try_lookup_now(id).is_none());
        assert_eq!(directory.lookup(id).expect("lookup"), route);
        assert_eq!(fast_path(), route);
        // HakuRiver writing: the fast path steps aside instead of waiting out the busy
        // timeout on an async worker. The pooled connection's timeout is made an hour,
        // so a fast path that waited would miss the (much shorter) wait below.
        let writer = Connection::open(&path).expect("writer");
        writer.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        directory.inner.idle.lock().expect("pool")[0]
            .conn
            .busy_timeout(Duration::from_secs(3600))
            .expect("busy timeout");
        let (done, result) = std::sync::mpsc::channel();
        let looking = directory.clone();
        std::thread::spawn(move || done.send(looking.try_lookup_now(id).is_none()));
        let stepped_aside = result
            .recv_timeout(Duration::from_secs(30))
            .expect("the fast path waited for HakuRiver's lock");
        assert!(
            stepped_aside,
            "the fast path answered while the database was locked"
        );
        writer.execute_batch("COMMIT").expect("unlock");
        // The connection went back to the pool with its busy timeout restored.
        assert_eq!(fast_path(), route);
        let idle = directory.inner.idle.lock().expect("pool");
        let busy_ms: i64 = idle[0]
            .conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .expect("busy_timeout");
        assert_eq!(
            u128::try_from(busy_ms).expect("ms"),
            BUSY_TIMEOUT.as_millis()
        );
    }

    use hakuriver_ssh_tests::fixtures;

    /// The wire text of a denial (the tests only: the directory itself knows no wire).
    fn wire(denied: Denied) -> String {
        crate::error::Refusal::from(denied).to_string()
    }
    use hakuriver_ssh_tests::kohaku::{self, Schema, SqlDb};

    fn kind_of(schema: Schema) -> SchemaKind {
        match schema {
            Schema::HakuRiver030 => SchemaKind::HakuRiver030,
            Schema::Kohaku04 => SchemaKind::Kohaku04,
            Schema::Kohaku10 => SchemaKind::Kohaku10,
        }
    }

    fn tid(id: i64) -> TaskId {
        TaskId::try_from(id).expect("id")
    }

    #[test]
    fn detects_each_schema_and_names_it() {
        for schema in Schema::ALL {
            let db = SqlDb::create(schema).expect("db");
            let directory = TaskDirectory::new(db.path());
            let kind = directory.schema().expect("schema");
            assert_eq!(kind, kind_of(schema));
            assert_eq!(kind.to_string(), schema.label());
            assert_eq!(directory.count_active().expect("count"), 0, "{schema}");
        }
    }

    #[test]
    fn half_migrated_kohakuriver_routes_as_0_4() {
        let db = SqlDb::create(Schema::Kohaku04).expect("db");
        Connection::open(db.path())
            .expect("open")
            .execute_batch("ALTER TABLE tasks ADD COLUMN owner_id INTEGER")
            .expect("alter");
        let kind = TaskDirectory::new(db.path()).schema().expect("schema");
        assert_eq!(kind, SchemaKind::Kohaku04);
    }

    /// `(task id, expected refusal text)` for every id-level case of the shared table
    /// (the runner refusing is the connect step's, not the directory's).
    fn id_refusals() -> Vec<(TaskId, String)> {
        fixtures::refusals()
            .into_iter()
            .filter_map(|(request, text)| {
                let line = std::str::from_utf8(&request).ok()?;
                let id: TaskId = line.strip_prefix("REQUEST_TUNNEL ")?.trim().parse().ok()?;
                (id.get() != fixtures::TASK_REFUSED).then_some((id, text))
            })
            .collect()
    }

    #[test]
    fn the_same_refusals_on_every_schema() {
        let cases = id_refusals();
        assert!(cases.len() >= 8, "{cases:?}");
        for schema in Schema::ALL {
            let (db, _) = kohaku::routing(schema, 2222, 1).expect("db");
            let directory = TaskDirectory::new(db.path());
            for (id, want) in &cases {
                let got = directory.lookup(*id).map_err(wire);
                assert_eq!(got, Err(want.clone()), "{schema}, task {id}");
            }
            for id in [
                fixtures::TASK_OK,
                fixtures::TASK_PAUSED,
                fixtures::TASK_SNOWFLAKE,
            ] {
                let route = directory.lookup(tid(id)).expect("routes");
                assert_eq!(route.display_addr(), "127.0.0.1:2222", "{schema}");
                assert_eq!(route.node, "n1");
            }
            let refused = directory
                .lookup(tid(fixtures::TASK_REFUSED))
                .expect("routes");
            assert_eq!(refused.port, 1);
        }
    }

    #[test]
    fn unknown_schema_is_an_internal_error_with_a_one_line_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .expect("create")
            .execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY);")
            .expect("schema");
        let directory = TaskDirectory::new(&path);
        let refusal = crate::error::Refusal::from(directory.lookup(tid(1)).expect_err("refused"));
        assert_eq!(
            refusal.to_string(),
            "Internal server error during task lookup."
        );
        let detail = refusal.detail();
        assert!(!detail.contains('\n'), "{detail}");
        assert!(
            detail.contains("neither a HakuRiver 0.3.0 nor a KohakuRiver database")
                && detail.contains("tables: jobs"),
            "{detail}"
        );
        assert!(matches!(
            directory.schema(),
            Err(DbError::UnknownSchema { .. })
        ));
        // Not cached: HakuRiver creating its tables in the same file is picked up.
        Connection::open(&path)
            .expect("open")
            .execute_batch(kohaku::DDL_HAKURIVER_030)
            .expect("ddl");
        assert_eq!(
            directory.schema().expect("schema"),
            SchemaKind::HakuRiver030
        );
    }

    #[test]
    fn empty_file_says_no_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.db");
        std::fs::write(&path, b"").expect("write");
        let err = TaskDirectory::new(&path).schema().expect_err("unknown");
        assert!(err.to_string().contains("no tables"), "{err}");
    }

    #[test]
    fn a_replaced_file_is_detected_again() {
        let mut order = Schema::ALL.to_vec();
        order.extend([Schema::HakuRiver030, Schema::Kohaku10, Schema::Kohaku04]);
        let (mut db, _) = kohaku::routing(order[0], 2222, 1).expect("db");
        assert_eq!(order.len(), 6);
        let directory = TaskDirectory::new(db.path());
        for (n, schema) in order.into_iter().enumerate() {
            // Each file routes to its own port, so a stale connection would show.
            let port = 2222 + u16::try_from(n).expect("n");
            if n > 0 {
                db.replace_with(schema).expect("replace");
                kohaku::seed_routing(&db, port, 1).expect("seed");
            }
            assert_eq!(directory.schema().expect("schema"), kind_of(schema));
            let route = directory.lookup(tid(fixtures::TASK_OK)).expect("route");
            assert_eq!(route.port, port, "{schema}");
            // The pooled fast path follows the replacement too.
            let fast = directory
                .try_lookup_now(tid(fixtures::TASK_OK))
                .expect("fast path")
                .expect("route");
            assert_eq!(fast, route, "{schema}");
        }
    }

    #[test]
    fn a_port_above_65535_has_its_own_denial_and_hakurivers_text() {
        let id = tid(9);
        let row = row(
            "vps",
            "running",
            Some("n1"),
            Some(70_000),
            Some("online"),
            "http://h",
        );
        let denied = evaluate(id, row).expect_err("refused");
        assert!(
            matches!(denied, Denied::PortOutOfRange(i, 70_000) if i == id),
            "{denied:?}"
        );
        let refusal = crate::error::Refusal::from(denied);
        assert_eq!(
            refusal.to_string(),
            "Failed to connect to Runner for task 9."
        );
        assert!(refusal.detail().contains("70000"), "{}", refusal.detail());
    }

    #[test]
    fn runner_hosts() {
        let cases = [
            ("http://10.0.0.5:8001", Some("10.0.0.5")),
            ("http://runner-3:8001/", Some("runner-3")),
            ("http://runner-3", Some("runner-3")),
            ("https://[fd00::5]:8001/x", Some("fd00::5")),
            ("http://[::1]", Some("::1")),
            ("http://user@host.example:1", Some("host.example")),
            ("10.0.0.5:8001", None),
            ("http://", None),
            ("http://:8001", None),
            ("http://[::1", None),
            ("", None),
        ];
        for (url, want) in cases {
            assert_eq!(runner_host(url).as_deref(), want, "{url}");
        }
    }

    fn row(
        task_type: &str,
        status: &str,
        node: Option<&str>,
        port: Option<i64>,
        node_status: Option<&str>,
        url: &str,
    ) -> Option<Row> {
        Some((
            Some(task_type.into()),
            Some(status.into()),
            node.map(Into::into),
            port,
            node_status.map(|_| node.unwrap_or("n").into()),
            node_status.map(Into::into),
            Some(url.into()),
        ))
    }

    #[test]
    fn hakurivers_rules_in_order() {
        let id = TaskId::try_from(9).expect("id");
        let ok = row(
            "vps",
            "running",
            Some("n1"),
            Some(2222),
            Some("online"),
            "http://10.1.1.1:8001",
        );
        assert_eq!(
            evaluate(id, ok).ok(),
            Some(Route {
                task_id: id,
                host: "10.1.1.1".into(),
                port: 2222,
                node: "n1".into()
            })
        );
        let paused = row(
            "vps",
            "paused",
            Some("n1"),
            Some(2222),
            Some("online"),
            "http://h:1",
        );
        assert!(evaluate(id, paused).is_ok());
        let cases = [
            (None, "Task 9 not found."),
            (
                row(
                    "command",
                    "running",
                    Some("n1"),
                    Some(1),
                    Some("online"),
                    "http://h",
                ),
                "Task 9 is not a VPS task.",
            ),
            (
                row(
                    "vps",
                    "completed",
                    Some("n1"),
                    Some(1),
                    Some("online"),
                    "http://h",
                ),
                "VPS task 9 is not active (status: completed).",
            ),
            (
                row("vps", "running", None, Some(1), None, "http://h"),
                "VPS task 9 has no assigned node.",
            ),
            (
                row(
                    "vps",
                    "running",
                    Some("n1"),
                    None,
                    Some("online"),
                    "http://h",
                ),
                "VPS task 9 has no SSH port assigned.",
            ),
            (
                row(
                    "vps",
                    "running",
                    Some("n1"),
                    Some(0),
                    Some("online"),
                    "http://h",
                ),
                "VPS task 9 has no SSH port assigned.",
            ),
            (
                row(
                    "vps",
                    "running",
                    Some("n1"),
                    Some(22),
                    Some("offline"),
                    "http://h",
                ),
                "Assigned node for VPS task 9 is not online.",
            ),
            (
                row("vps", "running", Some("n1"), Some(22), None, "http://h"),
                "Assigned node for VPS task 9 is not online.",
            ),
            (
                row(
                    "vps",
                    "running",
                    Some("n1"),
                    Some(22),
                    Some("online"),
                    "n1:8001",
                ),
                "Error parsing runner URL for node n1.",
            ),
        ];
        for (row, want) in cases {
            assert_eq!(evaluate(id, row).map_err(wire), Err(want.to_owned()));
        }
    }
}
