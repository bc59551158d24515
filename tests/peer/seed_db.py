"""Writes HakuRiver 0.3.0 database rows with HakuRiver's own peewee models.

Run with the HakuRiver venv's python. Reads one JSON document from the file named by
argv[2] (or stdin when argv[2] is absent or "-"):

    python seed_db.py DB_PATH [SPEC.json]

    {"nodes":  [{"hostname": "n1", "url": "http://127.0.0.1:8001", "status": "online"}],
     "tasks":  [{"task_id": 1, "task_type": "vps", "status": "running",
                 "assigned_node": "n1", "ssh_port": 2222}],
     "update_nodes": [{"hostname": "n1", "status": "offline"}],
     "update_tasks": [{"task_id": 1, "status": "completed"}],
     "delete_tasks": [1]}

Creation (nodes/tasks) inserts rows, filling the other NOT NULL columns the way
HakuRiver's Host does; any column name of the models may be given to override.
update_* change only the given columns of existing rows (an unknown row is an error).
The database and its tables are created by `initialize_database` when missing.
Prints "OK" on stdout on success; exits 1 with a message on stderr otherwise.
"""

import contextlib
import datetime
import io
import json
import sys

from hakuriver.db import models
from hakuriver.db.models import Node, Task


def node_row(spec):
    row = {
        "url": "http://127.0.0.1:8001",
        "total_cores": 4,
        "last_heartbeat": datetime.datetime.now(),
        "status": "online",
        "cpu_percent": 1.5,
        "memory_percent": 20.0,
        "memory_used_bytes": 1 << 30,
        "memory_total_bytes": 8 << 30,
        "numa_topology": None,
        "gpu_info": json.dumps([]),
    }
    row.update(spec)
    return row


def task_row(spec):
    task_id = spec["task_id"]
    vps = spec.get("task_type", "vps") == "vps"
    row = {
        "task_type": "vps",
        "command": "vps" if vps else "/bin/true",
        "arguments": json.dumps([]),
        "env_vars": json.dumps({}),
        "required_cores": 1,
        "required_gpus": json.dumps([]),
        "status": "running",
        "stdout_path": f"/shared/task_outputs/{task_id}.out",
        "stderr_path": f"/shared/task_errors/{task_id}.err",
        "submitted_at": datetime.datetime.now(),
        "started_at": datetime.datetime.now(),
        "assignment_suspicion_count": 0,
        "systemd_unit_name": f"hakuriver-vps-{task_id}" if vps else None,
    }
    # assigned_node is the node's hostname (the foreign key's primary key).
    row.update(spec)
    return row


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: seed_db.py DB_PATH [SPEC.json|-]")
    db_path = sys.argv[1]
    source = sys.argv[2] if len(sys.argv) > 2 else "-"
    spec = json.load(sys.stdin if source == "-" else open(source))

    # initialize_database prints a banner on stdout; keep stdout for our own answer.
    with contextlib.redirect_stdout(io.StringIO()):
        models.initialize_database(db_path)

    with models.db.atomic():
        for node in spec.get("nodes", []):
            Node.insert(**node_row(node)).execute()
        for task in spec.get("tasks", []):
            Task.insert(**task_row(task)).execute()
        for change in spec.get("update_nodes", []):
            change = dict(change)
            hostname = change.pop("hostname")
            if Node.update(**change).where(Node.hostname == hostname).execute() != 1:
                raise LookupError(f"no node {hostname!r}")
        for change in spec.get("update_tasks", []):
            change = dict(change)
            task_id = change.pop("task_id")
            if Task.update(**change).where(Task.task_id == task_id).execute() != 1:
                raise LookupError(f"no task {task_id}")
        for task_id in spec.get("delete_tasks", []):
            Task.delete().where(Task.task_id == task_id).execute()
    models.db.close()
    print("OK")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one clear line for the Rust harness to show
        print(f"seed_db.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
