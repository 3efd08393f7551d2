#!/usr/bin/env bash
# Makes sure what the test suite needs is installed and running; does nothing when it is.
#   * PostgreSQL on 127.0.0.1:5432 accepting user "postgres" without a password
#     (override with EVENTFOLD_TEST_DATABASE_URL to use another server: then nothing is touched)
#   * RabbitMQ on 127.0.0.1:5672 with guest/guest and `rabbitmqctl` (eventfold-amqp's tests
#     make a virtual host each with it): installed with apt when missing, started with
#     `rabbitmq-server -detached` when not running (override with EVENTFOLD_TEST_AMQP_URL:
#     then nothing is touched)
#   * python3 (the zlib interop test uses it; it skips itself when python3 is missing)
#   * Chromium and ChromeDriver (Debian's chromium, chromium-driver) for the browser tests
#     (eventfold-testkit's `browser` module): installed with apt when either is missing
#     (override with EVENTFOLD_CHROMIUM / EVENTFOLD_CHROMEDRIVER: then nothing is touched)
# Safe to run repeatedly. Needs root only when something must be installed or configured.
set -euo pipefail
log() { echo "[services] $*"; }

PG_URL=${EVENTFOLD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pg_ready() { psql "$PG_URL" -Atqc 'select 1' >/dev/null 2>&1; }

apt_updated=
apt_install() {
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
if [ -n "${EVENTFOLD_TEST_DATABASE_URL:-}" ]; then
  pg_ready || { log "cannot reach EVENTFOLD_TEST_DATABASE_URL"; exit 1; }
  log "using EVENTFOLD_TEST_DATABASE_URL"; return 0
fi

if command -v psql >/dev/null && pg_ready; then
  log "PostgreSQL ready"; return 0
fi

command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client

ver=$(ls /etc/postgresql | sort -V | tail -n 1)
[ -n "$ver" ] || { log "no PostgreSQL cluster found under /etc/postgresql"; exit 1; }
hba=/etc/postgresql/$ver/main/pg_hba.conf
if ! grep -q '^# eventfold-tests: trust' "$hba"; then
  # The suite connects as postgres over loopback without a password (as CI machines do).
  [ -f "$hba.eventfold-orig" ] || cp -p "$hba" "$hba.eventfold-orig"
  { echo '# eventfold-tests: trust for local socket and loopback (test machine only)'
    echo 'local all all trust'
    echo 'host all all 127.0.0.1/32 trust'
    echo 'host all all ::1/128 trust'
    cat "$hba.eventfold-orig"; } > "$hba"
  chown postgres:postgres "$hba"
  log "pg_hba.conf: trust on loopback (original kept as $hba.eventfold-orig)"
fi
if pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
else
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
fi
for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
pg_ready || { log "PostgreSQL did not come up"; exit 1; }
log "PostgreSQL $ver ready"
}

rabbit_ready() { rabbitmqctl -q status >/dev/null 2>&1; }

ensure_rabbitmq() {
  if [ -n "${EVENTFOLD_TEST_AMQP_URL:-}" ]; then
    log "using EVENTFOLD_TEST_AMQP_URL"; return 0
  fi
  if command -v rabbitmqctl >/dev/null && rabbit_ready; then
    log "RabbitMQ ready"; return 0
  fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  # Without systemd as PID 1 the package does not start the broker; start it detached.
  rabbit_ready || rabbitmq-server -detached
  for _ in $(seq 1 90); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && break
    sleep 1
  done
  rabbit_ready || { log "RabbitMQ did not come up"; exit 1; }
  log "RabbitMQ ready"
}

ensure_chromium() {
  if [ -n "${EVENTFOLD_CHROMIUM:-}" ] && [ -n "${EVENTFOLD_CHROMEDRIVER:-}" ]; then
    log "using EVENTFOLD_CHROMIUM and EVENTFOLD_CHROMEDRIVER"; return 0
  fi
  # A test tool's own browser download cannot work here: Debian's packages are the source.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
  fi
  log "$(chromium --version 2>/dev/null | head -n 1) ready"
}

ensure_postgres
ensure_rabbitmq
ensure_chromium
