#!/usr/bin/env bash
# Installs and verifies what the end-to-end tests run against: OpenSSH (sshd as the
# VPS, ssh as the user's client), rsync/socat for transfer tests, sqlite3 to inspect
# databases, systemd's socket activation helper, and a venv with HakuRiver 0.3.0 as
# the reference peer (its DB models, host proxy and `hakuriver.ssh` client).
#
# Idempotent; run as root. Used by CI and by developers:
#   sudo bash tests/setup-deps.sh
# Environment:
#   HAKURIVER_VENV   where the venv lives (default /opt/hakuriver-venv)
#   HAKURIVER_PYTHON python used to create it (default: the first python3 >= 3.10 that has venv)
# Exits non-zero, naming the missing piece, if anything cannot be installed or verified.
set -euo pipefail

VENV="${HAKURIVER_VENV:-/opt/hakuriver-venv}"
HAKURIVER_VERSION="0.3.0"
# Debian package -> a file it must provide.
declare -A PACKAGES=(
    [openssh-server]=/usr/sbin/sshd
    [openssh-client]=/usr/bin/ssh-keygen
    [rsync]=/usr/bin/rsync
    [socat]=/usr/bin/socat
    [sqlite3]=/usr/bin/sqlite3
    [python3-venv]=/usr/share/doc/python3-venv
    [procps]=/usr/bin/pgrep
    [iproute2]=/usr/bin/ss
    [haproxy]=/usr/sbin/haproxy
    [systemd]=/usr/bin/systemd-socket-activate
    [nix-bin]=/usr/bin/nix-instantiate
    [util-linux]=/usr/bin/unshare
)

die() {
    echo "setup-deps: ERROR: $*" >&2
    exit 1
}
say() { echo "setup-deps: $*"; }

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get install and $VENV need it)"

missing=()
for pkg in "${!PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
fi
for pkg in "${!PACKAGES[@]}"; do
    [[ -e ${PACKAGES[$pkg]} ]] || die "package $pkg is installed but ${PACKAGES[$pkg]} is missing"
done

# sshd needs its privilege separation directory; it lives on tmpfs, so recreate it.
install -d -m 0755 /run/sshd
# `sshd -V` prints the version; `-t` with a throwaway config proves it can parse and load keys.
sshd_version=$(/usr/sbin/sshd -V 2>&1 | head -n1) || true
[[ $sshd_version == OpenSSH* ]] || die "/usr/sbin/sshd -V did not report OpenSSH: $sshd_version"
check_dir=$(mktemp -d)
trap 'rm -rf "$check_dir"' EXIT
ssh-keygen -q -t ed25519 -N '' -f "$check_dir/host_key" >/dev/null || die "ssh-keygen cannot make a key"
printf 'HostKey %s\nUsePAM no\nStrictModes no\n' "$check_dir/host_key" >"$check_dir/sshd_config"
/usr/sbin/sshd -t -f "$check_dir/sshd_config" || die "sshd -t rejects a minimal config"
ssh -V >/dev/null 2>&1 || die "ssh -V failed"
say "ok: $sshd_version; $(ssh -V 2>&1)"

pick_python() {
    local candidates=()
    [[ -n ${HAKURIVER_PYTHON:-} ]] && candidates+=("$HAKURIVER_PYTHON")
    candidates+=(python3 /usr/bin/python3 python3.11 python3.12)
    local py
    for py in "${candidates[@]}"; do
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

venv_ok() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import hakuriver.db.models, hakuriver.core.ssh_proxy.host, zmq, peewee
assert md.version("hakuriver") == "0.3.0", md.version("hakuriver")
EOF
}

if [[ -x $VENV/bin/python ]] && venv_ok; then
    say "venv $VENV already has hakuriver==$HAKURIVER_VERSION"
else
    python=$(pick_python) || die "no python3 (>= 3.10, with venv and ensurepip) found; set HAKURIVER_PYTHON"
    say "creating venv $VENV with $python ($("$python" --version 2>&1))"
    rm -rf "$VENV"
    "$python" -m venv "$VENV" || die "$python -m venv $VENV failed"
    # The 0.3.0 wheel imports zmq in its CLI without declaring pyzmq.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "hakuriver==$HAKURIVER_VERSION" pyzmq || die "pip install hakuriver==$HAKURIVER_VERSION pyzmq failed"
fi

"$VENV/bin/python" - <<'EOF' || die "venv $VENV cannot import HakuRiver's models, host proxy or client deps"
import importlib.metadata as md
import hakuriver.db.models as models
import hakuriver.core.ssh_proxy.host as host
import zmq, peewee
assert md.version("hakuriver") == "0.3.0", "hakuriver version " + md.version("hakuriver")
assert hasattr(models, "initialize_database") and hasattr(host, "handle_connection")
print("setup-deps: ok: hakuriver", md.version("hakuriver"), "peewee", peewee.__version__, "pyzmq", zmq.__version__)
EOF
say "all dependencies present"
