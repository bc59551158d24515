#!/usr/bin/env bash
# Offline checks of the Nix files (what can be verified without nixpkgs; see
# flake.nix and nixos-module/ for what they describe).
#
#  1. `nix-instantiate --parse` on every .nix file in the repository: any error fails.
#  2. If nixpkgs' lib is available, the NixOS modules are evaluated with the team's
#     nix-eval-module.sh against the cases in nixos-module/tests/*eval-cases.nix
#     (option types, generated units, hardening, assertions that must fire).
#     lib is available when NIXPKGS_LIB (a dir with lib/default.nix) or NIXPKGS_LIB_GIT
#     (the git dir of github:nix-community/nixpkgs.lib) is set, or that git dir is in
#     ../.mirror beside the repository. Without it step 2 is reported as not run.
#
# Env: NIX_EVAL_MODULE  path of nix-eval-module.sh (default ../shared/tools/ beside the
#                       repository); required only for step 2.
# nix-instantiate is required (Debian: apt-get install nix-bin); missing it is a failure.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"

command -v nix-instantiate >/dev/null || {
  echo "nix/check: nix-instantiate not found (Debian: apt-get install nix-bin)" >&2; exit 1; }

# --- 1. parse -----------------------------------------------------------------------
mapfile -t files < <(find . \( -path ./target -o -path ./.git -o -path ./result \) -prune -o \
                          -name '*.nix' -type f -print | sort)
[[ ${#files[@]} -gt 0 ]] || { echo "nix/check: no .nix files found" >&2; exit 1; }
failed=0
for f in "${files[@]}"; do
  if ! nix-instantiate --parse "$f" >/dev/null; then
    echo "nix/check: PARSE ERROR in $f" >&2
    failed=1
  fi
done
[[ $failed -eq 0 ]] || exit 1
echo "nix/check: parsed ${#files[@]} .nix files"

# --- 2. module evaluation -------------------------------------------------------------
mirror=${NIXPKGS_LIB_GIT:-$top/../.mirror/nix-community+nixpkgs.lib/repo}
if [[ -z ${NIXPKGS_LIB:-} && ! -d $mirror ]]; then
  echo "nix/check: module evaluation NOT RUN: nixpkgs lib not available (set NIXPKGS_LIB_GIT)"
  exit 0
fi
tool=${NIX_EVAL_MODULE:-$top/../shared/tools/nix-eval-module.sh}
[[ -x $tool ]] || { echo "nix/check: nixpkgs lib is available but $tool is missing (set NIX_EVAL_MODULE)" >&2; exit 1; }
[[ -z ${NIXPKGS_LIB:-} ]] && export NIXPKGS_LIB_GIT=$mirror

run_cases() {  # module cases
  local log
  log=$(mktemp "${TMPDIR:-/tmp}/nix-check.XXXXXX")
  if EVAL_RAW=1 "$tool" "$1" "$2" >"$log.json" 2>"$log"; then
    grep '^case ' "$log" | sed 's/^/  /'
    rm -f "$log" "$log.json"
  else
    cat "$log" >&2
    echo "nix/check: evaluation FAILED: $1 with $2" >&2
    rm -f "$log" "$log.json"
    return 1
  fi
}
echo "nix/check: nixos-module/default.nix"
run_cases nixos-module/default.nix nixos-module/tests/eval-cases.nix
echo "nix/check: nixos-module/client.nix"
run_cases nixos-module/client.nix nixos-module/tests/client-eval-cases.nix
echo "nix/check: OK"
