#!/usr/bin/env bash
# flowlens on a local kind cluster: build the three images, load them into kind, create the TLS
# Secrets, apply the default stack and open the dashboards on http://localhost:8080.
#
#   deploy/quickstart.sh [CLUSTER]          # default cluster name: flowlens
#   OVERLAY=deploy/overlays/tls-cert-manager deploy/quickstart.sh   # another kustomization
#     (that one needs cert-manager in the cluster first)
#
# Needs docker (with BuildKit), kind, kubectl and openssl. The first image build compiles the
# workspace in release mode (several minutes); the later two reuse its cache.
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER="${1:-flowlens}"
OVERLAY="${OVERLAY:-deploy/base}"

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
kubectl config use-context "kind-$CLUSTER"

for pair in agent:flowlens-agent aggregator:flowlens-aggregator flowlens:flowlens; do
  dockerfile="deploy/images/${pair%%:*}.Dockerfile" image="${pair#*:}:dev"
  DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "$image" .
  kind load docker-image --name "$CLUSTER" "$image"
done

# The CA, server and client certificates as Secrets (the overlay tls-cert-manager has
# cert-manager issue them instead). The CA key stays in ~/.flowlens-tls/CLUSTER.
if [ "$OVERLAY" != deploy/overlays/tls-cert-manager ]; then
  OUT="$HOME/.flowlens-tls/$CLUSTER" deploy/tls/gen-certs.sh flowlens
fi

kubectl apply -k "$OVERLAY"
kubectl -n flowlens rollout status daemonset/flowlens-agent --timeout=300s
kubectl -n flowlens rollout status deployment/flowlens-aggregator --timeout=300s
if ! kubectl -n flowlens get deployment/flowlens-collector >/dev/null 2>&1; then
  echo "$OVERLAY has no flowlens collector; records go to the stack it configures."
  exit 0
fi
kubectl -n flowlens rollout status deployment/flowlens-collector --timeout=300s

echo "flowlens dashboards: http://localhost:8080   (Ctrl-C stops the port-forward)"
kubectl -n flowlens port-forward service/flowlens-collector 8080:8080
