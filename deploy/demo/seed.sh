#!/bin/sh
# Write the demo HakuRiver database: HakuRiver 0.3.0's exact schema (as its
# peewee models create it), one online node whose runner is the `vps` compose
# service, a running VPS task on it with sshd on port 22, and two tasks that show
# the proxy's refusals (a completed VPS task, a command task).
# Idempotent: run again, it rewrites the same rows.
#   DB                 database file (default /var/lib/hakuriver/hakuriver.db)
#   DEMO_TASK_ID       ID of the running VPS task (default 42)
#   DEMO_RUNNER_HOST   host name the proxy connects to (default vps)
#   DEMO_SSH_PORT      sshd port on that host (default 22)
#   AUTHORIZED_KEYS    stored as the VPS task's command, where HakuRiver keeps
#                      the public key a VPS task was submitted with (optional)
set -eu
DB=${DB:-/var/lib/hakuriver/hakuriver.db}
ID=${DEMO_TASK_ID:-42}
RUNNER=${DEMO_RUNNER_HOST:-vps}
PORT=${DEMO_SSH_PORT:-22}
case "$ID$PORT" in *[!0-9]*) echo "seed: DEMO_TASK_ID and DEMO_SSH_PORT must be numbers" >&2; exit 1 ;; esac
case "$RUNNER" in *[!A-Za-z0-9.-]*) echo "seed: bad DEMO_RUNNER_HOST" >&2; exit 1 ;; esac
KEY=$(printf '%s\n' "${AUTHORIZED_KEYS:-}" | head -n 1 | sed "s/'/''/g")
mkdir -p "$(dirname "$DB")"
sqlite3 -bail "$DB" <<SQL
BEGIN;
CREATE TABLE IF NOT EXISTS "node" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "last_heartbeat" DATETIME NOT NULL, "status" VARCHAR(255) NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "memory_total_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT);
CREATE TABLE IF NOT EXISTS "task" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "status" VARCHAR(255) NOT NULL, "assigned_node_id" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME, "assignment_suspicion_count" INTEGER NOT NULL, "required_memory_bytes" INTEGER, "systemd_unit_name" VARCHAR(255), "target_numa_node_id" INTEGER, "batch_id" INTEGER, "ssh_port" INTEGER, FOREIGN KEY ("assigned_node_id") REFERENCES "node" ("hostname"));
CREATE INDEX IF NOT EXISTS "task_assigned_node_id" ON "task" ("assigned_node_id");
CREATE INDEX IF NOT EXISTS "task_batch_id" ON "task" ("batch_id");
INSERT OR REPLACE INTO "node" ("hostname", "url", "total_cores", "last_heartbeat", "status", "cpu_percent", "memory_percent", "memory_used_bytes", "memory_total_bytes", "current_avg_temp", "current_max_temp", "numa_topology", "gpu_info")
  VALUES ('demo-runner', 'http://$RUNNER:8001', 2, datetime('now', 'localtime') || '.000000', 'online', 3.5, 12.0, 1073741824, 8589934592, NULL, NULL, NULL, '[]');
INSERT OR REPLACE INTO "task" ("task_id", "task_type", "command", "arguments", "env_vars", "required_cores", "required_gpus", "status", "assigned_node_id", "stdout_path", "stderr_path", "exit_code", "error_message", "submitted_at", "started_at", "completed_at", "assignment_suspicion_count", "required_memory_bytes", "systemd_unit_name", "target_numa_node_id", "batch_id", "ssh_port")
  VALUES
  ($ID, 'vps', '$KEY', '[]', '{}', 1, '[]', 'running', 'demo-runner', '/shared/task_outputs/$ID.out', '/shared/task_errors/$ID.err', NULL, NULL, datetime('now', 'localtime') || '.000000', datetime('now', 'localtime') || '.000000', NULL, 0, NULL, NULL, NULL, NULL, $PORT),
  ($ID + 1, 'vps', '$KEY', '[]', '{}', 1, '[]', 'completed', 'demo-runner', '/shared/task_outputs/$((ID + 1)).out', '/shared/task_errors/$((ID + 1)).err', 0, NULL, datetime('now', 'localtime') || '.000000', datetime('now', 'localtime') || '.000000', datetime('now', 'localtime') || '.000000', 0, NULL, NULL, NULL, NULL, $PORT),
  ($ID + 2, 'command', 'hostname', '[]', '{}', 1, '[]', 'completed', 'demo-runner', '/shared/task_outputs/$((ID + 2)).out', '/shared/task_errors/$((ID + 2)).err', 0, NULL, datetime('now', 'localtime') || '.000000', datetime('now', 'localtime') || '.000000', datetime('now', 'localtime') || '.000000', 0, NULL, NULL, NULL, NULL, NULL);
COMMIT;
SQL
chmod 0644 "$DB"
echo "seed: $DB: VPS task $ID running on node demo-runner ($RUNNER:$PORT); task $((ID + 1)) completed, task $((ID + 2)) is a command task"
