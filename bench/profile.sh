#!/usr/bin/env bash
# Profiles hakuriver-ssh-proxy under one benchmark workload with perf (software clock,
# since this VM has no hardware counters) and prints where its CPU time goes: by system
# call (children included: a loopback connect() carries the whole TCP handshake) and by
# function. The proxy is built with symbols in a separate target directory; the
# benchmark drives it exactly as `bench/run.sh` does.
#
#   bash bench/profile.sh setup       # tunnel setup, one at a time and 32 at once
#   bash bench/profile.sh tls-bulk    # 2 GiB each way through one TLS tunnel
#   bash bench/profile.sh bulk        # the same through plain TCP (splice)
#   bash bench/profile.sh resume-bulk      # 2 GiB each way, resumable tunnel, plain TCP
#   bash bench/profile.sh resume-tls-bulk  # the same over TLS
#   (the resume-* ones drive the tunnel with the hakuriver-ssh library, as the client does)
#
# Needs: linux-perf (apt-get install -y linux-perf), and what bench/run.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."

workload=${1:-setup}
case "$workload" in
    setup) flags=(--skip bulk,idle,stall,ssh --targets ours --seq 10000 --per-client 500) ;;
    tls-bulk) flags=(--skip setup,idle,stall,ssh --targets ours-tls --bulk-mb 2048) ;;
    bulk) flags=(--skip setup,idle,stall,ssh --targets ours --bulk-mb 4096) ;;
    resume-bulk | resume-tls-bulk)
        kind=plain-resumable
        [ "$workload" = resume-tls-bulk ] && kind=tls-resumable
        flags=(--targets direct --skip bulk,setup,idle,stall,ssh,resume-idle,resume-vanish,resume-stopped,resume-breaks
            --resume-rounds 1 --resume-kinds "$kind" --bulk-mb 2048) ;;
    *) echo "usage: $0 setup|tls-bulk|bulk|resume-bulk|resume-tls-bulk" >&2; exit 2 ;;
esac
command -v perf >/dev/null || { echo "missing perf: apt-get install -y linux-perf" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p hakuriver-ssh-bench >&2
profiled="${PROFILE_TARGET_DIR:-$PWD/target/profiling}"
CARGO_TARGET_DIR="$profiled" CARGO_PROFILE_RELEASE_STRIP=false \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release -p hakuriver-ssh-proxy >&2
proxy="$profiled/release/hakuriver-ssh-proxy"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$CARGO_TARGET_DIR/release/hakuriver-ssh-bench" --proxy-bin "$proxy" "${flags[@]}" \
    >"$out/bench.txt" 2>"$out/bench.err" &
bench=$!
pid=
for _ in $(seq 300); do
    pid=$(pgrep -f "^$proxy serve" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.1
done
[ -n "$pid" ] || { cat "$out/bench.err" >&2; echo "the proxy did not start" >&2; exit 1; }
sleep 1 # past start-up and warm-up
# Stops early (non-zero status) if the workload ends first; what was recorded counts.
perf record -q -e cpu-clock -F 4999 -g -p "$pid" -o "$out/perf.data" -- sleep 3 2>/dev/null || true
wait "$bench"

echo "## Profile: $workload ($(git rev-parse --short HEAD), $(date -u +%F))"
echo
echo '```'
grep '^|' "$out/bench.txt" | grep -v '^|---' || true
echo '```'
echo
echo "CPU time by system call (share of the proxy's samples, children included):"
echo
echo '```'
perf report -i "$out/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '\[k\] __x64_sys_|\[k\] do_syscall_64|\[k\] handle_softirqs' |
    awk '{printf "%8s  %s\n", $1, $NF}' | head -20
echo '```'
echo
echo "Functions with the most samples of their own:"
echo
echo '```'
perf report -i "$out/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | awk '{$2=$2; print}' | cut -c1-110 | head -25
echo '```'
