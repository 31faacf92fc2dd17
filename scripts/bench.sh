#!/usr/bin/env bash
# Every figure of the performance table, in one run on this machine: PostgreSQL's commit
# ceilings (pgbench, fsync on), the flash sale (reservations on one hot item, batched and not;
# GetAvailability beside a bare tonic server; then end to end through CreateOrder), the
# synthetic eight-step saga (the engine alone) and the fulfillment saga, embedded (SQLite, one
# process) and distributed (seven processes, PostgreSQL + Redis Streams), each at 16, 64 and
# 128 sagas in flight (and the synthetic saga alone, one at a time). Prints figures; never
# fails on time (it fails when a run finds an invariant broken: oversold, a saga lost).
#
#   scripts/bench.sh [orders per run] [flash-sale orders]
set -euo pipefail
cd "$(dirname "$0")/.."
ORDERS="${1:-400}"
FLASH_ORDERS="${2:-10000}"
LEVELS="${ERP_BENCH_LEVELS:-16 64 128}"

# A durable cluster of its own (fsync on), so the figures mean what production would see.
eval "$(ERP_TEST_PG_PORT=55433 ERP_TEST_PG_DURABLE=1 scripts/test-env.sh)"
PG_URL="$ERP_TEST_POSTGRES_URL"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

cargo build --release -p erp >&2
ERP="${CARGO_TARGET_DIR:-target}/release/erp"
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
"$ERP" bench --mode flash --orders 10000 --concurrency 128 --postgres "$PG_URL" --redis "$ERP_TEST_REDIS_URL" --pg-ceiling "$HOT"

echo "== flash sale end to end: $FLASH_ORDERS CreateOrder for 500 units over 3 warehouses, 128 clients, embedded"
"$ERP" bench --mode flash-orders --orders "$FLASH_ORDERS" --concurrency 128

echo "== synthetic saga (8 steps, one row per step at the probe participant, 1 in 20 declined at step 4)"
"$ERP" bench --mode synthetic-embedded --orders 200 --concurrency 1
"$ERP" bench --mode synthetic-distributed --orders 200 --concurrency 1 \
  --postgres "$PG_URL" --redis "$ERP_TEST_REDIS_URL" --pg-ceiling "$CEILING"
for c in $LEVELS; do
  "$ERP" bench --mode synthetic-embedded --orders $((ORDERS * 3)) --concurrency "$c"
  "$ERP" bench --mode synthetic-distributed --orders $((ORDERS * 3)) --concurrency "$c" \
    --postgres "$PG_URL" --redis "$ERP_TEST_REDIS_URL" --pg-ceiling "$CEILING"
done

echo "== fulfillment saga, instant simulated floor"
for c in $LEVELS; do
  "$ERP" bench --mode embedded --orders "$ORDERS" --concurrency "$c"
  "$ERP" bench --mode distributed --orders "$ORDERS" --concurrency "$c" \
    --postgres "$PG_URL" --redis "$ERP_TEST_REDIS_URL" --pg-ceiling "$CEILING"
done
