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
#   DEMO_SCHEMA        hakuriver (default: HakuRiver 0.3.0's tables) or kohakuriver
#                      (KohakuRiver 1.0's tables, with a user "demo" who owns the
#                      running VPS task, named "demo", and an API token)
#   DEMO_TOKEN         with DEMO_SCHEMA=kohakuriver: the demo user's API token (only
#                      its SHA3-512 is stored, as KohakuRiver stores it)
set -eu
DB=${DB:-/var/lib/hakuriver/hakuriver.db}
ID=${DEMO_TASK_ID:-42}
RUNNER=${DEMO_RUNNER_HOST:-vps}
PORT=${DEMO_SSH_PORT:-22}
case "$ID$PORT" in *[!0-9]*) echo "seed: DEMO_TASK_ID and DEMO_SSH_PORT must be numbers" >&2; exit 1 ;; esac
case "$RUNNER" in *[!A-Za-z0-9.-]*) echo "seed: bad DEMO_RUNNER_HOST" >&2; exit 1 ;; esac
KEY=$(printf '%s\n' "${AUTHORIZED_KEYS:-}" | head -n 1 | sed "s/'/''/g")
mkdir -p "$(dirname "$DB")"
case "${DEMO_SCHEMA:-hakuriver}" in
hakuriver) ;;
kohakuriver)
    TOKEN=${DEMO_TOKEN:-}
    [ -n "$TOKEN" ] || { echo "seed: DEMO_SCHEMA=kohakuriver needs DEMO_TOKEN (the demo user's API token)" >&2; exit 1; }
    case "$TOKEN" in *[!A-Za-z0-9._~-]*) echo "seed: DEMO_TOKEN: use letters, digits and . _ ~ - only" >&2; exit 1 ;; esac
    NOW="datetime('now') || '.000000'"
    sqlite3 -bail "$DB" <<SQL
BEGIN;
CREATE TABLE IF NOT EXISTS "nodes" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "memory_total_bytes" INTEGER, "status" VARCHAR(255) NOT NULL, "last_heartbeat" DATETIME NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT, "vm_capable" INTEGER NOT NULL, "vfio_gpus" TEXT, "runner_version" VARCHAR(255));
CREATE TABLE IF NOT EXISTS "tasks" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "batch_id" INTEGER, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "required_memory_bytes" INTEGER, "target_numa_node_id" INTEGER, "name" VARCHAR(255), "owner_id" INTEGER, "approval_status" VARCHAR(255), "approved_by_id" INTEGER, "approved_at" DATETIME, "rejection_reason" TEXT, "status" VARCHAR(255) NOT NULL, "assigned_node" VARCHAR(255), "assignment_suspicion_count" INTEGER NOT NULL, "container_name" VARCHAR(255), "registry_image" VARCHAR(255), "docker_image_name" VARCHAR(255), "docker_privileged" INTEGER NOT NULL, "docker_mount_dirs" TEXT, "ssh_port" INTEGER, "vps_backend" VARCHAR(255) NOT NULL, "vm_image" VARCHAR(255), "vm_disk_size" VARCHAR(255), "vm_ip" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME);
CREATE TABLE IF NOT EXISTS "users" ("id" INTEGER NOT NULL PRIMARY KEY, "username" VARCHAR(50) NOT NULL, "display_name" VARCHAR(100), "password_hash" VARCHAR(255) NOT NULL, "is_active" INTEGER NOT NULL, "role" VARCHAR(20) NOT NULL, "created_at" DATETIME NOT NULL);
CREATE TABLE IF NOT EXISTS "tokens" ("id" INTEGER NOT NULL PRIMARY KEY, "user_id" INTEGER NOT NULL, "token_hash" VARCHAR(128) NOT NULL, "name" VARCHAR(100) NOT NULL, "last_used" DATETIME, "created_at" DATETIME NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE);
CREATE TABLE IF NOT EXISTS "vps_assignments" ("id" INTEGER NOT NULL PRIMARY KEY, "vps_task_id" INTEGER NOT NULL, "user_id" INTEGER NOT NULL, "created_at" DATETIME NOT NULL, FOREIGN KEY ("user_id") REFERENCES "users" ("id") ON DELETE CASCADE);
INSERT OR REPLACE INTO "users" VALUES (1, 'demo', 'Demo user', '!', 1, 'user', $NOW);
INSERT OR REPLACE INTO "tokens" VALUES (1, 1, lower(hex(sha3('$TOKEN', 512))), 'demo', NULL, $NOW);
INSERT OR REPLACE INTO "nodes" ("hostname", "url", "total_cores", "memory_total_bytes", "status", "last_heartbeat", "vm_capable")
  VALUES ('demo-runner', 'http://$RUNNER:8001', 2, 8589934592, 'online', $NOW, 0);
INSERT OR REPLACE INTO "tasks" ("task_id", "task_type", "command", "arguments", "env_vars", "required_cores", "required_gpus", "name", "owner_id", "status", "assigned_node", "assignment_suspicion_count", "docker_privileged", "ssh_port", "vps_backend", "stdout_path", "stderr_path", "submitted_at")
  VALUES
  ($ID, 'vps', '$KEY', '[]', '{}', 1, '[]', 'demo', 1, 'running', 'demo-runner', 0, 0, $PORT, 'docker', '', '', $NOW),
  ($ID + 1, 'vps', '$KEY', '[]', '{}', 1, '[]', 'old', 1, 'completed', 'demo-runner', 0, 0, $PORT, 'docker', '', '', $NOW),
  ($ID + 2, 'vps', '$KEY', '[]', '{}', 1, '[]', 'someone-else', 2, 'running', 'demo-runner', 0, 0, $PORT, 'docker', '', '', $NOW);
COMMIT;
SQL
    chmod 0644 "$DB"
    echo "seed: $DB (KohakuRiver 1.0): VPS task $ID \"demo\" running on node demo-runner ($RUNNER:$PORT), owned by user demo; task $((ID + 1)) completed; task $((ID + 2)) belongs to another user"
    exit 0
    ;;
*) echo "seed: DEMO_SCHEMA must be hakuriver or kohakuriver" >&2; exit 1 ;;
esac
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
