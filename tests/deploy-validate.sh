#!/usr/bin/env bash
# Offline checks of deploy/: every kustomization renders (kubectl kustomize), validates against
# the Kubernetes schemas and flowlens's own rules (deploy/tools/validate_manifests.py), the
# Dockerfiles and shell scripts lint clean, the TLS script issues a verifiable CA/server/client
# set, the ClickHouse schema applies and fills its rollups, and every key of the binaries' config
# structs is documented in the shipped config files. The shipped config files and the
# Logstash definitions are checked by cargo tests (bins: shipped_deploy_configs_*,
# tests/deploy_logstash.rs).
#
# Usage: bash tests/deploy-validate.sh   (installs its Python tools into ~/.cache venvs)
# Needs: python3 (venv), kubectl (its built-in kustomize), openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}"
VENV="$CACHE/flowlens-deploy-venv"
CH_VENV="$CACHE/flowlens-chdb-venv"
# Oldest and newest Kubernetes minor versions the manifests must validate against.
K8S_VERSIONS=(1.30.0 1.37.0)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
failures=()
check() { # name, command...
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "FAILED: $name" >&2
  fi
}

venv() { # dir, requirements file
  local dir=$1 req=$2
  if [ ! -x "$dir/bin/python" ] || ! cmp -s "$req" "$dir/.requirements"; then
    echo "installing $(grep -v '^#' "$req" | tr '\n' ' ')into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$dir/.requirements"
  fi
}

if ! command -v kubectl >/dev/null || ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "deploy-validate: kubectl with its built-in kustomize is needed to render deploy/ (kubectl kustomize); install kubectl" >&2
  exit 1
fi
venv "$VENV" deploy/requirements-validate.txt

render_and_validate() { # kustomization dir
  local dir=$1 out
  out="$WORK/$(echo "$dir" | tr / _).yaml"
  if ! kubectl kustomize "$dir" >"$out" 2>"$out.err"; then
    echo "  $dir: kubectl kustomize failed:" >&2
    sed 's/^/    /' "$out.err" >&2
    return 1
  fi
  local args=()
  for v in "${K8S_VERSIONS[@]}"; do args+=(--kubernetes-version "$v"); done
  "$VENV/bin/python" deploy/tools/validate_manifests.py "$out" "${args[@]}"
}

for dir in deploy/base deploy/overlays/*/; do
  dir=${dir%/}
  [ -f "$dir/kustomization.yaml" ] || continue
  check "render + validate $dir" render_and_validate "$dir"
done

check "every config key is documented in the shipped configs" \
  "$VENV/bin/python" deploy/tools/check_config_keys.py .
check "hadolint deploy/images/*.Dockerfile" "$VENV/bin/hadolint" deploy/images/*.Dockerfile
check "shellcheck deploy/**/*.sh tests/deploy-validate.sh" \
  "$VENV/bin/shellcheck" deploy/quickstart.sh deploy/tls/gen-certs.sh tests/deploy-validate.sh

# gen-certs.sh against a stand-in kubectl: the certificates must chain to the CA, carry the
# right purposes, and the server certificate must name the Services the agents dial.
gen_certs() {
  mkdir -p "$WORK/bin" "$WORK/tls"
  cat >"$WORK/bin/kubectl" <<'STUB'
#!/bin/sh
# Records calls; "apply -f -" reads the Secret manifest from standard input.
echo "kubectl $*" >>"$KUBECTL_LOG"
if [ "$1" = apply ]; then cat >>"$KUBECTL_LOG"; fi
case "$*" in *"-o yaml"*) echo "kind: Secret" ;; esac
exit 0
STUB
  chmod +x "$WORK/bin/kubectl"
  KUBECTL_LOG="$WORK/kubectl.log" OUT="$WORK/tls" PATH="$WORK/bin:$PATH" \
    bash deploy/tls/gen-certs.sh flowlens >"$WORK/gen-certs.log" 2>&1 || {
    cat "$WORK/gen-certs.log" >&2
    return 1
  }
  (
    cd "$WORK/tls"
    openssl verify -CAfile ca.crt -purpose sslserver server.crt &&
      openssl verify -CAfile ca.crt -purpose sslclient client.crt &&
      openssl x509 -in server.crt -noout -ext subjectAltName | grep -q "DNS:flowlens-aggregator-headless.flowlens.svc" &&
      [ "$(stat -c %a ca.key)" = 600 ]
  ) && grep -q "create secret generic flowlens-aggregator-tls" "$WORK/kubectl.log" &&
    grep -q "create secret generic flowlens-agent-tls" "$WORK/kubectl.log"
}
check "deploy/tls/gen-certs.sh issues a verifiable CA, server and client certificate" gen_certs

if [ "${FLOWLENS_DEPLOY_SKIP_CLICKHOUSE:-0}" = 1 ]; then
  echo "== ClickHouse schema: skipped (FLOWLENS_DEPLOY_SKIP_CLICKHOUSE=1)"
else
  venv "$CH_VENV" deploy/requirements-clickhouse.txt
  check "ClickHouse schema applies and fills its rollups" \
    "$CH_VENV/bin/python" deploy/tools/check_clickhouse_schema.py deploy/overlays/clickhouse/schema.sql
fi

echo
if [ "$failed" -gt 0 ]; then
  printf 'deploy-validate: FAILED: %s\n' "${failures[@]}" >&2
fi
echo "deploy-validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
