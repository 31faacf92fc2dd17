#!/usr/bin/env bash
# Runs the README's grpcurl runbook, line by line as written, with the real grpcurl against a
# fresh `erp up --seed`, then checks what the commands left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(scripts/install-tools.sh grpcurl | tail -1):$PATH"
command -v jq >/dev/null || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }

ERP_BIN="${ERP_BIN:-${CARGO_TARGET_DIR:-target}/debug/erp}"
[ -x "$ERP_BIN" ] || cargo build -q -p erp
# The runbook mints its tokens with `erp token`, which finds the suite's key through the same
# ERP__DATA_DIR.
export PATH="$(cd "$(dirname "$ERP_BIN")" && pwd):$PATH"
DATA="$(mktemp -d)"
LOG="$DATA/erp.log"
export ERP__DATA_DIR="$DATA"
ERP__TELEMETRY__LOG_FILTER=warn ERP__ORCHESTRATOR__POLL_INTERVAL_MS=50 \
  "$ERP_BIN" up --seed >"$LOG" 2>&1 &
ERP_PID=$!
cleanup() {
  status=$?
  if [ $status -ne 0 ] && [ -f "$DATA/runbook.out" ]; then
    echo "--- runbook output ---" >&2; cat "$DATA/runbook.out" >&2
  fi
  kill $ERP_PID 2>/dev/null || true; wait $ERP_PID 2>/dev/null || true; rm -rf "$DATA"
  exit $status
}
trap cleanup EXIT
for _ in $(seq 1 200); do grep -q '^try:' "$LOG" && break; sleep 0.1; done
grep -q '^try:' "$LOG" || { cat "$LOG"; echo "erp up did not start" >&2; exit 1; }

# The runbook, exactly as the README has it, in this shell (so its variables stay).
RUNBOOK="$DATA/runbook.sh"
awk '/<!-- runbook:start -->/{on=1; next} /<!-- runbook:end -->/{on=0} on && !/^```/' README.md >"$RUNBOOK"
echo "running $(grep -cv '^\s*\(#\|$\)' "$RUNBOOK") runbook commands"
# As typed into an interactive shell: a pipeline's status is its last command's (no pipefail),
# but any failing command still stops the run.
set +o pipefail
# shellcheck disable=SC1090
source "$RUNBOOK" >"$DATA/runbook.out" 2>&1
set -o pipefail

check() { if eval "$2"; then echo "  ok: $1"; else echo "  FAILED: $1" >&2; cat "$DATA/runbook.out" >&2; exit 1; fi; }
g() { grpcurl -plaintext -H "$OPS" "$@"; }
check "a call without a token is refused" \
  "(grpcurl -plaintext 127.0.0.1:50051 list 2>&1 || true) | grep -q Unauthenticated"
check "the pause, resume and cancel are audited under ops-1" \
  "[ \"\$(grpcurl -plaintext -H \"\$AUDITOR\" -d '{\"target\":\"saga:$SAGA2\",\"principal\":\"ops-1\"}' 127.0.0.1:50057 erp.audit.v1.AuditService/ListAuditEvents | jq '.events | length')\" = 3 ]"
check "list shows the order service, health and reflection" \
  "g 127.0.0.1:50051 list | grep erp.order.v1.OrderService >/dev/null"
check "first order shipped" \
  "g -d '{\"order_id\":\"$ORDER\"}' 127.0.0.1:50051 erp.order.v1.OrderService/GetOrder | jq -e '.order.status == \"ORDER_STATUS_SHIPPED\"' >/dev/null"
check "second order's saga compensated and the order cancelled" \
  "g -d '{\"order_id\":\"$ORDER2\"}' 127.0.0.1:50051 erp.order.v1.OrderService/GetOrder | jq -e '.order.status == \"ORDER_STATUS_CANCELLED\"' >/dev/null"
check "stock: 20 received, 2 shipped, nothing left reserved" \
  "g -d '{\"sku\":\"RB-MUG\",\"location\":\"east\"}' 127.0.0.1:50052 erp.inventory.v1.InventoryService/GetStock | jq -e '.levels[0].onHand == \"18\" and (.levels[0].reserved // \"0\") == \"0\"' >/dev/null"
check "stock ledger replays to the buckets" \
  "g -d '{}' 127.0.0.1:50052 erp.inventory.v1.InventoryService/VerifyLedger | jq -e '.consistent == true' >/dev/null"
check "trial balance balanced" \
  "g -d '{}' 127.0.0.1:50056 erp.finance.v1.FinanceService/GetTrialBalance | jq -e '.balanced == true' >/dev/null"
check "exception queue empty" \
  "[ \"\$(g -d '{}' 127.0.0.1:50057 erp.orchestrator.v1.OrchestratorService/ListExceptions | jq '.exceptions // [] | length')\" = 0 ]"
check "no stalled saga" \
  "[ \"\$(g -d '{\"stalled\":true}' 127.0.0.1:50057 erp.orchestrator.v1.OrchestratorService/ListSagas | jq '.sagas // [] | length')\" = 0 ]"
echo "runbook: all checks passed"
