#!/usr/bin/env bash
# Installs the Go-written tools the project relies on into a cache under $HOME that later runs
# (and CI, which keeps $HOME between runs) reuse. Each tool is pinned; a cached binary of the
# pinned version is never rebuilt.
#
#   scripts/install-tools.sh [buf] [grpcurl] [helm] [jaeger] [toxiproxy-server]
#                                                          (no argument: all of them)
#
# Prints the directory holding the binaries on its last line, so callers can do
#   export PATH="$(scripts/install-tools.sh buf | tail -1):$PATH"
set -euo pipefail

TOOLS_DIR="${ERP_TOOLS_DIR:-$HOME/.cache/erp-tools}"
BIN="$TOOLS_DIR/bin"
mkdir -p "$BIN"

declare -A MODULE=(
  [buf]="github.com/bufbuild/buf/cmd/buf@v1.75.0"
  [grpcurl]="github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3"
  [helm]="helm.sh/helm/v3/cmd/helm@v3.22.0"
  # Built inside its module (go install refuses it: its go.mod has replace directives).
  [jaeger]="github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0"
  # The TCP fault proxy of the fault tests (its command is named `server` in its module).
  [toxiproxy-server]="github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0"
)

# One install at a time per cache: two runs at once would both build the same tool (helm takes
# minutes on 2 cores) and race to write it.
if command -v flock >/dev/null; then
  exec 9>"$TOOLS_DIR/.lock"
  flock 9
fi

wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then wanted=(buf grpcurl helm jaeger toxiproxy-server); fi

for tool in "${wanted[@]}"; do
  spec="${MODULE[$tool]:?unknown tool $tool}"
  stamp="$BIN/.$tool.version"
  if [ -x "$BIN/$tool" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$spec" ]; then
    continue
  fi
  echo "installing $tool ($spec)" >&2
  if [ "$tool" = jaeger ] || [ "$tool" = toxiproxy-server ]; then
    module="${spec%%/cmd/*}@${spec##*@}"
    package="./cmd/${spec#*/cmd/}"; package="${package%@*}"
    dir="$(go mod download -json "$module" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    (cd "$dir" && go build -o "$BIN/$tool" "$package") >&2
  else
    GOBIN="$BIN" GOFLAGS=-mod=mod go install "$spec" >&2
  fi
  echo "$spec" > "$stamp"
done

echo "$BIN"
