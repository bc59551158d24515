#!/usr/bin/env bash
# Static check of the units in packaging/systemd with `systemd-analyze verify`.
#
# Usage: tests/systemd/verify-units.sh [PROXY_BINARY]
#   PROXY_BINARY  what ExecStart= should run; default target/debug/hakuriver-ssh-proxy
#                 (under $CARGO_TARGET_DIR if set), or /bin/true when it is not built.
# verify refuses units whose ExecStart binary does not exist, so the units are copied
# to a temporary directory with /usr/bin/hakuriver-ssh-proxy rewritten. Any line that
# systemd-analyze prints (warning or error) fails the check: a clean unit prints nothing.
# Needs systemd-analyze (Debian: apt-get install systemd); missing it is a failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
units_dir=$top/packaging/systemd

if [[ $# -ge 1 ]]; then
  bin=$1
else
  bin=${CARGO_TARGET_DIR:-$top/target}/debug/hakuriver-ssh-proxy
  [[ -x $bin ]] || bin=/bin/true
fi
[[ -x $bin ]] || { echo "verify-units: $bin is not executable" >&2; exit 1; }
bin=$(realpath "$bin")

command -v systemd-analyze >/dev/null || {
  echo "verify-units: systemd-analyze not found (Debian: apt-get install systemd)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/verify-units.XXXXXX")
trap 'rm -rf "$work"' EXIT

units=()
for f in "$units_dir"/*.service "$units_dir"/*.socket; do
  [[ -e $f ]] || continue
  sed "s#/usr/bin/hakuriver-ssh-proxy#$bin#g" "$f" >"$work/$(basename "$f")"
  units+=("$work/$(basename "$f")")
done
[[ ${#units[@]} -gt 0 ]] || { echo "verify-units: no units in $units_dir" >&2; exit 1; }

# --man=no: the Documentation= URL is not a local man page. --recursive-errors=no: only
# our units are judged, not the distribution's sockets.target & co. SYSTEMD_LOG_LEVEL
# keeps notices from the manager itself out of the way while still printing warnings.
out=$(cd "$work" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
        --recursive-errors=no "${units[@]}" 2>&1) && rc=0 || rc=$?
if [[ $rc -ne 0 || -n $out ]]; then
  printf '%s\n' "$out" >&2
  echo "verify-units: FAILED (exit $rc) for ${units[*]##*/}" >&2
  exit 1
fi
echo "verify-units: OK: ${units[*]##*/} (ExecStart=$bin)"
