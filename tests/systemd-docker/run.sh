#!/usr/bin/env bash
# tests/systemd-docker/run.sh — the shipped systemd units under the REAL manager:
# Debian bookworm's systemd 252 as PID 1 in an unprivileged Docker container, with
# packaging/systemd/* installed unchanged plus one test-only drop-in
# (test-no-sandbox.conf: no DynamicUser=, no namespaces, which the container cannot give;
# the filesystem sandbox is therefore NOT exercised here), and the host-built proxy.
#
#  1. fd-store probe: what this systemd does with a service's stored descriptors on
#     `systemctl restart`, on a crash (SIGKILL + Restart=on-failure) and on `stop`,
#     whether it sets $FDSTORE, and with which LISTEN_FDNAMES it hands them back
#     (fdstore-probe.py; the proxy is not involved).
#  2. systemd-analyze verify of the shipped units by tests/systemd/verify-units.sh,
#     run inside the container.
#  3. Socket activation of the shipped hakuriver-ssh-proxy.socket, published on a free
#     127.0.0.1 port; an ssh upload (100 MB into a slow reader, sha256 checked) from this host
#     with our client as ProxyCommand (`hakuriver-ssh --stdio`), through the proxy, to an
#     OpenSSH sshd on this host (bound to the docker bridge's gateway address, the
#     runner in the task's database row). During the upload: `systemctl restart`, then
#     `kill -9` of the MainPID; each new process must adopt the open tunnel from the fd
#     store (journal line "adopted N tunnels"), and the upload must finish intact.
#     The journal's byte counts must follow the documented handover semantics.
#     Plain tunnels here (`--no-resume`): they survive the crash too.
#  3b. A resumable session (our client's default) across `systemctl restart`: its
#     session goes to the store at SIGTERM, the next process adopts it, the client
#     resumes, and a line typed after the restart still echoes through the same ssh.
#  4. `systemctl stop` with a tunnel open: the stored tunnel is closed (ssh ends).
#
# Run as root (CI does). Missing tools are installed (docker.io, openssh, socat,
# iproute2) or started (dockerd); whatever cannot be is a FAILURE (exit 1), never a skip.
# Only local images and 127.0.0.1 / docker-bridge addresses are used. Cleans up
# (container, image, sshd, dockerd if started here) on every exit.
#
# Environment:
#   HAKURIVER_SSH_PROXY    proxy binary to install (default: target/debug/hakuriver-ssh-proxy
#                          under $CARGO_TARGET_DIR or the repo; built by the caller)
#   HAKURIVER_SSH_CLIENT   client binary (default: target/debug/hakuriver-ssh, likewise)
#   HAKURIVER_VENV         HakuRiver 0.3.0 venv whose models write the test DB
#                          (default /opt/hakuriver-venv; tests/setup-deps.sh makes it)
#   BASE_IMAGES_SCRIPT     default: <repo>/../shared/tools/local-base-images.sh
#   UPLOAD_MB              size of the upload (default 100)
#   WAIT_SECS              timeout for each wait (default 60)
#   KEEP=1                 leave the container and image behind (debugging)
set -Eeuo pipefail

export DOCKER_BUILDKIT=0   # plain builder: local base image tags, no BuildKit needed
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel)
BASE_IMAGES_SCRIPT=${BASE_IMAGES_SCRIPT:-$REPO/../shared/tools/local-base-images.sh}
HAKURIVER_VENV=${HAKURIVER_VENV:-/opt/hakuriver-venv}
UPLOAD_MB=${UPLOAD_MB:-100}
WAIT_SECS=${WAIT_SECS:-60}
RUN_ID="hrssh-systemd-$$"
IMAGE="hakuriver-ssh-systemd-test:$RUN_ID"
TASK_ID=42
WORK=$(mktemp -d /tmp/hakuriver-ssh-systemd.XXXXXX)
STARTED_DOCKERD="" CID="" SSHD_PGID="" BG_PIDS=()
T_START=$(date +%s.%N)

say() { printf '[systemd-docker %(%H:%M:%S)T] %s\n' -1 "$*"; }
fail() { say "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
indent() { sed 's/^/  | /'; }

# wait_until WHAT CMD...: run CMD until it succeeds; FAIL after WAIT_SECS.
wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${WAIT_SECS}s waiting for $what"
    sleep 0.05
  done
}

# ------------------------------------------------------------------ cleanup
in_ct() { docker exec "$CID" "$@"; }
proxy_journal() { # the proxy's journal without systemd 252's cgroup-v1 noise in containers
  in_ct journalctl -u hakuriver-ssh-proxy.service --no-pager -o short-precise 2>&1 |
    grep -v 'Failed to get cgroup ID' || true
}
cleanup() {
  local rc=$?
  set +e
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ "$rc" != 0 ] && [ -n "$CID" ]; then
    say "journal of hakuriver-ssh-proxy.service (exit $rc):"
    proxy_journal | tail -40 | indent
    say "systemctl --failed:"; in_ct systemctl --failed --no-pager 2>&1 | indent
    [ -s "$WORK/sshd.log" ] && { say "sshd log:"; tail -20 "$WORK/sshd.log" | indent; }
  fi
  [ -z "$SSHD_PGID" ] || kill -- "-$SSHD_PGID" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then
    say "KEEP=1: leaving container ${CID:-none}, image $IMAGE and $WORK"
  else
    [ -z "$CID" ] || docker rm -f "$CID" >/dev/null 2>&1
    docker image rm -f "$IMAGE" >/dev/null 2>&1
    docker image prune -f >/dev/null 2>&1
    rm -rf "$WORK"
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    say "stopping the dockerd this script started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null
    timeout 30 tail --pid="$STARTED_DOCKERD" -f /dev/null
  fi
  [ "$rc" = 0 ] && say "PASS in $(elapsed "$T_START" "$(now)") s" || say "FAILED (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ host tools
[ "$(id -u)" = 0 ] || fail "run as root (installs docker, starts dockerd, runs sshd)"
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
command -v socat >/dev/null 2>&1 || need_pkgs+=(socat)
command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  say "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_pkgs[@]}" >"$WORK/apt.log" 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_pkgs[@]}" >"$WORK/apt.log" 2>&1; } ||
    { tail -20 "$WORK/apt.log"; fail "cannot install ${need_pkgs[*]}"; }
fi
PY=$HAKURIVER_VENV/bin/python
[ -x "$PY" ] || fail "$PY is missing: run tests/setup-deps.sh (creates the HakuRiver 0.3.0 venv)"

find_bin() { # find_bin NAME ENV_VALUE: the caller's build of NAME
  local name=$1 given=$2 d
  if [ -n "$given" ]; then printf '%s' "$given"; return; fi
  for d in "${CARGO_TARGET_DIR:-}" "$REPO/target"; do
    [ -n "$d" ] && [ -x "$d/debug/$name" ] && { printf '%s' "$d/debug/$name"; return; }
  done
  printf '%s' "$REPO/target/debug/$name"
}
PROXY=$(find_bin hakuriver-ssh-proxy "${HAKURIVER_SSH_PROXY:-}")
CLIENT=$(find_bin hakuriver-ssh "${HAKURIVER_SSH_CLIENT:-}")
for b in "$PROXY" "$CLIENT"; do
  [ -x "$b" ] || fail "$b is not built (run: cargo build --workspace)"
done
say "proxy: $PROXY; client: $CLIENT"

# ------------------------------------------------------------------ engine
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  setsid dockerd >"$WORK/dockerd.log" 2>&1 </dev/null &
  STARTED_DOCKERD=$!
  dockerd_up() {
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; fail "dockerd exited"; }
    docker info >/dev/null 2>&1
  }
  wait_until "dockerd" dockerd_up
fi
say "docker: server $(docker version -f '{{.Server.Version}}')"

[ -f "$BASE_IMAGES_SCRIPT" ] || fail "missing $BASE_IMAGES_SCRIPT (the shared/ folder beside the repo)"
t0=$(now)
SKIP_RUST=1 bash "$BASE_IMAGES_SCRIPT" >"$WORK/base-images.log" 2>&1 ||
  { tail -30 "$WORK/base-images.log"; fail "local-base-images.sh failed"; }
say "local debian:bookworm-slim ready in $(elapsed "$t0" "$(now)") s"

# ------------------------------------------------------------------ the runner's sshd (host)
# The container reaches this host at the bridge's gateway address; sshd listens there
# only, on a port the kernel picks (socat binds :0 and execs `sshd -i` per connection).
GW=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
if [ -z "$GW" ]; then  # the default bridge often lists no Gateway: its interface has it
  br=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
  GW=$(ip -4 -o addr show dev "${br:-docker0}" | awk '{ sub("/.*", "", $4); print $4; exit }')
fi
[[ $GW =~ ^[0-9.]+$ ]] || fail "no IPv4 gateway on docker's bridge network ('$GW')"
mkdir -p "$WORK/sshd" "$WORK/remote" "$WORK/home" /run/sshd
ssh-keygen -q -t ed25519 -N '' -C "systemd-docker host key" -f "$WORK/sshd/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C "systemd-docker client" -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/sshd/authorized_keys"
cat >"$WORK/sshd/sshd_config" <<EOF
HostKey $WORK/sshd/host_ed25519
AuthorizedKeysFile $WORK/sshd/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
UseDNS no
PrintMotd no
LogLevel VERBOSE
EOF
/usr/sbin/sshd -t -f "$WORK/sshd/sshd_config" || fail "sshd rejects the test config"
setsid socat "TCP-LISTEN:0,bind=$GW,reuseaddr,fork" \
  "EXEC:/usr/sbin/sshd -i -E $WORK/sshd.log -f $WORK/sshd/sshd_config,nofork" </dev/null 2>"$WORK/socat.log" &
SSHD_PGID=$!
sshd_port() {
  kill -0 "$SSHD_PGID" 2>/dev/null || { cat "$WORK/socat.log"; fail "socat (sshd listener) exited"; }
  SSHD_PORT=$(ss -Htlnp "src $GW" | sed -n "s/^.*$GW:\([0-9]*\) .*pid=$SSHD_PGID,.*$/\1/p" | head -1)
  [ -n "$SSHD_PORT" ]
}
wait_until "the sshd listener" sshd_port
say "runner sshd (OpenSSH $(/usr/sbin/sshd -V 2>&1 | sed -n 's/^OpenSSH_\([^,]*\).*/\1/p')) on $GW:$SSHD_PORT"

# ------------------------------------------------------------------ HakuRiver DB
# Written by HakuRiver 0.3.0's own models (tests/peer/seed_db.py): one online node whose
# runner is this host, one running VPS task on it pointing at the sshd above.
mkdir -p "$WORK/db"
printf '{"nodes": [{"hostname": "runner", "url": "http://%s:8001", "status": "online"}],
 "tasks": [{"task_id": %d, "task_type": "vps", "status": "running", "assigned_node": "runner", "ssh_port": %d}]}' \
  "$GW" "$TASK_ID" "$SSHD_PORT" | "$PY" "$REPO/tests/peer/seed_db.py" "$WORK/db/hakuriver.db" - >"$WORK/seed.out" 2>&1 ||
  { cat "$WORK/seed.out"; fail "seed_db.py failed"; }
chmod 0755 "$WORK/db"; chmod 0644 "$WORK/db/hakuriver.db"

# ------------------------------------------------------------------ image
ctx=$WORK/ctx
mkdir -p "$ctx/units"
cp "$SCRIPT_DIR"/{Dockerfile,config.toml,test-no-sandbox.conf,fdstore-probe.py,fdstore-probe.socket,fdstore-probe.service} "$ctx/"
cp "$REPO"/packaging/systemd/*.service "$REPO"/packaging/systemd/*.socket "$ctx/units/"
cp "$PROXY" "$ctx/hakuriver-ssh-proxy"
t0=$(now)
docker build --force-rm -t "$IMAGE" "$ctx" >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; fail "docker build failed"; }
BUILD_SECS=$(elapsed "$t0" "$(now)")
say "image $IMAGE built in $BUILD_SECS s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1 / 1e6}') MB)"

# ------------------------------------------------------------------ boot systemd
t0=$(now)
CID=$(docker run -d --name "$RUN_ID" --hostname hrssh-systemd -e container=docker \
  --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
  -v "$WORK/db:/var/lib/hakuriver:ro" -p 127.0.0.1::8002 "$IMAGE")
booted() {
  [ "$(docker inspect -f '{{.State.Running}}' "$CID")" = true ] || { docker logs "$CID" 2>&1 | tail -20; fail "container exited"; }
  SYSTEM_STATE=$(in_ct systemctl is-system-running 2>/dev/null) || true
  case "$SYSTEM_STATE" in running|degraded) return 0 ;; *) return 1 ;; esac
}
wait_until "systemctl is-system-running (last: ${SYSTEM_STATE:-none})" booted
SYSTEMD_VERSION=$(in_ct systemctl --version | head -1)
say "$SYSTEMD_VERSION: PID 1 $(in_ct cat /proc/1/comm), system $SYSTEM_STATE in $(elapsed "$t0" "$(now)") s"
[ "$SYSTEM_STATE" = running ] || in_ct systemctl --failed --no-pager | indent

# ------------------------------------------------------------------ 1. fd-store probe
# One client connection held open across the probe's restart and crash: each process
# generation writes one line to it; stop must close it (EOF). Facts, not the proxy.
say "fd store probe (fdstore-probe.service, FileDescriptorStoreMax=8):"
in_ct systemctl start fdstore-probe.socket
PROBE_OUT=$WORK/probe-client.out
timeout "$WAIT_SECS" docker exec "$CID" python3 -u -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", 9999))
for line in s.makefile():
    print(line, end="")
print("EOF")' >"$PROBE_OUT" 2>&1 &
PROBE_CLIENT=$!; BG_PIDS+=("$PROBE_CLIENT")
probe_lines() { [ "$(grep -c '^probe:' "$PROBE_OUT")" -ge "$1" ]; }
probe_field() { sed -n "$1p" <(grep '^probe:' "$PROBE_OUT") | tr ' ' '\n' | sed -n "s/^$2=//p"; }
probe_pid() { in_ct systemctl show -p MainPID --value fdstore-probe.service; }
wait_until "the probe's first line" probe_lines 1
in_ct systemctl restart fdstore-probe.service
wait_until "the probe's line after restart" probe_lines 2
old=$(probe_pid)
in_ct sh -c 'kill -9 "$1"' _ "$old"
wait_until "the probe's line after SIGKILL + Restart=on-failure" probe_lines 3
n_store=$(in_ct systemctl show -p NFileDescriptorStore --value fdstore-probe.service)
in_ct systemctl stop fdstore-probe.service 2>/dev/null
probe_eof() { grep -qx EOF "$PROBE_OUT"; }
wait_until "EOF on the probe's stored connection after stop" probe_eof
n_store_stopped=$(in_ct systemctl show -p NFileDescriptorStore --value fdstore-probe.service)
indent <"$PROBE_OUT"
for i in 1 2 3; do
  probe_field "$i" LISTEN_FDNAMES | tr ':' '\n' | sort | tr '\n' ' ' >"$WORK/names.$i"
done
[ "$(cat "$WORK/names.1")" = "listen " ] || fail "first start: expected only 'listen', got $(cat "$WORK/names.1")"
for i in 2 3; do
  [ "$(cat "$WORK/names.$i")" = "conn listen pipe-r pipe-w state " ] ||
    fail "start $i: stored fds not handed back by name: $(cat "$WORK/names.$i")"
done
# Each generation bumps the memfd's counter and reads 4 of the pipe's 8 bytes: the same
# objects come back only if the counter goes on and the pipe runs dry on the third.
[ "$(probe_field 2 state)/$(probe_field 2 pipe)" = 2/ight ] || fail "restart: not the same memfd/pipe"
[ "$(probe_field 3 state)/$(probe_field 3 pipe)" = 3/empty ] || fail "crash restart: not the same memfd/pipe"
FDSTORE_ENV=$(probe_field 1 FDSTORE)
say "  restart: kept (same memfd, pipe bytes, connection); SIGKILL+Restart=on-failure: kept;"
say "  order received: $(probe_field 2 LISTEN_FDNAMES); NFileDescriptorStore=$n_store, after stop $n_store_stopped (conn closed: EOF)"
say "  \$FDSTORE in the service: $FDSTORE_ENV"
[ "$n_store_stopped" = 0 ] || fail "stop left $n_store_stopped fds in the store"

# ------------------------------------------------------------------ 2. verify the units
in_ct mkdir -p /tmp/repo/tests/systemd /tmp/repo/packaging
docker cp "$REPO/tests/systemd/verify-units.sh" "$CID:/tmp/repo/tests/systemd/verify-units.sh"
docker cp "$REPO/packaging/systemd" "$CID:/tmp/repo/packaging/systemd"
in_ct bash /tmp/repo/tests/systemd/verify-units.sh /usr/bin/hakuriver-ssh-proxy >"$WORK/verify.out" 2>&1 ||
  { indent <"$WORK/verify.out"; fail "systemd-analyze verify of the shipped units fails under $SYSTEMD_VERSION"; }
say "inside the container: $(cat "$WORK/verify.out")"
for u in "$REPO"/packaging/systemd/*.service "$REPO"/packaging/systemd/*.socket; do
  in_ct cat "/etc/systemd/system/${u##*/}" | cmp -s - "$u" || fail "installed ${u##*/} differs from the shipped one"
done

# ------------------------------------------------------------------ 3. socket activation
in_ct systemctl start hakuriver-ssh-proxy.socket
PORT=$(docker port "$CID" 8002/tcp | sed -n 's/^127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' | head -1)
[ -n "$PORT" ] || fail "8002 not published on 127.0.0.1 ($(docker port "$CID" 8002/tcp))"
[ "$(in_ct systemctl is-active hakuriver-ssh-proxy.service)" != active ] ||
  fail "the service runs before any connection (socket activation expected)"
say "hakuriver-ssh-proxy.socket listening, published on 127.0.0.1:$PORT"

echo "hakuriver-$TASK_ID $(awk '{print $1, $2}' "$WORK/sshd/host_ed25519.pub")" >"$WORK/known_hosts"
SSH_BASE=(ssh -F /dev/null -i "$WORK/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
     -o UserKnownHostsFile="$WORK/known_hosts" -o LogLevel=ERROR -o ServerAliveInterval=0)
SSH=("${SSH_BASE[@]}" -o "ProxyCommand=$CLIENT --host 127.0.0.1 --proxy-port $PORT --no-resume --stdio %n"
     -l root "hakuriver-$TASK_ID")
# The same with a resumable tunnel (our client's default): the session, not the client
# connection, goes to the store at SIGTERM, and the client resumes on the next process.
SSH_RESUMABLE=("${SSH_BASE[@]}" -o "ProxyCommand=$CLIENT -v --host 127.0.0.1 --proxy-port $PORT --stdio %n"
     -l root "hakuriver-$TASK_ID")
export HOME=$WORK/home   # no ~/.hakuriver or ~/.ssh of the caller's

out=$(timeout "$WAIT_SECS" "${SSH[@]}" 'echo "hello from $(hostname) via $SSH_CONNECTION"') ||
  fail "first ssh through the socket-activated proxy failed"
say "first login (starts the service): $out"
[ "$(in_ct systemctl is-active hakuriver-ssh-proxy.service)" = active ] || fail "service not active after a connection"

adoptions() { proxy_journal | grep -cE 'adopted [1-9][0-9]* tunnels? from the fd store' || true; }
last_adoption() { proxy_journal | grep -E 'adopted [1-9][0-9]* tunnels? from the fd store' | tail -1; }
adopted_one() { # the newest adoption line, by the current MainPID, names exactly one tunnel
  last_adoption | grep -qE "hakuriver-ssh-proxy\[$(main_pid)\]: adopted 1 tunnels? from the fd store" ||
    fail "expected the new process to adopt the one open tunnel: $(last_adoption)"
}
main_pid() { in_ct systemctl show -p MainPID --value hakuriver-ssh-proxy.service; }
remote_size() { stat -c %s "$WORK/remote/upload.bin" 2>/dev/null || echo 0; }
size_at_least() { [ "$(remote_size)" -ge $(($1 << 20)) ]; }
new_adoption() { [ "$(adoptions)" -gt "$1" ]; }
proxy_restarted() { # proxy_restarted OLD_PID: a new main process is up and ready
  local pid; pid=$(main_pid)
  [ "$pid" != 0 ] && [ "$pid" != "$1" ] && [ "$(in_ct systemctl is-active hakuriver-ssh-proxy.service)" = active ]
}

# The upload: UPLOAD_MB of random data, sent as fast as ssh takes it, into a receiver
# on the runner that drains 1 MiB per 20 ms. The pacing sits at the far end on purpose:
# every buffer on the way (the proxy's sockets and splice pipes included) stays full, so
# bytes are in flight in the proxy whenever it restarts. It is pacing only: every step
# below waits for the remote file's size or the journal, never for time. The last MiB
# waits on a gate opened after both restarts, so the tunnel is certainly still open then.
head -c $((UPLOAD_MB << 20)) /dev/urandom >"$WORK/upload.bin"
SUM=$(sha256sum <"$WORK/upload.bin" | cut -c1-64)
cat >"$WORK/receiver.py" <<'EOF_PY'
import sys, time
with open(sys.argv[1], "wb", buffering=0) as out:
    while chunk := sys.stdin.buffer.read(1 << 20):
        out.write(chunk)
        time.sleep(0.02)
EOF_PY
mkfifo "$WORK/gate" "$WORK/upload.fifo"
feeder() {
  head -c $(((UPLOAD_MB - 1) << 20)) "$WORK/upload.bin"
  read -r _ <"$WORK/gate"
  tail -c $((1 << 20)) "$WORK/upload.bin"
}
t_up=$(now)
feeder >"$WORK/upload.fifo" &
BG_PIDS+=("$!")
timeout $((WAIT_SECS * 3)) "${SSH[@]}" "$PY $WORK/receiver.py $WORK/remote/upload.bin" \
  <"$WORK/upload.fifo" 2>"$WORK/ssh-upload.err" &
UPLOAD=$!; BG_PIDS+=("$UPLOAD")

MARK1=$((UPLOAD_MB / 4)) MARK2=$((UPLOAD_MB * 11 / 20))
wait_until "the upload to pass ${MARK1} MiB" size_at_least "$MARK1"
pid0=$(main_pid); a0=$(adoptions)
say "upload at $(( $(remote_size) >> 20 )) MiB: systemctl restart hakuriver-ssh-proxy (MainPID $pid0)"
t0=$(now)
timeout "$WAIT_SECS" docker exec "$CID" systemctl restart hakuriver-ssh-proxy.service ||
  fail "systemctl restart failed or hung"
wait_until "the restarted proxy to be active" proxy_restarted "$pid0"
wait_until "an adoption line after the restart" new_adoption "$a0"
adopted_one
say "  restarted in $(elapsed "$t0" "$(now)") s, MainPID $(main_pid): $(last_adoption | cut -d' ' -f4-)"

wait_until "the upload to pass ${MARK2} MiB after the restart" size_at_least "$MARK2"
pid1=$(main_pid); a1=$(adoptions)
say "upload at $(( $(remote_size) >> 20 )) MiB: kill -9 $pid1 (Restart=on-failure)"
t0=$(now)
in_ct sh -c 'kill -9 "$1"' _ "$pid1"
wait_until "the proxy to come back after SIGKILL" proxy_restarted "$pid1"
wait_until "an adoption line after the crash" new_adoption "$a1"
adopted_one
pid_crash=$(main_pid)
say "  back in $(elapsed "$t0" "$(now)") s, MainPID $(main_pid): $(last_adoption | cut -d' ' -f4-)"

timeout "$WAIT_SECS" bash -c 'echo go >"$1"' _ "$WORK/gate" || fail "the feeder never reached its last MiB"
rc=0; wait "$UPLOAD" || rc=$?
UPLOAD_SECS=$(elapsed "$t_up" "$(now)")
[ "$rc" = 0 ] || { indent <"$WORK/ssh-upload.err"; fail "ssh upload exited $rc"; }
got=$(sha256sum <"$WORK/remote/upload.bin" | cut -c1-64)
[ "$got" = "$SUM" ] || fail "upload corrupted: sha256 $got, sent $SUM ($(remote_size) bytes)"
say "upload of $UPLOAD_MB MiB done in $UPLOAD_SECS s across restart + crash: ssh exit 0, sha256 $SUM matches"

# The structured journal fields of the tunnel lines. Counts carry over a clean handover
# (the record rewritten at SIGTERM); after SIGKILL the record still holds what that
# handover wrote, so the bytes the killed process moved are not counted (documented in
# README.md, "Restarts and upgrades"): the checks below hold the proxy to exactly that.
tunnel_fields() {
  in_ct journalctl -u hakuriver-ssh-proxy.service -o json --no-pager | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("MESSAGE") in ("tunnel opened", "tunnel adopted from the fd store", "tunnel closed"):
        keys = ("_PID", "MESSAGE", "TASK_ID", "BYTES_UP", "BYTES_DOWN", "HANDOVERS", "DURATION_MS")
        print(" ".join(k + "=" + str(e.get(k, "-")).replace(" ", "_") for k in keys))'
}
tunnel_fields >"$WORK/tunnels.txt" || fail "cannot read the journal's tunnel fields"
say "tunnel lines with their journal fields:"
indent <"$WORK/tunnels.txt"
up_of() { grep -E "^_PID=$1 MESSAGE=$2 " "$WORK/tunnels.txt" | sed -n 's/^.* BYTES_UP=\([0-9]*\) .*$/\1/p' | tail -1; }
up_restart=$(up_of "$pid1" tunnel_adopted_from_the_fd_store)
up_crash=$(up_of "$pid_crash" tunnel_adopted_from_the_fd_store)
up_closed=$(up_of "$pid_crash" tunnel_closed)
[ "${up_restart:-0}" -ge $((MARK1 << 20)) ] ||
  fail "after the restart the record says BYTES_UP=${up_restart:-none}, less than the ${MARK1} MiB already uploaded"
[ "${up_crash:-x}" = "$up_restart" ] ||
  fail "after SIGKILL the record should hold the last handover's count ($up_restart), got ${up_crash:-none}"
[ "${up_closed:-0}" -gt "$up_restart" ] || fail "the closing line does not count on from the adopted record"
say "  counters: handed over at restart $up_restart, after SIGKILL $up_crash (the killed process's bytes uncounted), closed at $up_closed"

# ------------------------------------------------------------------ 3b. a resumable session
# An interactive-style session (a remote `cat` echoing lines from a FIFO this script
# holds open) across `systemctl restart`: the proxy stores the session (group r<n>),
# the next process adopts it and the client resumes; a line written after the restart
# comes back through the same ssh.
mkfifo "$WORK/res.in"
exec {RES_HOLD}<>"$WORK/res.in"
# (ssh must not inherit the script's write end, or closing it would not end the session)
timeout "$WAIT_SECS" "${SSH_RESUMABLE[@]}" 'echo open; exec cat' <"$WORK/res.in" >"$WORK/res.out" 2>"$WORK/res.err" {RES_HOLD}>&- &
RES=$!; BG_PIDS+=("$RES")
res_line() { grep -qx "$1" "$WORK/res.out"; }
wait_until "the resumable session" res_line open
echo "before the restart" >&"$RES_HOLD"
wait_until "the echo before the restart" res_line "before the restart"
pid3=$(main_pid); a3=$(adoptions)
timeout "$WAIT_SECS" docker exec "$CID" systemctl restart hakuriver-ssh-proxy.service || fail "restart (resumable) failed"
wait_until "an adoption line for the resumable session" new_adoption "$a3"
adopted_one
proxy_journal | grep -qE "hakuriver-ssh-proxy\[$(main_pid)\]: resumable tunnel adopted from the fd store" ||
  fail "the adopted tunnel is not the resumable one: $(last_adoption)"
res_resumed() { grep -q 'tunnel resumed after' "$WORK/res.err"; }
wait_until "the client to resume on the new process" res_resumed
echo "after the restart" >&"$RES_HOLD"
wait_until "the echo after the restart" res_line "after the restart"
exec {RES_HOLD}>&-
rc=0; wait "$RES" || rc=$?
[ "$rc" = 0 ] || fail "the resumable session ended with $rc: $(cat "$WORK/res.err")"
say "resumable session across systemctl restart (MainPID $pid3 -> $(main_pid)): $(grep -o 'tunnel resumed after [0-9.]*s' "$WORK/res.err" | head -1); echo after the restart came back; ssh exit 0"
# The resume's structured journal fields: the task, the bytes replayed, the time offline.
resume_fields=$(in_ct journalctl -u hakuriver-ssh-proxy.service -o json --no-pager | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("MESSAGE") == "tunnel resumed":
        print(" ".join(k + "=" + str(e.get(k, "-")) for k in ("_PID", "MESSAGE", "TASK_ID", "GENERATION", "BYTES_REPLAYED", "OFFLINE_MS", "PEER")))' |
  tail -1)
say "  journal: $resume_fields"
echo "$resume_fields" | grep -qE "TASK_ID=$TASK_ID GENERATION=[0-9]+ BYTES_REPLAYED=[0-9]+ OFFLINE_MS=[0-9]+ PEER=[^ ]+:[0-9]+" ||
  fail "the resume's journal fields are missing: $resume_fields"

# ------------------------------------------------------------------ 4. stop closes them
# An idle session (its stdin a FIFO this script holds open), adopted across one more
# restart; `systemctl stop` must then end it: the manager closes the stored tunnel.
mkfifo "$WORK/idle.in"
exec {IDLE_HOLD}<>"$WORK/idle.in"
timeout "$WAIT_SECS" "${SSH[@]}" 'echo open; exec cat' <"$WORK/idle.in" >"$WORK/idle.out" 2>&1 &
IDLE=$!; BG_PIDS+=("$IDLE")
idle_open() { grep -qx open "$WORK/idle.out"; }
wait_until "the idle session" idle_open
pid2=$(main_pid); a2=$(adoptions)
timeout "$WAIT_SECS" docker exec "$CID" systemctl restart hakuriver-ssh-proxy.service || fail "restart (idle) failed"
wait_until "an adoption line for the idle session" new_adoption "$a2"
adopted_one
kill -0 "$IDLE" 2>/dev/null || fail "the idle session did not survive the restart"
n_store=$(in_ct systemctl show -p NFileDescriptorStore --value hakuriver-ssh-proxy.service)
t0=$(now)
in_ct systemctl stop hakuriver-ssh-proxy.service 2>/dev/null
rc=0; wait "$IDLE" || rc=$?
exec {IDLE_HOLD}>&-
say "systemctl stop with a tunnel in the store (NFileDescriptorStore=$n_store): ssh ended after $(elapsed "$t0" "$(now)") s, exit $rc; store now $(in_ct systemctl show -p NFileDescriptorStore --value hakuriver-ssh-proxy.service)"
[ "$rc" != 124 ] || fail "the idle session outlived systemctl stop"

# ------------------------------------------------------------------ journal
say "journalctl -u hakuriver-ssh-proxy (restart, crash, adoption, stop):"
proxy_journal | grep -E 'adopt|fd store|Started|Stopping|Stopped|Main process exited|Scheduled restart|Failed|tunnel (opened|closed)|listening|SIGTERM|shutting' | indent
say "SUMMARY: $SYSTEMD_VERSION; image build $BUILD_SECS s; upload ${UPLOAD_MB} MiB in $UPLOAD_SECS s across restart + kill -9; total $(elapsed "$T_START" "$(now)") s"
