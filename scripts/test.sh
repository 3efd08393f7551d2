#!/usr/bin/env bash
# The whole test suite: starts what it needs (scripts/services.sh), then runs every test
# of every crate, doc tests included, with every feature on.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
bash scripts/services.sh
cargo test --workspace --all-features "$@"
