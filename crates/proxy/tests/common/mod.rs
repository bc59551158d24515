//! Shared fixtures: SQLite files with HakuRiver 0.3.0's exact schema.
#![allow(dead_code)]

use std::path::Path;

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
