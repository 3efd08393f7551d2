#!/usr/bin/env bash
# Runs eventfold's Worlds benchmark and the peers' (Python eventsourcing es_bench.py and the
# Rust cqrs-es binary) in ONE batch, RUNS times each, interleaved, then prints the medians
# and the ratios. A developer tool: nothing in the build or the tests uses it.
#   scripts/bench-vs-peers.sh [PEERS_DIR]        # default ../shared/peers
#   RUNS=5 BACKENDS=memory,sqlite,postgres scripts/bench-vs-peers.sh
# Writes every run's output to bench-results/<name>.<i>.log and its JSON line to .json.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=$(cd "${1:-../shared/peers}" && pwd)
RUNS=${RUNS:-5}
BACKENDS=${BACKENDS:-memory,sqlite,postgres}
PG=postgres://postgres@127.0.0.1:5432
OUT=bench-results
mkdir -p "$OUT"
log() { echo "[bench] $*"; }

bash scripts/services.sh
psql "$PG/postgres" -Atqc "select 1 from pg_database where datname='peers'" | grep -q 1 \
  || psql "$PG/postgres" -qc "create database peers"

# The peers' Python side, in our own venv (their folder is read-only here).
VENV=target/peers-venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
pins=$(grep -E '^(eventsourcing|psycopg|psycopg-binary|psycopg-pool|typing_extensions)==' "$PEERS/requirements.txt")
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $pins

log "building eventfold and the cqrs-es peer (release)"
cargo build --release -q -p eventfold-cli
cargo build --release -q --locked --manifest-path "$PEERS/rust-cqrs-es/Cargo.toml" --target-dir target/peers
EVENTFOLD=target/release/eventfold
CQRS_ES=target/peers/release/worlds-cqrs-es

py_backends=popo
rust_backends=cqrs-es-mem
[[ $BACKENDS == *sqlite* ]] && py_backends+=,sqlite
[[ $BACKENDS == *postgres* ]] && { py_backends+=,postgres; rust_backends+=,cqrs-es-postgres; }

run() {  # name, command...
  local name=$1; shift
  "$@" > "$OUT/$name.$i.log" 2>&1 || { log "$name run $i failed:"; tail -5 "$OUT/$name.$i.log"; return 1; }
  tail -n 1 "$OUT/$name.$i.log" > "$OUT/$name.$i.json"
  grep -v '^{' "$OUT/$name.$i.log" | grep '^\[' || true
}

rm -f "$OUT"/*.json
for i in $(seq 1 "$RUNS"); do
  log "run $i/$RUNS"
  run es_bench "$VENV/bin/python" "$PEERS/es_bench.py" --backends "$py_backends"
  run cqrs_es "$CQRS_ES" --backends "$rust_backends" --pg-url "$PG/peers"
  for b in ${BACKENDS//,/ }; do
    run "eventfold_$b" env EVENTFOLD_DATABASE_URL="$PG/peers" "$EVENTFOLD" bench worlds --backend "$b"
  done
  if [[ $BACKENDS == *postgres* ]]; then
    # Not the peers' configuration: a single writer's aggregate cache (no read per command).
    run eventfold_postgres_cached env EVENTFOLD_DATABASE_URL="$PG/peers" "$EVENTFOLD" bench worlds \
      --backend postgres --cache 1000 --single-writer --no-raw
    run eventfold_pg_writers env EVENTFOLD_DATABASE_URL="$PG/peers" "$EVENTFOLD" bench pg-writers
  fi
done
python3 scripts/bench_summary.py "$OUT"
