#!/usr/bin/env bash
# Verifies the Helm chart with the real tools: `helm lint` and `helm template` for every values
# file under charts/erp/ci/, and the rendered manifests validated against the Kubernetes schemas
# (kubernetes-validate, which ships them and works offline). Also validates k8s/.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_DIR="${ERP_TOOLS_DIR:-$HOME/.cache/erp-tools}"
export PATH="$(scripts/install-tools.sh helm | tail -1):$PATH"

# kubernetes-validate in a virtualenv cached beside the other tools.
VENV="$TOOLS_DIR/venv"
KV_VERSION=1.37.0
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep "$KV_VERSION" >/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==$KV_VERSION" >&2
fi
KV="$VENV/bin/kubernetes-validate"
K8S_VERSION=1.33.0

# The erp binary (built by the tests) checks the rendered configuration.
# Built here (a no-op when fresh): a stale binary would judge the chart by old settings.
if [ -z "${ERP_BIN:-}" ]; then
  cargo build -q -p erp
  ERP_BIN="${CARGO_TARGET_DIR:-target}/debug/erp"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for values in charts/erp/ci/*.yaml; do
  name="$(basename "$values" .yaml)"
  echo "helm lint + template: $name"
  helm lint --strict charts/erp -f "$values" >"$out/$name.lint" || { cat "$out/$name.lint"; exit 1; }
  helm template erp charts/erp -n erp -f "$values" >"$out/$name.yaml"
  "$KV" --strict -k "$K8S_VERSION" "$out/$name.yaml" >"$out/$name.validate" 2>&1 \
    || { cat "$out/$name.validate"; exit 1; }
  echo "  $(grep -c '^kind:' "$out/$name.yaml") manifests valid for Kubernetes $K8S_VERSION"
  # The rendered erp.toml must be accepted by the erp binary's own configuration loader.
  "$VENV/bin/python" - "$out/$name.yaml" "$out/$name.toml" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and "erp.toml" in doc.get("data", {}):
        open(sys.argv[2], "w").write(doc["data"]["erp.toml"])
PY
  "$ERP_BIN" --config "$out/$name.toml" check-config >"$out/$name.check" \
    || { cat "$out/$name.toml"; exit 1; }
  echo "  erp.toml accepted by erp check-config"
done

# What the production-like values must render: several replicas, external secrets only.
prod="$out/production-values.yaml"
if grep -q 'name: erp-database$' "$prod" && ! grep -q '^kind: Secret' "$prod"; then
  echo "  production: existing secrets only, none rendered"
else
  echo "production values must use existing secrets and render none" >&2; exit 1
fi
replicas=$(grep -c 'replicas: 3' "$prod" || true)
[ "$replicas" -ge 3 ] || { echo "production values must render several replicas" >&2; exit 1; }
echo "  production: $replicas deployments with 3 replicas, $(grep -c '^kind: HorizontalPodAutoscaler' "$prod") autoscalers, $(grep -c '^kind: PodDisruptionBudget' "$prod") disruption budgets"

# The chart's own Redis keeps its append-only file on a volume.
redis="$out/redis-values.yaml"
if grep -q '^kind: StatefulSet' "$redis" && grep -A1 -- '- --appendonly' "$redis" | grep -q '"yes"' \
  && grep -q 'volumeClaimTemplates' "$redis"; then
  echo "  redis: StatefulSet with appendonly yes on a volume claim"
else
  echo "the redis values must render a Redis StatefulSet with AOF on a volume" >&2; exit 1
fi
if grep -q '^kind: CronJob' "$redis" && grep -q '"backup", "--into", "/backups", "--keep", "7"' "$redis"; then
  echo "  backup: CronJob running erp backup --keep 7 into the volume"
else
  echo "the redis values must render the backup CronJob" >&2; exit 1
fi

# Every call one service makes to another (its peer clients in the code) must be admitted by
# the callee's NetworkPolicy, or production breaks with network policies on.
"$VENV/bin/python" - "$prod" <<'PY'
import glob, re, sys, yaml
services = ["order", "inventory", "warehouse", "carrier", "procurement", "finance", "orchestrator"]
calls = set()
for caller in services:
    code = "".join(open(f).read() for f in glob.glob(f"services/{caller}/src/*.rs"))
    for callee in services:
        if callee != caller and (
            re.search(rf"peers\.{callee}\b", code)
            or (caller == "orchestrator" and re.search(rf"{callee.capitalize()}ServiceClient::new", code))
        ):
            calls.add((caller, callee))
admitted = set()
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "NetworkPolicy":
        callee = doc["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in doc["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                caller = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                if caller:
                    admitted.add((caller, callee))
missing = sorted(calls - admitted)
if missing:
    sys.exit("network policies block calls the code makes: " + ", ".join(f"{a} -> {b}" for a, b in missing))
print(f"  network policies admit all {len(calls)} service-to-service calls the code makes")
PY

echo "k8s/ manifests"
"$KV" --strict -k "$K8S_VERSION" k8s/namespace.yaml k8s/otel-collector.yaml k8s/dev/*.yaml >"$out/k8s.validate" 2>&1 \
  || { cat "$out/k8s.validate"; exit 1; }
echo "  valid"
