#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a warm one:
#   1. installs the pinned tools (buf) into a cache under $HOME and lints the protos,
#   2. installs and starts PostgreSQL and Redis when missing (scripts/test-env.sh), and builds
#      Jaeger for the trace test and Toxiproxy for the fault tests,
#   3. checks formatting, clippy and the dependency tree (cargo deny: licenses, bans, sources,
#      advisories when the advisory database is reachable), then runs every Rust test against
#      SQLite and PostgreSQL,
#   4. lints and renders the Helm chart and validates the manifests against Kubernetes schemas,
#   5. runs the README's grpcurl runbook against a fresh `erp up --seed` and checks the results.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo; echo "==> $*"; }

step "tools"
TOOLS_BIN="$(scripts/install-tools.sh buf | tail -1)"
export PATH="$TOOLS_BIN:$PATH"

step "buf lint (STANDARD)"
(cd proto && buf lint)

step "Jaeger (the trace test's collector)"
export ERP_TEST_JAEGER_BIN="$(scripts/install-tools.sh jaeger | tail -1)/jaeger"
export ERP_TEST_REQUIRE_JAEGER=1

step "Toxiproxy (the fault tests' TCP fault proxy)"
export ERP_TEST_TOXIPROXY_BIN="$(scripts/install-tools.sh toxiproxy-server | tail -1)/toxiproxy-server"

step "PostgreSQL and Redis"
eval "$(scripts/test-env.sh)"
export ERP_TEST_REQUIRE_POSTGRES=1
echo "postgres: $ERP_TEST_POSTGRES_URL  redis: $ERP_TEST_REDIS_URL"

step "Leftovers of earlier runs"
# Every test creates its own databases (seven per suite), SQLite files and Redis streams. A
# machine that runs the suite every day would fill its disk (26 GB seen here after a few dozen
# runs), so each run starts by removing what earlier ones left.
dropped=0
for db in $(psql "$ERP_TEST_POSTGRES_URL/postgres" -Atc \
  "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1')"); do
  psql "$ERP_TEST_POSTGRES_URL/postgres" -qc "DROP DATABASE \"$db\" WITH (FORCE)"
  dropped=$((dropped + 1))
done
find "${TMPDIR:-/tmp}" -maxdepth 1 \( -name 'erp-test-*' -o -name 'erp-trace-*' -o -name 'erp-process-*' \) \
  -mmin +30 -exec rm -rf {} + 2>/dev/null || true
if command -v redis-cli >/dev/null; then redis-cli -u "$ERP_TEST_REDIS_URL" FLUSHALL >/dev/null; fi
echo "dropped $dropped test databases; removed old test data directories"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny (licenses, bans and duplicate versions, sources; advisories when reachable)"
DENY_ROOT="${ERP_TOOLS_DIR:-$HOME/.cache/erp-tools}/cargo"
if ! "$DENY_ROOT/bin/cargo-deny" --version 2>/dev/null | grep -q '0.20.2'; then
  echo "installing cargo-deny 0.20.2 into $DENY_ROOT (once; a few minutes)"
  cargo install --locked --quiet cargo-deny@0.20.2 --root "$DENY_ROOT"
fi
# cargo deny reads the metadata of every crate in the lock file, for every target (a build
# downloads only the host's): fetch them first.
cargo fetch --locked --quiet
PATH="$DENY_ROOT/bin:$PATH" cargo deny --offline check licenses bans sources
if timeout 20 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  PATH="$DENY_ROOT/bin:$PATH" cargo deny check advisories
else
  echo "advisories NOT checked: the RustSec database (github.com/rustsec/advisory-db) is unreachable from here"
fi

step "cargo test"
# The tests arm watchdogs of their own; this bounds anything else (a stuck build script).
timeout --kill-after=30s 3600 cargo test --workspace --locked -- --test-threads="${ERP_TEST_THREADS:-4}"

step "Helm chart and Kubernetes manifests"
scripts/check-charts.sh

step "README runbook with the real grpcurl"
scripts/runbook-test.sh
