# Demo "VPS task" container for deploy/docker-compose.demo.yml: a Debian
# userland running a real OpenSSH sshd on port 22, like the container a HakuRiver
# runner starts for a VPS task. Root logs in with the public key(s) given at run
# time (AUTHORIZED_KEYS variable and/or a file mounted at
# /run/demo/authorized_keys); no passwords.
# sqlite3 is here too: the same image seeds the demo database (seed.sh).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hakuriver-ssh-demo-vps" \
      org.opencontainers.image.description="Demo VPS task for hakuriver-ssh: sshd on port 22, key-only root login" \
      org.opencontainers.image.licenses="MIT"
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends openssh-server sqlite3 >/dev/null; \
    rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*; \
    printf '%s\n' 'PasswordAuthentication no' 'KbdInteractiveAuthentication no' \
        'PermitRootLogin prohibit-password' 'UseDNS no' >/etc/ssh/sshd_config.d/demo.conf
COPY vps-entrypoint.sh /usr/local/sbin/vps-entrypoint
EXPOSE 22
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=2s --timeout=3s --retries=15 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22 && head -c 4 <&3 | grep -q SSH-"]
ENTRYPOINT ["/usr/local/sbin/vps-entrypoint"]
