#!/usr/bin/env bash
# Runs every test of the project, installing what they need first. As root:
#   bash tests/run-all.sh
# Steps: dependencies (OpenSSH, SQLite, systemd tools, the HakuRiver 0.3.0 venv) →
# lints (cargo fmt --check, clippy -D warnings, rustdoc -D warnings) → build →
# unit, integration and end-to-end tests (cargo) → fuzz corpus replay → systemd unit
# verification → Nix parse/eval checks → Docker image and compose
# deployment → the shipped units under systemd 252 as PID 1 in a container (fd store
# across restart and crash). Any missing dependency fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
bash tests/setup-deps.sh

step "lints: rustfmt, clippy, rustdoc"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked

step "build"
cargo build --workspace --all-targets --locked

step "cargo test (unit, integration, end to end)"
cargo test --workspace --locked --no-fail-fast

step "systemd units"
bash tests/systemd/verify-units.sh "$PWD/target/debug/hakuriver-ssh-proxy"

step "nix"
bash tests/nix/check.sh

step "docker"
bash tests/docker/run.sh

step "systemd in docker"
bash tests/systemd-docker/run.sh

step "all tests passed"
