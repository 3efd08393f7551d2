#!/usr/bin/env bash
# The orders example, all of it: builds and starts the orders service (HTTP commands, the
# order-totals projection and the relay to RabbitMQ) and the orders replica, prints the URLs
# and curl lines to try, and stops everything on Ctrl-C.
#
#   examples/orders/run.sh                                  # SQLite files in target/orders-example
#   EVENTFOLD_STORE=postgres EVENTFOLD_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
#     examples/orders/run.sh                                # schemas orders and orders_replica
#
# RabbitMQ: EVENTFOLD_AMQP_URL if set (then the broker is left alone), else the local one,
# installed and started by scripts/services.sh when it must be. Other variables:
# ORDERS_LISTEN (127.0.0.1:8080), ORDERS_REPLICA_LISTEN (127.0.0.1:8081),
# ORDERS_INSPECT (127.0.0.1:7071, the inspector inside the service), ORDERS_DATA_DIR,
# EVENTFOLD_SQLITE_PATH, ORDERS_REPLICA_SQLITE_PATH, EVENTFOLD_POSTGRES_SCHEMA,
# ORDERS_REPLICA_SCHEMA, ORDERS_REPLICA_QUEUE (orders_replica), EVENTFOLD_LOG, ORDERS_PROFILE
# (release; dev for a quicker build).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
log() { echo "[orders] $*"; }

store=${EVENTFOLD_STORE:-sqlite}
case $store in
  sqlite)
    data=${ORDERS_DATA_DIR:-$root/target/orders-example}
    mkdir -p "$data"
    export EVENTFOLD_STORE=sqlite
    export EVENTFOLD_SQLITE_PATH=${EVENTFOLD_SQLITE_PATH:-$data/orders.sqlite3}
    export ORDERS_REPLICA_SQLITE_PATH=${ORDERS_REPLICA_SQLITE_PATH:-$data/orders-replica.sqlite3}
    where="SQLite: $EVENTFOLD_SQLITE_PATH (service), $ORDERS_REPLICA_SQLITE_PATH (replica)"
    inspect_store="--sqlite-path $EVENTFOLD_SQLITE_PATH"
    ;;
  postgres)
    if [ -z "${EVENTFOLD_DATABASE_URL:-}" ]; then
      echo "EVENTFOLD_STORE=postgres needs EVENTFOLD_DATABASE_URL=postgres://USER@HOST/DB" >&2
      exit 2
    fi
    export EVENTFOLD_POSTGRES_SCHEMA=${EVENTFOLD_POSTGRES_SCHEMA:-orders}
    export ORDERS_REPLICA_SCHEMA=${ORDERS_REPLICA_SCHEMA:-orders_replica}
    where="PostgreSQL: schemas $EVENTFOLD_POSTGRES_SCHEMA (service), $ORDERS_REPLICA_SCHEMA (replica)"
    inspect_store="--store postgres --database-url \"\$EVENTFOLD_DATABASE_URL\" --postgres-schema $EVENTFOLD_POSTGRES_SCHEMA"
    ;;
  *)
    echo "EVENTFOLD_STORE must be sqlite or postgres, got $store" >&2
    exit 2
    ;;
esac

# The URL is shown only when it is the local default: a URL given may hold a password.
amqp_shown='"$EVENTFOLD_AMQP_URL"'
if [ -z "${EVENTFOLD_AMQP_URL:-}" ]; then
  bash scripts/services.sh rabbitmq
  export EVENTFOLD_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
  amqp_shown=$EVENTFOLD_AMQP_URL
fi
queue=${ORDERS_REPLICA_QUEUE:-orders_replica}
export ORDERS_LISTEN=${ORDERS_LISTEN:-127.0.0.1:8080}
export ORDERS_REPLICA_LISTEN=${ORDERS_REPLICA_LISTEN:-127.0.0.1:8081}
export ORDERS_INSPECT=${ORDERS_INSPECT:-127.0.0.1:7071}

profile=${ORDERS_PROFILE:-release}
log "building (cargo build --profile $profile -p orders-example)"
cargo build --profile "$profile" -p orders-example --bins
[ "$profile" = dev ] && out=debug || out=$profile
bin=${CARGO_TARGET_DIR:-$root/target}/$out

pids=()
stop() {
  trap - INT TERM EXIT
  # SIGTERM: each finishes what it has in hand (the relay its confirms, the replica its
  # batch) and exits.
  [ ${#pids[@]} -eq 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  log "stopped"
}
trap stop INT TERM EXIT

"$bin/orders" & pids+=($!)
"$bin/orders-replica" & pids+=($!)

api=http://$ORDERS_LISTEN
replica=http://$ORDERS_REPLICA_LISTEN
for _ in $(seq 1 100); do
  curl -sf "$api/totals" >/dev/null 2>&1 && curl -sf "$replica/orders" >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<EOF

[orders] running on $where
  service  $api      (GET /orders/ID, GET /totals, POST /orders, .../lines, .../pay, .../cancel)
  replica  $replica  (GET /orders, GET /orders/ID)
  inspector http://$ORDERS_INSPECT  (inside the service: with the relay's live counters)

Try:
  id=\$(curl -s -XPOST $api/orders -H 'content-type: application/json' -d '{"customer": "ada"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -s -XPOST $api/orders/\$id/lines -H 'content-type: application/json' -d '{"sku": "tea", "quantity": 2, "unit_price_cents": 350}'
  curl -s -XPOST $api/orders/\$id/pay -H 'content-type: application/json' -d '{"amount_cents": 700}'
  curl -s -XPOST $api/orders/\$id/pay -H 'content-type: application/json' -d '{"amount_cents": 700}'   # 422: paid already
  curl -s -XPOST $api/orders/\$id/cancel -H 'content-type: application/json' -d '{"expected_version": 1}'   # 409: it moved on
  curl -s $api/orders/\$id
  curl -s $api/totals
  curl -s $replica/orders/\$id

Or inspect from outside (another terminal; eventfold is cargo run --release -p eventfold-cli --):
  eventfold inspect $inspect_store --amqp-url $amqp_shown --dead-letters $queue --relay orders

Ctrl-C stops everything.
EOF

# Either one ending (a failure) stops the other too.
wait -n "${pids[@]}" || true
