# Container image of the HakuRiver Host SSH proxy (`hakuriver-ssh-proxy`), with the
# `hakuriver-ssh` client beside it.
#
#   docker build -t hakuriver-ssh-proxy .
#   docker run -d -p 8002:8002 \
#     -v /var/lib/hakuriver:/var/lib/hakuriver:ro \
#     -v /etc/hakuriver/config.toml:/etc/hakuriver/config.toml:ro \
#     hakuriver-ssh-proxy
#
# Plain `docker build` is enough: no BuildKit feature is used. Dependencies are
# compiled in their own layer (manifests + stub crates first, sources after), so
# a source-only change rebuilds just the workspace crates.
# See docs/container.md and deploy/docker-compose.yml.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- manifests
# Every Cargo.toml of the workspace plus Cargo.lock, and nothing else, whatever
# the members are: the build stage copies this tree, so its dependency layer is
# reused until a manifest or the lock file changes.
FROM ${RUST_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock -delete && \
    find . -depth -type d -empty -delete

# ---------------------------------------------------------------- build
FROM ${RUST_IMAGE} AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Manifests only, with empty stand-ins for every package's targets (and for a
#    target whose path a manifest names explicitly: `path = "....rs"`); then
#    compile the dependencies alone. The stubs are removed afterwards, so none
#    of them survives where the real tree has no such file.
COPY --from=manifests /src/ ./
RUN set -eu; \
    find . -mindepth 2 -name Cargo.toml | while read -r manifest; do \
      m=$(dirname "$manifest"); \
      mkdir -p "$m/src"; \
      echo '//! build stub' > "$m/src/lib.rs"; \
      echo 'fn main() {}' > "$m/src/main.rs"; \
      sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" | \
      while read -r p; do mkdir -p "$m/$(dirname "$p")"; echo 'fn main() {}' > "$m/$p"; done; \
    done; \
    cargo build --release --locked -p hakuriver-ssh-proxy -p hakuriver-ssh; \
    find . -path ./target -prune -o -type f -name '*.rs' -exec rm -f {} +; \
    rm -f target/release/hakuriver-ssh-proxy target/release/hakuriver-ssh

# 2. The real sources. COPY keeps the files' modification times, which can be
#    older than the stub build: touch them so cargo sees them as changed.
COPY . .
RUN set -eu; \
    find . -path ./target -prune -o -type f -name '*.rs' -exec touch {} +; \
    cargo build --release --locked -p hakuriver-ssh-proxy -p hakuriver-ssh; \
    install -D -m 0755 target/release/hakuriver-ssh-proxy /out/usr/local/bin/hakuriver-ssh-proxy; \
    install -D -m 0755 target/release/hakuriver-ssh /out/usr/local/bin/hakuriver-ssh

# ---------------------------------------------------------------- runtime
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hakuriver-ssh-proxy" \
      org.opencontainers.image.description="HakuRiver Host SSH proxy: routes REQUEST_TUNNEL <task_id> to the VPS task's sshd" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/hakuriver-ssh/hakuriver-ssh" \
      org.opencontainers.image.documentation="https://github.com/hakuriver-ssh/hakuriver-ssh/blob/main/docs/container.md"

# ca-certificates: the client's TLS mode trusts the system roots by default.
# The proxy runs as an unprivileged user; its state directory (the self-signed
# TLS certificate lives there) is a volume it owns.
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log; \
    groupadd --system --gid 10001 hakuriver; \
    useradd --system --uid 10001 --gid hakuriver --home-dir /var/lib/hakuriver-ssh-proxy \
            --no-create-home --shell /usr/sbin/nologin hakuriver; \
    install -d -m 0750 -o hakuriver -g hakuriver /var/lib/hakuriver-ssh-proxy; \
    install -d -m 0755 /etc/hakuriver /var/lib/hakuriver

COPY --from=build /out/ /
COPY deploy/config/image-default.toml /etc/hakuriver/config.toml

USER hakuriver:hakuriver
WORKDIR /var/lib/hakuriver-ssh-proxy
VOLUME ["/var/lib/hakuriver-ssh-proxy"]
EXPOSE 8002
STOPSIGNAL SIGTERM
# `health` makes a real REQUEST_TUNNEL 0 exchange with the main listener of the
# config it finds (/etc/hakuriver/config.toml) and expects "Task 0 not found":
# the daemon answers AND reads its database. It works with any mounted config,
# so it stays the image's check. With the admin listener configured
# ([ssh_proxy.admin] listen = ["127.0.0.1:9102"]), GET /readyz also turns 503
# while the proxy drains after SIGTERM: deploy/docker-compose.yml probes it with
# bash's /dev/tcp (the image has no curl), and an orchestrator should use it as
# its readiness probe (an httpGet needs a non-loopback listen address and
# allow_remote = true; see docs/replicas.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["hakuriver-ssh-proxy", "health", "--timeout", "3"]
ENTRYPOINT ["hakuriver-ssh-proxy"]
CMD ["serve", "--config", "/etc/hakuriver/config.toml"]
