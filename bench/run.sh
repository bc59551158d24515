#!/usr/bin/env bash
# One run of the issue-8 benchmark: our proxy (release build) beside direct loopback,
# socat, haproxy (TCP mode) and HakuRiver 0.3.0's Python proxy, then the resumable-tunnel
# section of issue 14 (about 40 s; `--skip resume` leaves it out) and a restart with
# 1,000 open tunnels and the fd store (`--skip restart`). Prints the machine,
# the load, and markdown tables (stdout); progress goes to stderr.
#
#   bash bench/run.sh [bench flags, e.g. --bulk-mb 256 --skip ssh,idle]
#
# Needs: socat, haproxy, OpenSSH, the HakuRiver venv (tests/setup-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# The tools the selected workloads need: all of them for a full run.
targets="direct,ours,ours-tls,ours-idle,ours-admin,socat,haproxy,python" skip=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --targets) targets="${args[i + 1]:-}" ;;
        --skip) skip="${args[i + 1]:-}" ;;
    esac
done
has() { [[ ",$1," == *",$2,"* ]]; }
tools=()
has "$targets" socat && tools+=(socat)
has "$targets" haproxy && tools+=(haproxy)
has "$skip" ssh || tools+=(sshd ssh)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
        echo "missing $tool: apt-get install -y socat haproxy openssh-server openssh-client" >&2
        exit 1
    }
done

# 10,000 idle tunnels need ~20,000 descriptors in the proxy and as many in the bench.
# Raise the soft limit as far as the hard limit allows and tell the bench how far it got.
ulimit -n "$(ulimit -Hn)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p hakuriver-ssh-proxy -p hakuriver-ssh -p hakuriver-ssh-bench >&2

echo "## Machine"
echo
echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
echo "- memory: $(free -m | awk '/^Mem:/ {print $2}') MiB; kernel $(uname -r)"
echo "- RLIMIT_NOFILE: $(ulimit -n)"
echo "- load before: $(uptime | sed 's/.*load average/load average/')"
echo "- peers: $(socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/socat \1/p'), $(haproxy -v 2>/dev/null | head -1 | awk '{print "haproxy", $3}'), $(${HAKURIVER_VENV:-/opt/hakuriver-venv}/bin/pip show hakuriver 2>/dev/null | sed -n 's/^Version: /hakuriver /p'), $(ssh -V 2>&1)"
echo
"$CARGO_TARGET_DIR/release/hakuriver-ssh-bench" "$@"
echo
echo "- load after: $(uptime | sed 's/.*load average/load average/')"
