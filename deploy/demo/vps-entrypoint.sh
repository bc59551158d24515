#!/bin/sh
# Start the demo VPS: fresh host keys, root's authorized_keys from
# $AUTHORIZED_KEYS and/or /run/demo/authorized_keys, then sshd in the foreground
# (PID 1, logging to stderr so `docker compose logs vps` shows logins).
set -eu
ssh-keygen -A >/dev/null
install -d -m 0700 /root/.ssh
: >/root/.ssh/authorized_keys
[ -z "${AUTHORIZED_KEYS:-}" ] || printf '%s\n' "$AUTHORIZED_KEYS" >>/root/.ssh/authorized_keys
[ ! -r /run/demo/authorized_keys ] || cat /run/demo/authorized_keys >>/root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
if ! grep -q . /root/.ssh/authorized_keys; then
  echo "vps: no public key given (set AUTHORIZED_KEYS or mount /run/demo/authorized_keys): nobody can log in" >&2
fi
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e "$@"
