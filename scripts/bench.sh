#!/usr/bin/env bash
# The flash sale (reservations on one hot item, batched and not, against the single-hot-row
# UPDATE ceiling), then saga throughput and latency, embedded (SQLite, one process) and distributed (seven processes,
# PostgreSQL + Redis Streams), with this machine's PostgreSQL commit ceiling measured in the
# same run (pgbench, one-row UPDATE per transaction, 16 clients) for the ratio. Prints figures;
# never fails on time.
#
#   scripts/bench.sh [orders] [concurrency]
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${1:-300}"
CONCURRENCY="${2:-16}"

# A durable cluster of its own (fsync on), so the figures mean what production would see.
eval "$(ERP_TEST_PG_PORT=55433 ERP_TEST_PG_DURABLE=1 scripts/test-env.sh)"
PG_URL="$ERP_TEST_POSTGRES_URL"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

cargo build --release -p erp >&2
export ERP__TELEMETRY__LOG_FILTER=warn

echo "== PostgreSQL commit ceiling (pgbench, one-row UPDATE, rows spread, 16 clients, 10 s)"
psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS pgbench_ceiling" -qc "CREATE DATABASE pgbench_ceiling" >/dev/null 2>&1
"$PG_BIN/pgbench" -q -i -s 10 "$PG_URL/pgbench_ceiling" >/dev/null 2>&1
cat > /tmp/erp-pgbench-update.sql <<'SQL'
\set aid random(1, 1000000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SQL
CEILING=$("$PG_BIN/pgbench" -n -c 16 -j 2 -T 10 -f /tmp/erp-pgbench-update.sql "$PG_URL/pgbench_ceiling" 2>/dev/null \
  | awk '/^tps/ {print $3; exit}')
echo "commits/s: $CEILING"

echo "== PostgreSQL single-hot-row ceiling (pgbench, one row, 32 clients, 10 s)"
psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS hotrow" -qc "CREATE DATABASE hotrow" >/dev/null 2>&1
psql "$PG_URL/hotrow" -qc "CREATE TABLE hot (id int primary key, n bigint)" -qc "INSERT INTO hot VALUES (1, 0)"
echo 'UPDATE hot SET n = n + 1 WHERE id = 1;' > /tmp/erp-pgbench-hot.sql
HOT=$("$PG_BIN/pgbench" -n -c 32 -j 2 -T 10 -f /tmp/erp-pgbench-hot.sql "$PG_URL/hotrow" 2>/dev/null \
  | awk '/^tps/ {print $3; exit}')
echo "hot-row commits/s: $HOT"

echo "== flash sale: 10,000 one-unit reservations for 500 units, 128 clients, PostgreSQL with fsync"
target/release/erp bench --mode flash --orders 10000 --concurrency 128 --postgres "$PG_URL" --redis "$ERP_TEST_REDIS_URL" --pg-ceiling "$HOT"

echo "== embedded (SQLite, one process)"
target/release/erp bench --mode embedded --orders "$ORDERS" --concurrency "$CONCURRENCY"

echo "== distributed (7 processes, PostgreSQL with fsync, Redis Streams)"
target/release/erp bench --mode distributed --orders "$ORDERS" --concurrency "$CONCURRENCY" \
  --postgres "$PG_URL" --redis "$ERP_TEST_REDIS_URL" --pg-ceiling "$CEILING"
