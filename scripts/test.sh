#!/usr/bin/env bash
# The whole test suite: starts what it needs (scripts/services.sh), makes the Python venv of
# the interop tests (scripts/interop-venv.sh: nameko, django-cqrs), then runs every test of
# every crate, doc tests included, with every feature on.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
bash scripts/services.sh
# Python with nameko 2.14.1 and django-cqrs 3.1.0 for the interop tests (eventfold-amqp's
# tests/it/nameko_interop.rs, eventfold-cqrs's tests/it/django_interop.rs).
bash scripts/interop-venv.sh
export EVENTFOLD_INTEROP_PYTHON="$(pwd)/target/interop-venv/bin/python"
cargo test --workspace --all-features "$@"
