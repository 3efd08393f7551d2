#!/usr/bin/env bash
# Makes sure what the test suite needs is installed and running; does nothing when it is.
#   * PostgreSQL on 127.0.0.1:5432 accepting user "postgres" without a password
#     (override with EVENTFOLD_TEST_DATABASE_URL to use another server: then nothing is touched)
#   * python3 (the zlib interop test uses it; it skips itself when python3 is missing)
# Safe to run repeatedly. Needs root only when something must be installed or configured.
set -euo pipefail
log() { echo "[services] $*"; }

PG_URL=${EVENTFOLD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pg_ready() { psql "$PG_URL" -Atqc 'select 1' >/dev/null 2>&1; }

if [ -n "${EVENTFOLD_TEST_DATABASE_URL:-}" ]; then
  pg_ready || { log "cannot reach EVENTFOLD_TEST_DATABASE_URL"; exit 1; }
  log "using EVENTFOLD_TEST_DATABASE_URL"; exit 0
fi

if command -v psql >/dev/null && pg_ready; then
  log "PostgreSQL ready"; exit 0
fi

apt_install() {
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

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
