#!/usr/bin/env bash
# `eventfold bench changes` RUNS times per backend (and the django-events-sourcing peer
# when PEER_PYTHON points at a venv with its requirements), then the medians.
#
#   RUNS=3 BACKENDS="sqlite postgres" scripts/bench-changes.sh
#   PEER_PYTHON=target/peers-venv/bin/python PEER_DIR=/tmp/peers scripts/bench-changes.sh
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and `rabbitmqctl` (each run makes and
# deletes a scratch virtual host), PostgreSQL at DATABASE_URL for the postgres backend.
# PEER_DIR is a writable copy of the peers folder (the peer writes next to itself); it
# uses the broker's default vhost and the database peers_crud.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BACKENDS=${BACKENDS:-"sqlite postgres"}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
OUT=${OUT:-bench-results/changes-$(date -u +%Y%m%dT%H%M%SZ)}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/eventfold}
mkdir -p "$OUT"
if [ -n "${PEER_PYTHON:-}" ]; then PEER_PYTHON=$(realpath "$PEER_PYTHON"); fi
if [ ! -x "$BIN" ] || [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p eventfold-cli
fi
for i in $(seq 1 "$RUNS"); do
  for b in $BACKENDS; do
    echo "[run $i] eventfold $b" >&2
    EVENTFOLD_LOG=${EVENTFOLD_LOG:-"warn,lapin=off"} "$BIN" --database-url "$DATABASE_URL" \
      bench changes --backend "$b" ${BENCH_ARGS:-} >"$OUT/$b.$i.log" 2>"$OUT/$b.$i.err"
    tail -n 1 "$OUT/$b.$i.log" >"$OUT/$b.$i.json"
  done
  if [ -n "${PEER_PYTHON:-}" ]; then
    echo "[run $i] peer django-events-sourcing" >&2
    (cd "${PEER_DIR:?PEER_DIR: a writable copy of the peers folder}" &&
      "$PEER_PYTHON" crud_events_bench.py) >"$OUT/peer.$i.log" 2>&1 || true
    tail -n 1 "$OUT/peer.$i.log" >"$OUT/peer.$i.json"
  fi
done
python3 - "$OUT" <<'EOF'
import glob, json, statistics, sys
out = sys.argv[1]
def med(xs):
    xs = [x for x in xs if isinstance(x, (int, float))]
    return statistics.median(xs) if xs else None
def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d
rows = {}
for f in sorted(glob.glob(f"{out}/*.json")):
    name = f.rsplit("/", 1)[1].split(".")[0]
    try:
        j = json.loads(open(f).read())
    except Exception:
        continue
    rows.setdefault(name, []).append(j)
keys_ef = ["baseline.saves_per_s", "record_only.saves_per_s", "no_consumer.saves_per_s",
           "no_consumer.events_lost", "no_consumer.events_parked", "consumer.saves_per_s",
           "consumer.e2e_events_per_s", "consumer.event_lag_p50_ms", "consumer.event_lag_p99_ms",
           "consumer.events_lost", "consumer.duplicates", "consumer.order_inversions",
           "consumer.amqp_connections_opened", "plain_saves_per_s", "saves_vs_plain",
           "saves_vs_record_only", "record_only_vs_plain", "drain_events_per_s",
           "broker_confirmed_per_s", "drain_vs_broker", "broker_confirm_rtt_p50_ms",
           "broker_confirm_rtt_p99_ms", "bare_commits_per_s"]
keys_peer = ["baseline.saves_per_s", "no_consumer.saves_per_s", "no_consumer.amqp_connections_opened",
             "nameko.saves_per_s", "nameko.e2e_events_per_s", "nameko.event_lag_p50_ms",
             "nameko.event_lag_p99_ms", "nameko.events_lost", "nameko.order_inversions",
             "nameko.amqp_connections_opened", "standalone.dispatches_per_s"]
for name, runs in rows.items():
    print(f"== {name}: median of {len(runs)} runs")
    if name == "peer":
        for k in keys_peer:
            print(f"  {k:40} {med([get(r, 'results.' + k) for r in runs])}")
    else:
        for k in keys_ef:
            print(f"  {k:40} {med([get(r, f'results.eventfold-{name}.' + k) for r in runs])}")
EOF
echo "logs: $OUT" >&2
