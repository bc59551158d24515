#!/usr/bin/env bash
# Quickstart: the real binaries, end to end, on this machine.
#
#   1. builds hakuriver-ssh-proxy and hakuriver-ssh (release);
#   2. starts a real OpenSSH sshd on loopback playing a HakuRiver VPS container
#      (its own host key, key-only auth, an unprivileged port);
#   3. writes a HakuRiver database (HakuRiver 0.3.0's exact schema) with one online
#      runner and one running VPS task whose ssh_port is that sshd;
#   4. starts the proxy on 127.0.0.1 (the OS picks the port) reading that database;
#   5. runs `hakuriver-ssh <task_id> -- <command>` through it, then the same in
#      ProxyCommand mode with plain `ssh`, and prints what the VPS answered.
# Everything runs on loopback and is cleaned up on exit. Needs root only to install
# missing packages (openssh-server, openssh-client, sqlite3).
#
#   bash scripts/quickstart.sh --kohakuriver
# does the same on a KohakuRiver 1.0 database (deploy/demo/seed.sh's variant: user
# "demo" owns VPS task 42, named "demo"; task 44 belongs to another user) with the
# proxy enforcing KohakuRiver's access rule over TLS: `list`, a session by name, and
# the refusals for another user's task and for no token.
set -euo pipefail
MODE=${1:-hakuriver}
case "$MODE" in hakuriver | --kohakuriver) ;; *) echo "usage: $0 [--kohakuriver]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

TASK_ID=7323718749301768192
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need=()
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v sqlite3 >/dev/null || need+=(sqlite3)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "building (cargo build --release)"
cargo build --release --locked -q -p hakuriver-ssh-proxy -p hakuriver-ssh
BIN=$PWD/target/release

work=$(mktemp -d /tmp/hakuriver-quickstart.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The port of the proxy's first listener, once its log says it listens (10 s at most).
wait_for_proxy() {
    for _ in $(seq 100); do
        grep -q 'listening addr=' "$work/proxy.log" && break
        sleep 0.1
    done
    local addr
    addr=$(grep -o 'listening addr=[^ ]*' "$work/proxy.log" | head -n1 | cut -d= -f2)
    [[ -n $addr ]] || { cat "$work/proxy.log" >&2; echo "proxy did not start" >&2; exit 1; }
    echo "${addr##*:}"
}

say "starting a VPS stand-in: OpenSSH sshd on 127.0.0.1"
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$work/authorized_keys"
vps_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/sshd_config" <<EOF
ListenAddress 127.0.0.1:$vps_port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers $(id -un)
UsePAM no
StrictModes no
PidFile $work/sshd.pid
EOF
install -d -m 0755 /run/sshd 2>/dev/null || true
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
pids+=($!)

if [[ $MODE == --kohakuriver ]]; then
    TOKEN=kr-quickstart-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
    say "writing a KohakuRiver 1.0 database (deploy/demo/seed.sh)"
    DB="$work/kohakuriver.db" DEMO_SCHEMA=kohakuriver DEMO_TOKEN="$TOKEN" DEMO_RUNNER_HOST=127.0.0.1 \
        DEMO_SSH_PORT="$vps_port" sh deploy/demo/seed.sh >&2
    say "starting hakuriver-ssh-proxy: [ssh_proxy.auth] mode = \"kohakuriver\", TLS"
    printf '[ssh_proxy.auth]\nmode = "kohakuriver"\n' >"$work/proxy.toml"
    "$BIN/hakuriver-ssh-proxy" serve --config "$work/proxy.toml" --bind 127.0.0.1 --port 0 --tls \
        --state-dir "$work/state" --db "$work/kohakuriver.db" --log-format text 2>"$work/proxy.log" &
    pids+=($!)
    proxy_port=$(wait_for_proxy)
    fp=$("$BIN/hakuriver-ssh-proxy" fingerprint --config "$work/proxy.toml" --tls --state-dir "$work/state")
    ssh_opts=(-i "$work/user_key" -o "UserKnownHostsFile=$work/known_hosts" -o StrictHostKeyChecking=accept-new
        -o BatchMode=yes -o LogLevel=ERROR)
    client=("$BIN/hakuriver-ssh" --host 127.0.0.1 --proxy-port "$proxy_port" --tls --fingerprint "$fp" --user "$(id -un)")
    export KOHAKURIVER_TOKEN=$TOKEN
    say "KOHAKURIVER_TOKEN=... hakuriver-ssh --tls list"
    "${client[@]}" list
    say "hakuriver-ssh --tls demo -- <command>   (by name, as its owner)"
    "${client[@]}" demo "${ssh_opts[@]}" -- 'echo "hello from the VPS named demo: $(hostname)"'
    echo "exit status: $?" >&2
    say "hakuriver-ssh --tls 44   (another user's VPS)"
    set +e
    "${client[@]}" 44 "${ssh_opts[@]}" -- true
    echo "exit status: $?" >&2
    say "hakuriver-ssh 42 without a token"
    env -u KOHAKURIVER_TOKEN HOME="$work" "${client[@]}" 42 "${ssh_opts[@]}" -- true
    echo "exit status: $?" >&2
    set -e
    say "proxy log"
    cat "$work/proxy.log" >&2
    exit 0
fi

say "writing a HakuRiver database with VPS task $TASK_ID"
sqlite3 "$work/hakuriver.db" <<EOF
CREATE TABLE IF NOT EXISTS "node" ("hostname" VARCHAR(255) NOT NULL PRIMARY KEY, "url" VARCHAR(255) NOT NULL, "total_cores" INTEGER NOT NULL, "last_heartbeat" DATETIME NOT NULL, "status" VARCHAR(255) NOT NULL, "cpu_percent" REAL, "memory_percent" REAL, "memory_used_bytes" INTEGER, "memory_total_bytes" INTEGER, "current_avg_temp" REAL, "current_max_temp" REAL, "numa_topology" TEXT, "gpu_info" TEXT);
CREATE TABLE IF NOT EXISTS "task" ("task_id" INTEGER NOT NULL PRIMARY KEY, "task_type" VARCHAR(255) NOT NULL, "command" TEXT NOT NULL, "arguments" TEXT NOT NULL, "env_vars" TEXT NOT NULL, "required_cores" INTEGER NOT NULL, "required_gpus" TEXT NOT NULL, "status" VARCHAR(255) NOT NULL, "assigned_node_id" VARCHAR(255), "stdout_path" TEXT NOT NULL, "stderr_path" TEXT NOT NULL, "exit_code" INTEGER, "error_message" TEXT, "submitted_at" DATETIME NOT NULL, "started_at" DATETIME, "completed_at" DATETIME, "assignment_suspicion_count" INTEGER NOT NULL, "required_memory_bytes" INTEGER, "systemd_unit_name" VARCHAR(255), "target_numa_node_id" INTEGER, "batch_id" INTEGER, "ssh_port" INTEGER, FOREIGN KEY ("assigned_node_id") REFERENCES "node" ("hostname"));
INSERT INTO node (hostname, url, total_cores, last_heartbeat, status) VALUES ('runner-1', 'http://127.0.0.1:8001', 4, datetime('now'), 'online');
INSERT INTO task (task_id, task_type, command, arguments, env_vars, required_cores, required_gpus, status, assigned_node_id, stdout_path, stderr_path, submitted_at, assignment_suspicion_count, ssh_port)
VALUES ($TASK_ID, 'vps', '', '[]', '{}', 1, '[]', 'running', 'runner-1', '', '', datetime('now'), 0, $vps_port);
EOF

say "starting hakuriver-ssh-proxy"
"$BIN/hakuriver-ssh-proxy" serve --bind 127.0.0.1 --port 0 --db "$work/hakuriver.db" --log-format text \
    2>"$work/proxy.log" &
pids+=($!)
proxy_port=$(wait_for_proxy)
sed -n '1,3p' "$work/proxy.log" >&2

ssh_opts=(-i "$work/user_key" -o "UserKnownHostsFile=$work/known_hosts" -o StrictHostKeyChecking=accept-new
    -o BatchMode=yes -o LogLevel=ERROR)

say "hakuriver-ssh --host 127.0.0.1 --proxy-port $proxy_port --user $(id -un) $TASK_ID -- <command>"
"$BIN/hakuriver-ssh" --host 127.0.0.1 --proxy-port "$proxy_port" --user "$(id -un)" "$TASK_ID" \
    "${ssh_opts[@]}" -- 'echo "hello from the VPS: $(hostname), sshd on port ${SSH_CONNECTION##* }"'
echo "exit status: $?" >&2

say "ProxyCommand mode: ssh -o ProxyCommand='hakuriver-ssh --stdio %n' hakuriver-$TASK_ID"
ssh "${ssh_opts[@]}" -l "$(id -un)" \
    -o "ProxyCommand=$BIN/hakuriver-ssh --host 127.0.0.1 --proxy-port $proxy_port --stdio %n" \
    "hakuriver-$TASK_ID" 'echo "hello again, through ssh ProxyCommand"'
echo "exit status: $?" >&2

say "proxy log"
cat "$work/proxy.log" >&2
