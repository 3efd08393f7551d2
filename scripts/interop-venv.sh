#!/usr/bin/env bash
# The Python environment of the interop tests: target/interop-venv with nameko 2.14.1
# (eventfold-amqp's tests/it/nameko_interop.rs) and django-cqrs 3.1.0 (eventfold-cqrs's
# tests/it/django_interop.rs), and exactly what they need, pinned
# (scripts/interop-requirements.txt). Does nothing when the venv was built from the current
# requirements file and imports both; rebuilds it when that file changed. Safe to run
# repeatedly; needs root only when python3-venv must be installed.
#   scripts/interop-venv.sh           make sure it is there
#   scripts/interop-venv.sh --force   rebuild it from scratch
# The tests find its interpreter through EVENTFOLD_INTEROP_PYTHON (scripts/test.sh sets it),
# else at target/interop-venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[interop-venv] $*"; }

venv=$(pwd)/target/interop-venv
requirements=scripts/interop-requirements.txt

# The requirements the venv was built from, copied in when the build succeeded.
built_from=$venv/interop-requirements.txt

imports() { "$venv/bin/python" -c 'import nameko, nameko.cli.main, dj_cqrs, django, pika, ujson' >/dev/null 2>&1; }
ready() { [ -x "$venv/bin/python" ] && cmp -s "$requirements" "$built_from" && imports; }

if [ "${1:-}" = "--force" ]; then
  rm -rf "$venv"
elif ready; then
  log "ready ($venv)"; exit 0
fi

apt_install() {
  command -v apt-get >/dev/null || { log "$* missing and no apt-get: install it by hand"; exit 1; }
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

command -v python3 >/dev/null || apt_install python3 python3-venv

start=$(date +%s)
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
# Debian splits ensurepip (what venv needs to put pip in) into python3-venv.
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  rm -rf "$venv"
  py=$(python3 -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
  apt_install python3-venv "$py-venv" || apt_install python3-venv
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir -r "$requirements"
"$venv/bin/python" -m pip check
imports || { log "the venv does not import nameko.cli.main and dj_cqrs"; exit 1; }
cp "$requirements" "$built_from"
log "built $venv in $(( $(date +%s) - start )) s: $("$venv/bin/python" -c 'import importlib.metadata as m; print(", ".join(p + " " + m.version(p) for p in ("nameko", "kombu", "eventlet", "django-cqrs", "Django", "pika", "ujson")))')"
