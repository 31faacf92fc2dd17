#!/usr/bin/env bash
# Makes sure the servers the tests need are installed and running, then prints the environment
# the tests read. Installs Debian's postgresql and redis-server when they are missing, and runs
# a private PostgreSQL cluster and Redis on their own ports, so nothing on the machine's default
# ports is touched.
#
#   eval "$(scripts/test-env.sh)"
set -euo pipefail

STATE="${ERP_TEST_STATE:-$HOME/.cache/erp-test}"
PG_PORT="${ERP_TEST_PG_PORT:-55432}"
REDIS_PORT="${ERP_TEST_REDIS_PORT:-56379}"
mkdir -p "$STATE"

log() { echo "test-env: $*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
need_pkg() {
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq >&2
    apt_updated=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$STATE/apt.log" 2>&1 \
    || { cat "$STATE/apt.log" >&2; exit 1; }
}

pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$dir" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; fi
}

[ -n "$(pg_bin)" ] || need_pkg postgresql
command -v redis-server >/dev/null || need_pkg redis-server
command -v psql >/dev/null || need_pkg postgresql-client
# The runbook test uses jq, the trace test asks Jaeger's query API with curl.
command -v jq >/dev/null || need_pkg jq
command -v curl >/dev/null || need_pkg curl

PG_BIN=$(pg_bin)
# Outside $HOME: the postgres user must be able to reach it.
PG_STATE="${ERP_TEST_PG_STATE:-/var/tmp/erp-test-pg-$PG_PORT}"
PG_DATA="$PG_STATE/data"
PG_SOCK="$PG_STATE/sock"

# PostgreSQL refuses to run as root: run it as the postgres user the package created.
run_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if ! "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
  mkdir -p "$PG_SOCK" "$PG_DATA"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres "$PG_STATE"; fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    log "initdb $PG_DATA"
    run_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  # The test cluster relaxes durability for speed; ERP_TEST_PG_DURABLE=1 (the benchmark's own
  # cluster) keeps PostgreSQL's defaults, fsync on.
  durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if [ "${ERP_TEST_PG_DURABLE:-0}" = "1" ]; then durability=""; fi
  run_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_STATE/pg.log" -w -t 60 start \
    -o "-p $PG_PORT -k $PG_SOCK -c listen_addresses=127.0.0.1 -c max_connections=400 $durability" >&2
fi

if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --logfile "$STATE/redis.log" --dir "$STATE" >&2
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "export ERP_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$PG_PORT"
echo "export ERP_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
