#!/usr/bin/env bash
# tests/docker/run.sh — build the real Dockerfile and run the compose deployment
# (docker-compose.yml + the demo override) for real, then log in by task ID with
# our client from this host, through the containerised proxy, into the demo VPS
# container's sshd: over plain TCP and over TLS with the pinned fingerprint of the
# proxy's self-signed certificate.
#
# Run as root (CI does). Everything missing is installed or started; anything that
# cannot be is a FAILURE (exit 1), never a skip. Only local containers and
# 127.0.0.1 ports are used. Cleans up (compose down -v, test images, dangling
# images) on every exit.
#
# Environment:
#   HAKURIVER_SSH_CLIENT   our client binary (default: target/{release,debug}/hakuriver-ssh
#                          under $CARGO_TARGET_DIR or the repo; built with cargo if absent)
#   BASE_IMAGES_SCRIPT     default: <repo>/../shared/tools/local-base-images.sh
#   COMPOSE                compose command (default: docker-compose, else `docker compose`)
#   MAX_IMAGE_MB           runtime image size limit (default 100)
#   WAIT_SECS              timeout for each wait (dockerd, healthy; default 120)
#   NO_COLD_BUILD=1        skip the --no-cache build (local reruns)
#   KEEP=1                 leave images and the compose project behind (debugging)
set -Eeuo pipefail

export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0   # plain builder: no BuildKit needed
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel)
BASE_IMAGES_SCRIPT=${BASE_IMAGES_SCRIPT:-$REPO/../shared/tools/local-base-images.sh}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-100}
WAIT_SECS=${WAIT_SECS:-120}
RUN_ID="hrssh-ci-$$"
IMAGE="hakuriver-ssh-proxy:$RUN_ID"
DEMO_IMAGE="hakuriver-ssh-demo-vps:$RUN_ID"
WORK=$(mktemp -d /tmp/hakuriver-ssh-docker.XXXXXX)
STARTED_DOCKERD=""
COMPOSE_UP=""

say() { printf '[docker-test %(%H:%M:%S)T] %s\n' -1 "$*"; }
fail() { say "FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------ cleanup
dc() { $COMPOSE -p "$RUN_ID" -f "$REPO/deploy/docker-compose.yml" -f "$REPO/deploy/docker-compose.demo.yml" "$@"; }
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ -n "$COMPOSE_UP" ]; then
    say "logs of the compose project (exit $rc):"
    dc logs --no-color --tail=60 2>&1 | sed 's/^/  | /'
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    say "KEEP=1: leaving project $RUN_ID, images $IMAGE $DEMO_IMAGE and $WORK"
  else
    [ -z "$COMPOSE_UP" ] || dc down -v --remove-orphans >"$WORK/down.log" 2>&1 ||
      { say "compose down failed:"; cat "$WORK/down.log"; }
    docker image rm -f "$IMAGE" "$IMAGE-warm" "$DEMO_IMAGE" >/dev/null 2>&1
    docker image prune -f >/dev/null 2>&1
    rm -rf "$WORK"
  fi
  if [ -n "$STARTED_DOCKERD" ]; then
    say "stopping the dockerd this script started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null
    timeout 30 tail --pid="$STARTED_DOCKERD" -f /dev/null
  fi
  [ "$rc" = 0 ] && say "PASS" || say "FAILED (exit $rc)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ engine
[ "$(id -u)" = 0 ] || fail "run as root (installs docker, starts dockerd)"
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  say "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_pkgs[@]}" >"$WORK/apt.log" 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${need_pkgs[@]}" >"$WORK/apt.log" 2>&1; } ||
    { tail -20 "$WORK/apt.log"; fail "cannot install ${need_pkgs[*]}"; }
fi
if [ -z "${COMPOSE:-}" ]; then
  if command -v docker-compose >/dev/null 2>&1; then COMPOSE=docker-compose
  elif docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
  else fail "no docker compose"; fi
fi

if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  setsid dockerd >"$WORK/dockerd.log" 2>&1 </dev/null &
  STARTED_DOCKERD=$!
  deadline=$((SECONDS + WAIT_SECS))
  until docker info >/dev/null 2>&1; do
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; fail "dockerd exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -20 "$WORK/dockerd.log"; fail "dockerd not ready after ${WAIT_SECS}s"; }
    sleep 0.2
  done
fi
say "docker: server $(docker version -f '{{.Server.Version}}'), compose: $($COMPOSE version --short 2>/dev/null || $COMPOSE version | head -1)"

# ------------------------------------------------------------------ base images
[ -f "$BASE_IMAGES_SCRIPT" ] || fail "missing $BASE_IMAGES_SCRIPT (the shared/ folder beside the repo)"
t0=$(now)
bash "$BASE_IMAGES_SCRIPT" >"$WORK/base-images.log" 2>&1 ||
  { tail -30 "$WORK/base-images.log"; fail "local-base-images.sh failed"; }
say "local base images ready in $(elapsed "$t0" "$(now)") s"

# ------------------------------------------------------------------ client binary
CLIENT=${HAKURIVER_SSH_CLIENT:-}
if [ -z "$CLIENT" ]; then
  for d in "${CARGO_TARGET_DIR:-}" "$REPO/target"; do
    [ -n "$d" ] || continue
    for p in release debug; do
      if [ -x "$d/$p/hakuriver-ssh" ]; then CLIENT="$d/$p/hakuriver-ssh"; break 2; fi
    done
  done
fi
if [ -z "$CLIENT" ]; then
  command -v cargo >/dev/null 2>&1 || fail "no hakuriver-ssh client binary and no cargo to build it"
  say "building the client (cargo build -p hakuriver-ssh)"
  (cd "$REPO" && cargo build --locked -p hakuriver-ssh) >"$WORK/cargo.log" 2>&1 ||
    { tail -30 "$WORK/cargo.log"; fail "cargo build of the client failed"; }
  CLIENT="${CARGO_TARGET_DIR:-$REPO/target}/debug/hakuriver-ssh"
fi
[ -x "$CLIENT" ] || fail "client $CLIENT is not executable"
say "client: $CLIENT"

# ------------------------------------------------------------------ build
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "${NO_COLD_BUILD:-0}" = 1 ]; then cache_flag=(); kind="cached"; else cache_flag=(--no-cache); kind="cold"; fi
say "docker build ($kind) of $REPO/Dockerfile"
t0=$(now)
docker build --force-rm "${cache_flag[@]}" --build-arg REVISION="$REVISION" -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; fail "docker build failed"; }
COLD_SECS=$(elapsed "$t0" "$(now)")

# Warm: the same build after a source-only change (a copy of the context with one
# line appended to a source file): only the workspace crates recompile.
mkdir -p "$WORK/ctx"
tar -C "$REPO" --exclude=./target --exclude=./.git --exclude=./tests/target -cf - . | tar -C "$WORK/ctx" -xf -
printf '\n// docker warm-build probe %s\n' "$RUN_ID" >>"$WORK/ctx/crates/proxy/src/main.rs"
t0=$(now)
docker build --force-rm --build-arg REVISION="$REVISION" -t "$IMAGE-warm" "$WORK/ctx" >"$WORK/build-warm.log" 2>&1 ||
  { tail -40 "$WORK/build-warm.log"; fail "warm docker build failed"; }
WARM_SECS=$(elapsed "$t0" "$(now)")
# (the legacy builder wraps the build's stderr in colour escapes: strip them)
sed 's/\x1b\[[0-9;]*m//g' "$WORK/build-warm.log" >"$WORK/build-warm.txt"
grep -Eq 'Compiling +hakuriver-ssh-proxy ' "$WORK/build-warm.txt" || fail "warm build did not recompile the proxy"
if grep -Eq 'Compiling +tokio ' "$WORK/build-warm.txt"; then fail "warm build recompiled dependencies (layer cache broken)"; fi
docker image rm -f "$IMAGE-warm" >/dev/null

SIZE_BYTES=$(docker image inspect -f '{{.Size}}' "$IMAGE")
SIZE_MB=$(awk -v b="$SIZE_BYTES" 'BEGIN { printf "%.1f", b / 1000000 }')
say "build time: $kind ${COLD_SECS} s, warm (source change) ${WARM_SECS} s; image $IMAGE: ${SIZE_MB} MB"
awk -v b="$SIZE_BYTES" -v m="$MAX_IMAGE_MB" 'BEGIN { exit !(b <= m * 1000000) }' ||
  fail "runtime image is ${SIZE_MB} MB, over ${MAX_IMAGE_MB} MB"

# The image's contract: non-root, port, healthcheck, entrypoint, labels, binaries.
user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
case "$user" in ''|root|0|0:*|root:*) fail "image runs as root (User='$user')" ;; esac
docker image inspect -f '{{json .Config.ExposedPorts}}' "$IMAGE" | grep -q '"8002/tcp"' || fail "8002 not exposed"
docker image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE" | grep -q 'hakuriver-ssh-proxy","health' ||
  fail "no 'hakuriver-ssh-proxy health' HEALTHCHECK"
[ "$(docker image inspect -f '{{json .Config.Entrypoint}}' "$IMAGE")" = '["hakuriver-ssh-proxy"]' ] || fail "unexpected ENTRYPOINT"
[ "$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$IMAGE")" = "$REVISION" ] ||
  fail "OCI revision label missing"
docker run --rm --entrypoint hakuriver-ssh-proxy "$IMAGE" --help >"$WORK/proxy-help.txt" 2>&1 ||
  { cat "$WORK/proxy-help.txt"; fail "hakuriver-ssh-proxy --help fails in the image"; }
docker run --rm --entrypoint hakuriver-ssh "$IMAGE" --help >"$WORK/client-help.txt" 2>&1 ||
  { cat "$WORK/client-help.txt"; fail "hakuriver-ssh --help fails in the image"; }

# ------------------------------------------------------------------ compose up (demo)
ssh-keygen -q -t ed25519 -N '' -C "hakuriver-ssh docker test" -f "$WORK/id_ed25519"
export HAKURIVER_SSH_IMAGE="$IMAGE" HAKURIVER_DEMO_IMAGE="$DEMO_IMAGE"
export HAKURIVER_SSH_PUBLISH_IP=127.0.0.1 HAKURIVER_SSH_PORT=0 HAKURIVER_SSH_TLS_PORT=0
export HAKURIVER_SSH_HEALTH_INTERVAL=1s HAKURIVER_DEMO_TASK_ID=42
HAKURIVER_DEMO_AUTHORIZED_KEYS=$(cat "$WORK/id_ed25519.pub"); export HAKURIVER_DEMO_AUTHORIZED_KEYS
dc config -q || fail "compose files do not validate"
say "building the demo VPS image"
dc build vps >"$WORK/build-vps.log" 2>&1 || { tail -30 "$WORK/build-vps.log"; fail "demo image build failed"; }

say "compose up (proxy + demo vps + seed)"
COMPOSE_UP=1
t0=$(now)
dc up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose up failed"; }
cid=$(dc ps -q proxy)
[ -n "$cid" ] || fail "no proxy container"
deadline=$((SECONDS + WAIT_SECS))
while :; do
  status=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
  case "$status" in
    healthy) break ;;
    unhealthy) docker inspect -f '{{json .State.Health.Log}}' "$cid"; fail "proxy container turned unhealthy" ;;
  esac
  [ "$(docker inspect -f '{{.State.Running}}' "$cid")" = true ] || fail "proxy container exited"
  [ "$SECONDS" -lt "$deadline" ] || fail "proxy not healthy after ${WAIT_SECS}s (status $status)"
  sleep 0.2
done
UP_SECS=$(elapsed "$t0" "$(now)")
say "compose up -> proxy healthy in ${UP_SECS} s"
docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$cid" | grep . | tail -1 | sed 's/^/  health: /'
[ "$(docker inspect -f '{{.Config.User}}' "$cid")" != root ] || fail "proxy container runs as root"
docker inspect -f '{{range .Mounts}}{{.Destination}}={{.RW}} {{end}}' "$cid" | grep -q '/var/lib/hakuriver=false' ||
  fail "the DB volume is not mounted read-only"
seed_rc=$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -q seed)")
[ "$seed_rc" = 0 ] || fail "seed exited $seed_rc"

host_port() { dc port proxy "$1" | sed -n 's/^127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p'; }
PORT=$(host_port 8002); TLS_PORT=$(host_port 8003)
[ -n "$PORT" ] && [ -n "$TLS_PORT" ] || fail "ports not published on 127.0.0.1 ($(dc port proxy 8002), $(dc port proxy 8003))"
say "proxy published on 127.0.0.1:$PORT (plain) and 127.0.0.1:$TLS_PORT (TLS)"

# ------------------------------------------------------------------ ssh by task ID
# The VPS host key, pinned: the client names the host hakuriver-<ID> for ssh
# (HostKeyAlias; the tunnel's local port varies), so known_hosts uses that name.
hostkey=$(dc exec -T vps cat /etc/ssh/ssh_host_ed25519_key.pub | awk '{print $1, $2}')
[ -n "$hostkey" ] || fail "cannot read the demo VPS host key"
echo "hakuriver-42 $hostkey" >"$WORK/known_hosts"
mkdir -p "$WORK/home"
SSH_OPTS=(-i "$WORK/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
          -o UserKnownHostsFile="$WORK/known_hosts" -o LogLevel=ERROR)
REMOTE='echo "hello from $(hostname) as $(id -un)"; cat /etc/debian_version; echo "sshd: $SSH_CONNECTION"'
client() { HOME="$WORK/home" timeout "$WAIT_SECS" "$CLIENT" --host 127.0.0.1 "$@"; }

session() { # session LABEL CLIENT-ARGS... : run REMOTE on task 42, show and check the transcript
  local label=$1; shift
  local cmd=(client "$@" 42 "${SSH_OPTS[@]}" "$REMOTE")
  say "$label session:"
  printf '  $ hakuriver-ssh --host 127.0.0.1'; printf ' %q' "$@" 42; printf ' -i id_ed25519 -o ... %q\n' "$REMOTE"
  local rc=0
  "${cmd[@]}" >"$WORK/$label.out" 2>"$WORK/$label.err" || rc=$?
  sed 's/^/  /' "$WORK/$label.out"; sed 's/^/  stderr: /' "$WORK/$label.err"
  [ "$rc" = 0 ] || fail "$label session exited $rc"
  grep -qx 'hello from vps as root' "$WORK/$label.out" || fail "$label session: unexpected output"
  grep -q '^12\.' "$WORK/$label.out" || fail "$label session: not the bookworm VPS container"
}

session plain --proxy-port "$PORT"

# A refusal read from the seeded DB: task 43 is a completed VPS task.
rc=0
client --proxy-port "$PORT" 43 "${SSH_OPTS[@]}" true >"$WORK/refused.out" 2>&1 || rc=$?
say "task 43 (completed): exit $rc: $(tr '\n' ' ' <"$WORK/refused.out")"
[ "$rc" = 255 ] || fail "client should exit 255 for a completed task, got $rc"
grep -q 'not active' "$WORK/refused.out" || fail "the proxy's refusal does not reach the user"

# TLS: the self-signed certificate from the proxy's state volume, pinned.
FP=$(dc exec -T proxy hakuriver-ssh-proxy --config /etc/hakuriver/config.toml fingerprint | tr -d '\r')
printf '%s\n' "$FP" | grep -Eqx 'sha256:[0-9a-f]{64}' || fail "unexpected fingerprint output: '$FP'"
say "proxy certificate: $FP"
session tls --proxy-port "$TLS_PORT" --tls --fingerprint "$FP"

# A wrong pin must be refused before anything reaches ssh.
WRONG="sha256:$(printf '0%.0s' $(seq 64))"
rc=0
client --proxy-port "$TLS_PORT" --tls --fingerprint "$WRONG" 42 "${SSH_OPTS[@]}" true >"$WORK/pin.out" 2>&1 || rc=$?
say "wrong pin: exit $rc: $(tr '\n' ' ' <"$WORK/pin.out")"
[ "$rc" = 255 ] || fail "client should exit 255 on a fingerprint mismatch, got $rc"
grep -q "${FP#sha256:}" "$WORK/pin.out" || fail "pin mismatch message does not show the server's fingerprint"

# ------------------------------------------------------------------ down
t0=$(now)
dc down -v --remove-orphans >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "compose down failed"; }
COMPOSE_UP=""
say "compose down -v in $(elapsed "$t0" "$(now)") s"
say "SUMMARY: build $kind ${COLD_SECS} s, warm ${WARM_SECS} s, image ${SIZE_MB} MB, up->healthy ${UP_SECS} s"
