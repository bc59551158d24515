//! SQLite databases with KohakuRiver's schemas (0.4 and 1.0), and HakuRiver 0.3.0's,
//! created by our own SQL from the DDL its models emit (`shared/notes/kohakuriver.md`,
//! `hakuriver-peer.md`), with helpers to add nodes, tasks, users, tokens and
//! assignments.
//!
//! [`routing`] seeds the same tasks as [`crate::fixtures::routing_db`], so
//! [`crate::fixtures::refusals`] is checked against every schema unchanged; on 1.0 it
//! also adds [`Cast`]: one user per access rule, with tokens, named tasks and
//! assignments.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection};
use serde_json::Value;
use sha3::{Digest, Sha3_512};
use tempfile::TempDir;

use crate::fixtures;

/// HakuRiver 0.3.0's tables, as `hakuriver.db.models.initialize_database` creates them.
pub const DDL_HAKURIVER_030: &str = r#"
CREATE TABLE IF NOT EXISTS "node" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "last_heartbeat" DATETIME NOT NULL, "status" VARCHAR(255) NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "memory_total_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT);
CREATE TABLE IF NOT EXISTS "task" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "status" VARCHAR(255) NOT NULL, "assigned_node_id" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME, "assignment_suspicion_count" INTEGER NOT NULL, "required_memory_bytes" INTEGER, "systemd_unit_name" VARCHAR(255), "target_numa_node_id" INTEGER, "batch_id" INTEGER, "ssh_port" INTEGER, FOREIGN KEY ("assigned_node_id") REFERENCES "node" ("hostname"));
CREATE INDEX "task_assigned_node_id" ON "task" ("assigned_node_id");
CREATE INDEX "task_batch_id" ON "task" ("batch_id");
"#;

/// KohakuRiver 0.4's `tasks` and `nodes`: 1.0's tables without the columns 1.0 added
/// (task `name`, `owner_id`, approval, `vps_backend` and VM columns; node `vm_capable`,
/// `vfio_gpus`, `runner_version`), and no user tables.
pub const DDL_KOHAKU_04: &str = r#"
CREATE TABLE "nodes" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "memory_total_bytes" INTEGER, "status" VARCHAR(255) NOT NULL, "last_heartbeat" DATETIME NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT);
CREATE TABLE "tasks" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "batch_id" INTEGER, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "required_memory_bytes" INTEGER, "target_numa_node_id" INTEGER, "status" VARCHAR(255) NOT NULL, "assigned_node" VARCHAR(255), "assignment_suspicion_count" INTEGER NOT NULL, "container_name" VARCHAR(255), "registry_image" VARCHAR(255), "docker_image_name" VARCHAR(255), "docker_privileged" INTEGER NOT NULL, "docker_mount_dirs" TEXT, "ssh_port" INTEGER, "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME);
"#;

/// KohakuRiver 1.0.0.dev1's tables that the proxy reads, exactly as its models create them.
pub const DDL_KOHAKU_10: &str = r#"
CREATE TABLE "nodes" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "memory_total_bytes" INTEGER, "status" VARCHAR(255) NOT NULL, "last_heartbeat" DATETIME NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT, "vm_capable" INTEGER NOT NULL, "vfio_gpus" TEXT, "runner_version" VARCHAR(255));
CREATE TABLE "tasks" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "batch_id" INTEGER, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "required_memory_bytes" INTEGER, "target_numa_node_id" INTEGER, "name" VARCHAR(255), "owner_id" INTEGER, "approval_status" VARCHAR(255), "approved_by_id" INTEGER, "approved_at" DATETIME, "rejection_reason" TEXT, "status" VARCHAR(255) NOT NULL, "assigned_node" VARCHAR(255), "assignment_suspicion_count" INTEGER NOT NULL, "container_name" VARCHAR(255), "registry_image" VARCHAR(255), "docker_image_name" VARCHAR(255), "docker_privileged" INTEGER NOT NULL, "docker_mount_dirs" TEXT, "ssh_port" INTEGER, "vps_backend" VARCHAR(255) NOT NULL, "vm_image" VARCHAR(255), "vm_disk_size" VARCHAR(255), "vm_ip" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME);
CREATE TABLE "users" ("id" INTEGER NOT NULL PRIMARY KEY, "username" VARCHAR(50) NOT NULL, "display_name" VARCHAR(100), "password_hash" VARCHAR(255) NOT NULL, "is_active" INTEGER NOT NULL, "role" VARCHAR(20) NOT NULL, "created_at" DATETIME NOT NULL);
CREATE TABLE "tokens" ("id" INTEGER NOT NULL PRIMARY KEY, "user_id" INTEGER NOT NULL, "token_hash" VARCHAR(128) NOT NULL, "name" VARCHAR(100) NOT NULL, "last_used" DATETIME, "created_at" DATETIME NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE);
CREATE TABLE "vps_assignments" ("id" INTEGER NOT NULL PRIMARY KEY, "vps_task_id" INTEGER NOT NULL, "user_id" INTEGER NOT NULL, "created_at" DATETIME NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE);
"#;

/// A timestamp as peewee stores DATETIME (naive local time, text).
const WHEN: &str = "2026-01-01 00:00:00.000000";

/// Which Host wrote the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// HakuRiver 0.3.0 (`task`, `node`, `assigned_node_id`).
    HakuRiver030,
    /// KohakuRiver 0.4 (`tasks`, `nodes`, `assigned_node`).
    Kohaku04,
    /// KohakuRiver 1.0 (0.4 plus names, owners, users, tokens, assignments).
    Kohaku10,
}

impl Schema {
    /// All three, oldest first.
    pub const ALL: [Schema; 3] = [Schema::HakuRiver030, Schema::Kohaku04, Schema::Kohaku10];

    /// The DDL that creates it.
    pub fn ddl(self) -> &'static str {
        match self {
            Schema::HakuRiver030 => DDL_HAKURIVER_030,
            Schema::Kohaku04 => DDL_KOHAKU_04,
            Schema::Kohaku10 => DDL_KOHAKU_10,
        }
    }

    /// How the proxy names it (`SchemaKind`'s `Display`).
    pub fn label(self) -> &'static str {
        match self {
            Schema::HakuRiver030 => "HakuRiver 0.3.0",
            Schema::Kohaku04 => "KohakuRiver 0.4",
            Schema::Kohaku10 => "KohakuRiver 1.0",
        }
    }

    /// Whether tasks have names and owners, and users, tokens, assignments exist.
    pub fn has_users(self) -> bool {
        self == Schema::Kohaku10
    }
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Lowercase hex of SHA3-512 of the token's UTF-8 bytes: KohakuRiver's `token_hash`.
pub fn token_hash(token: &str) -> String {
    let digest = Sha3_512::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One task row; columns the schema lacks (`name`, `owner_id` before 1.0) must be `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `task_id`.
    pub id: i64,
    /// `task_type`: `vps` or `command`.
    pub task_type: String,
    /// `status`.
    pub status: String,
    /// The assigned node's hostname.
    pub node: Option<String>,
    /// `ssh_port`.
    pub ssh_port: Option<i64>,
    /// `name` (1.0).
    pub name: Option<String>,
    /// `owner_id` (1.0).
    pub owner: Option<i64>,
}

impl Task {
    /// A VPS task with no name and no owner.
    pub fn vps(id: i64, status: &str, node: Option<&str>, ssh_port: Option<i64>) -> Task {
        Task {
            id,
            task_type: "vps".into(),
            status: status.into(),
            node: node.map(Into::into),
            ssh_port,
            name: None,
            owner: None,
        }
    }

    /// Sets the name.
    pub fn named(mut self, name: &str) -> Task {
        self.name = Some(name.into());
        self
    }

    /// Sets the owner.
    pub fn owned_by(mut self, user_id: i64) -> Task {
        self.owner = Some(user_id);
        self
    }
}

/// A database of one [`Schema`] in its own tempdir.
pub struct SqlDb {
    dir: TempDir,
    path: PathBuf,
    schema: Schema,
}

impl SqlDb {
    /// An empty database (tables only).
    pub fn create(schema: Schema) -> Result<SqlDb> {
        let dir = tempfile::Builder::new()
            .prefix("kohakuriver-db-")
            .tempdir()?;
        let path = dir.path().join("kohakuriver.db");
        write_schema(&path, schema)?;
        Ok(SqlDb { dir, path, schema })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tempdir holding it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its schema (changes with [`SqlDb::replace_with`]).
    pub fn schema(&self) -> Schema {
        self.schema
    }

    fn conn(&self) -> Result<Connection> {
        Connection::open(&self.path).with_context(|| format!("open {}", self.path.display()))
    }

    fn task_table(&self) -> (&'static str, &'static str, &'static str) {
        match self.schema {
            Schema::HakuRiver030 => ("task", "node", "assigned_node_id"),
            Schema::Kohaku04 | Schema::Kohaku10 => ("tasks", "nodes", "assigned_node"),
        }
    }

    /// Adds a node.
    pub fn add_node(&self, hostname: &str, url: &str, status: &str) -> Result<()> {
        let (_, nodes, _) = self.task_table();
        let extra = if self.schema == Schema::Kohaku10 {
            (", vm_capable", ", 0")
        } else {
            ("", "")
        };
        let sql = format!(
            "INSERT INTO {nodes} (hostname, url, total_cores, status, last_heartbeat{}) \
             VALUES (?1, ?2, 4, ?3, ?4{})",
            extra.0, extra.1
        );
        self.conn()?
            .execute(&sql, params![hostname, url, status, WHEN])
            .with_context(|| format!("add node {hostname}"))?;
        Ok(())
    }

    /// Adds a task.
    pub fn add_task(&self, task: &Task) -> Result<()> {
        let (tasks, _, assigned) = self.task_table();
        let common = "task_id, task_type, status, ssh_port, command, arguments, env_vars, \
             required_cores, required_gpus, stdout_path, stderr_path, submitted_at, \
             assignment_suspicion_count";
        let values = "?1, ?2, ?3, ?4, '', '[]', '{}', 1, '[]', '', '', ?5, 0";
        let conn = self.conn()?;
        let result = match self.schema {
            Schema::HakuRiver030 | Schema::Kohaku04 => {
                if task.name.is_some() || task.owner.is_some() {
                    bail!("{} tasks have no name or owner", self.schema);
                }
                let docker = if self.schema == Schema::Kohaku04 {
                    (", docker_privileged", ", 0")
                } else {
                    ("", "")
                };
                conn.execute(
                    &format!(
                        "INSERT INTO {tasks} ({common}, {assigned}{}) VALUES ({values}, ?6{})",
                        docker.0, docker.1
                    ),
                    params![
                        task.id,
                        task.task_type,
                        task.status,
                        task.ssh_port,
                        WHEN,
                        task.node
                    ],
                )
            }
            Schema::Kohaku10 => conn.execute(
                &format!(
                    "INSERT INTO {tasks} ({common}, {assigned}, docker_privileged, vps_backend, \
                     name, owner_id) VALUES ({values}, ?6, 0, 'docker', ?7, ?8)"
                ),
                params![
                    task.id,
                    task.task_type,
                    task.status,
                    task.ssh_port,
                    WHEN,
                    task.node,
                    task.name,
                    task.owner
                ],
            ),
        };
        result.with_context(|| format!("add task {}", task.id))?;
        Ok(())
    }

    /// Adds a VPS task: `add_vps(20, Some("web"), Some(owner), "running", Some("n1"), Some(port))`.
    pub fn add_vps(
        &self,
        id: i64,
        name: Option<&str>,
        owner: Option<i64>,
        status: &str,
        node: Option<&str>,
        ssh_port: Option<i64>,
    ) -> Result<()> {
        let mut task = Task::vps(id, status, node, ssh_port);
        task.name = name.map(Into::into);
        task.owner = owner;
        self.add_task(&task)
    }

    /// Sets one task's status.
    pub fn set_task_status(&self, id: i64, status: &str) -> Result<()> {
        let (tasks, _, _) = self.task_table();
        let n = self.conn()?.execute(
            &format!("UPDATE {tasks} SET status = ?2 WHERE task_id = ?1"),
            params![id, status],
        )?;
        if n != 1 {
            bail!("no task {id}");
        }
        Ok(())
    }

    /// Inserts `spec`'s `nodes` and `tasks` (the JSON format of [`crate::HakuDb`]:
    /// `task_id`, `task_type`, `status`, `assigned_node`, `ssh_port`; on 1.0 also `name`
    /// and `owner_id`).
    pub fn seed(&self, spec: &Value) -> Result<()> {
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        for node in spec["nodes"].as_array().into_iter().flatten() {
            self.add_node(
                &text(node, "hostname").context("node hostname")?,
                &text(node, "url").context("node url")?,
                &text(node, "status").context("node status")?,
            )?;
        }
        for task in spec["tasks"].as_array().into_iter().flatten() {
            self.add_task(&Task {
                id: task["task_id"].as_i64().context("task_id")?,
                task_type: text(task, "task_type").context("task_type")?,
                status: text(task, "status").context("status")?,
                node: text(task, "assigned_node"),
                ssh_port: task.get("ssh_port").and_then(Value::as_i64),
                name: text(task, "name"),
                owner: task.get("owner_id").and_then(Value::as_i64),
            })?;
        }
        Ok(())
    }

    /// Adds a user (1.0) and returns its id.
    pub fn add_user(&self, username: &str, role: &str, is_active: bool) -> Result<i64> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO users (username, password_hash, is_active, role, created_at) \
             VALUES (?1, 'not-a-real-hash', ?2, ?3, ?4)",
            params![username, i64::from(is_active), role, WHEN],
        )
        .with_context(|| format!("add user {username}"))?;
        Ok(conn.last_insert_rowid())
    }

    /// Stores `token` for `user_id` as KohakuRiver does (its hash only); returns the row id.
    pub fn add_token(&self, user_id: i64, token: &str) -> Result<i64> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO tokens (user_id, token_hash, name, created_at) VALUES (?1, ?2, 'test', ?3)",
            params![user_id, token_hash(token), WHEN],
        )
        .context("add token")?;
        Ok(conn.last_insert_rowid())
    }

    /// Revokes a token the way KohakuRiver does: deletes its row.
    pub fn revoke_token(&self, token_row: i64) -> Result<()> {
        let n = self
            .conn()?
            .execute("DELETE FROM tokens WHERE id = ?1", [token_row])?;
        if n != 1 {
            bail!("no token row {token_row}");
        }
        Ok(())
    }

    /// Sets a user's `is_active`.
    pub fn set_active(&self, user_id: i64, is_active: bool) -> Result<()> {
        self.conn()?.execute(
            "UPDATE users SET is_active = ?2 WHERE id = ?1",
            params![user_id, i64::from(is_active)],
        )?;
        Ok(())
    }

    /// Assigns VPS task `task_id` to `user_id` (a `vps_assignments` row).
    pub fn assign(&self, task_id: i64, user_id: i64) -> Result<()> {
        self.conn()?
            .execute(
                "INSERT INTO vps_assignments (vps_task_id, user_id, created_at) VALUES (?1, ?2, ?3)",
                params![task_id, user_id, WHEN],
            )
            .context("assign")?;
        Ok(())
    }

    /// Replaces the file (new inode, by rename, as a Host reinstalled or upgraded by
    /// copying does) with an empty database of `schema`. Seed it afterwards.
    pub fn replace_with(&mut self, schema: Schema) -> Result<()> {
        let fresh = self.dir.path().join("replacement.db");
        let _ = std::fs::remove_file(&fresh);
        write_schema(&fresh, schema)?;
        std::fs::rename(&fresh, &self.path).context("rename over the database")?;
        self.schema = schema;
        Ok(())
    }
}

/// Creates a database of `schema` at `path` (which must not hold tables yet).
pub fn write_schema(path: &Path, schema: Schema) -> Result<()> {
    let conn = Connection::open(path).with_context(|| format!("create {}", path.display()))?;
    conn.execute_batch(schema.ddl())
        .with_context(|| format!("{schema} DDL"))?;
    Ok(())
}

/// Usernames of [`Cast`], one per access rule.
pub mod users {
    /// Role `user`; owns the routing tasks and [`super::TASK_TWIN_A`]/`B`.
    pub const OWNER: &str = "olivia";
    /// Role `user`; assigned to [`crate::fixtures::TASK_OK`] and [`super::TASK_OTHERS`].
    pub const ASSIGNED: &str = "ash";
    /// Role `operator`.
    pub const OPERATOR: &str = "oscar";
    /// Role `admin`.
    pub const ADMIN: &str = "ada";
    /// Role `user`; owns only [`super::TASK_OTHERS`] and [`super::TASK_OTHERS_TWIN`].
    pub const OTHER: &str = "otto";
    /// Role `viewer`.
    pub const VIEWER: &str = "vera";
    /// Role `user`, `is_active = 0`; owns [`super::TASK_INACTIVE_OWNED`].
    pub const INACTIVE: &str = "ian";
}

/// Tokens of [`Cast`] (what each user's `auth.json` would hold).
pub mod tokens {
    /// [`super::users::OWNER`]'s.
    pub const OWNER: &str = "kr-owner-5vQm1yJxRZb0c9Tq2Wf3h4LkP7sA8dEgN6uY";
    /// [`super::users::ASSIGNED`]'s.
    pub const ASSIGNED: &str = "kr-assigned-Hq8vT3mZ0pW1rK6yB2nC9xL4aJ7sD5fE";
    /// [`super::users::OPERATOR`]'s.
    pub const OPERATOR: &str = "kr-operator-Zx4cV7bN1mQ8wE3rT6yU9iO2pA5sD0f";
    /// [`super::users::ADMIN`]'s.
    pub const ADMIN: &str = "kr-admin-Lk2jH5gF8dS1aP4oI7uY0tR3eW6qZ9xCv";
    /// [`super::users::OTHER`]'s.
    pub const OTHER: &str = "kr-other-Mn3bV6cX9zL2kJ5hG8fD1sA4pO7iU0yTr";
    /// [`super::users::VIEWER`]'s.
    pub const VIEWER: &str = "kr-viewer-Qw1eR4tY7uI0oP3aS6dF9gH2jK5lZ8xCv";
    /// [`super::users::INACTIVE`]'s (valid row; the account is disabled).
    pub const INACTIVE: &str = "kr-inactive-Bg7nH0mJ3kL6qW9eR2tY5uI8oP1aS4d";
    /// Was [`super::users::OWNER`]'s; its row is deleted.
    pub const REVOKED: &str = "kr-revoked-Cf5vG8bH1nJ4mK7lQ0wE3rT6yU9iO2p";
    /// In no row at all.
    pub const WRONG: &str = "kr-wrong-Dx9cF2vG5bH8nJ1mK4lQ7wE0rT3yU6iO";
}

/// A running VPS named `"twin"` owned by [`users::OWNER`].
pub const TASK_TWIN_A: i64 = 21;
/// Another running VPS named `"twin"` owned by [`users::OWNER`].
pub const TASK_TWIN_B: i64 = 22;
/// A running VPS named `"others-box"` owned by [`users::OTHER`] (assigned to
/// [`users::ASSIGNED`]).
pub const TASK_OTHERS: i64 = 23;
/// A running VPS named `"twin"` owned by [`users::OTHER`]: `"twin"` is ambiguous for
/// [`users::OWNER`] (2) and operators (3), unique for [`users::OTHER`].
pub const TASK_OTHERS_TWIN: i64 = 24;
/// A completed VPS named [`NAME_UNIQUE`] owned by [`users::OWNER`]: terminal, so the
/// name stays unique.
pub const TASK_OLD_WEB: i64 = 25;
/// A running VPS owned by [`users::INACTIVE`].
pub const TASK_INACTIVE_OWNED: i64 = 26;
/// A running VPS with no owner, no assignment (reachable by operators only).
pub const TASK_UNOWNED: i64 = 27;

/// [`crate::fixtures::TASK_OK`]'s name (unique among non-terminal VPS tasks).
pub const NAME_UNIQUE: &str = "web";
/// The name of [`TASK_TWIN_A`], [`TASK_TWIN_B`] and [`TASK_OTHERS_TWIN`].
pub const NAME_TWIN: &str = "twin";
/// [`TASK_OTHERS`]'s name.
pub const NAME_OTHERS: &str = "others-box";

/// The users, tokens and token rows [`routing`] adds on 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cast {
    /// [`users::OWNER`]'s id.
    pub owner: i64,
    /// [`users::ASSIGNED`]'s id.
    pub assigned: i64,
    /// [`users::OPERATOR`]'s id.
    pub operator: i64,
    /// [`users::ADMIN`]'s id.
    pub admin: i64,
    /// [`users::OTHER`]'s id.
    pub other: i64,
    /// [`users::VIEWER`]'s id.
    pub viewer: i64,
    /// [`users::INACTIVE`]'s id.
    pub inactive: i64,
    /// The `tokens` row of [`tokens::OWNER`] (revoke it to test revocation live).
    pub owner_token_row: i64,
}

/// The routing database of [`fixtures::routing_db`] in `schema`: the same tasks, the
/// same refusals ([`fixtures::refusals`]). On 1.0 the routing tasks belong to
/// [`users::OWNER`] and [`NAME_UNIQUE`] names [`fixtures::TASK_OK`]; the [`Cast`], the
/// named tasks above and the assignments are added too (`None` on older schemas).
/// Tasks [`TASK_TWIN_A`].. point at `sshd_port`.
pub fn routing(schema: Schema, sshd_port: u16, refused_port: u16) -> Result<(SqlDb, Option<Cast>)> {
    let db = SqlDb::create(schema)?;
    let cast = seed_routing(&db, sshd_port, refused_port)?;
    Ok((db, cast))
}

/// Seeds an empty `db` as [`routing`] does (after [`SqlDb::replace_with`]).
pub fn seed_routing(db: &SqlDb, sshd_port: u16, refused_port: u16) -> Result<Option<Cast>> {
    let mut spec = fixtures::routing_db(sshd_port, refused_port);
    if !db.schema().has_users() {
        db.seed(&spec)?;
        return Ok(None);
    }
    let owner = db.add_user(users::OWNER, "user", true)?;
    let assigned = db.add_user(users::ASSIGNED, "user", true)?;
    let operator = db.add_user(users::OPERATOR, "operator", true)?;
    let admin = db.add_user(users::ADMIN, "admin", true)?;
    let other = db.add_user(users::OTHER, "user", true)?;
    let viewer = db.add_user(users::VIEWER, "viewer", true)?;
    let inactive = db.add_user(users::INACTIVE, "user", false)?;
    let owner_token_row = db.add_token(owner, tokens::OWNER)?;
    db.add_token(assigned, tokens::ASSIGNED)?;
    db.add_token(operator, tokens::OPERATOR)?;
    db.add_token(admin, tokens::ADMIN)?;
    db.add_token(other, tokens::OTHER)?;
    db.add_token(viewer, tokens::VIEWER)?;
    db.add_token(inactive, tokens::INACTIVE)?;
    let revoked = db.add_token(owner, tokens::REVOKED)?;
    db.revoke_token(revoked)?;

    for task in spec["tasks"].as_array_mut().into_iter().flatten() {
        task["owner_id"] = owner.into();
        if task["task_id"] == fixtures::TASK_OK {
            task["name"] = NAME_UNIQUE.into();
        }
    }
    db.seed(&spec)?;
    let port = Some(i64::from(sshd_port));
    let vps = |id, name: Option<&str>, owner: Option<i64>, status| {
        db.add_vps(id, name, owner, status, Some("n1"), port)
    };
    vps(TASK_TWIN_A, Some(NAME_TWIN), Some(owner), "running")?;
    vps(TASK_TWIN_B, Some(NAME_TWIN), Some(owner), "running")?;
    vps(TASK_OTHERS, Some(NAME_OTHERS), Some(other), "running")?;
    vps(TASK_OTHERS_TWIN, Some(NAME_TWIN), Some(other), "running")?;
    vps(TASK_OLD_WEB, Some(NAME_UNIQUE), Some(owner), "completed")?;
    vps(TASK_INACTIVE_OWNED, None, Some(inactive), "running")?;
    vps(TASK_UNOWNED, None, None, "running")?;
    db.assign(fixtures::TASK_OK, assigned)?;
    db.assign(TASK_OTHERS, assigned)?;
    Ok(Some(Cast {
        owner,
        assigned,
        operator,
        admin,
        other,
        viewer,
        inactive,
        owner_token_row,
    }))
}

/// The proxy's refusal texts (after `ERROR `) for auth, names and lists, as users see them.
pub mod texts {
    /// Unknown or revoked token.
    pub const BAD_TOKEN: &str = "Invalid or revoked API token. Log in again with 'kohakuriver auth login' (hakuriver-ssh reads the token from --token-file, $KOHAKURIVER_TOKEN or ~/.kohakuriver/auth.json).";
    /// The token's user has `is_active = 0`.
    pub const INACTIVE_ACCOUNT: &str =
        "Your KohakuRiver account is disabled; ask an administrator to reactivate it.";
    /// Task names on a HakuRiver 0.3.0 or KohakuRiver 0.4 database.
    pub const NAMES_UNSUPPORTED: &str = "Task names need a KohakuRiver 1.0 Host; use the task ID.";
    /// Auth on a database without users (the log says why).
    pub const AUTH_UNSUPPORTED: &str = "Internal server error during task lookup.";

    /// A role below `user`.
    pub fn role_too_low(role: &str) -> String {
        format!("Your KohakuRiver role ({role}) may not open SSH sessions; ask an administrator for the user role.")
    }

    /// A task ID that does not exist or that the user may not reach (the same text).
    pub fn not_found_or_forbidden(id: i64) -> String {
        format!("Task {id} not found, or you may not reach it (only its owner, users assigned to it and operators may).")
    }

    /// No reachable VPS of that name.
    pub fn no_such_name(name: &str) -> String {
        format!("No VPS named {name:?} that you may reach; 'hakuriver-ssh list' shows yours.")
    }

    /// Several reachable VPS of that name.
    pub fn ambiguous_name(name: &str, count: usize) -> String {
        format!("{count} VPS tasks named {name:?} that you may reach; use the task ID ('hakuriver-ssh list' shows them).")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn token_hash_is_lowercase_hex_sha3_512() {
        // SHA3-512("abc"), FIPS 202 test vector.
        assert_eq!(
            token_hash("abc"),
            "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e\
             10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"
        );
    }

    #[test]
    fn every_schema_takes_the_routing_fixture() {
        for schema in Schema::ALL {
            let (db, cast) = routing(schema, 2222, 1).unwrap();
            assert_eq!(cast.is_some(), schema.has_users(), "{schema}");
            let conn = Connection::open(db.path()).unwrap();
            let table = if schema == Schema::HakuRiver030 {
                "task"
            } else {
                "tasks"
            };
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            let extra = if schema.has_users() { 7 } else { 0 };
            assert_eq!(n, 11 + extra, "{schema}");
        }
    }
}
