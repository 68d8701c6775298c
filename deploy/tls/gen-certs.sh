#!/usr/bin/env bash
# Creates the TLS Secrets the base needs, with openssl: a CA, the aggregator's server
# certificate and the agents' client certificate, all signed by that CA (mutual TLS).
#
#   deploy/tls/gen-certs.sh [NAMESPACE]        # default namespace: flowlens
#
# Secrets (keys ca.crt, tls.crt, tls.key — the same layout cert-manager writes):
#   flowlens-aggregator-tls   server certificate for the aggregator's Service names
#   flowlens-agent-tls        client certificate shared by every agent
# The CA key is not stored in the cluster: it stays in $OUT (default ./flowlens-tls, mode 0700).
# Keep it to issue new certificates, or delete it. Certificates are valid for 825 days; rerun to
# renew (the aggregator and agents pick up changed Secret files without a restart).
# Prefer cert-manager (overlays/tls-cert-manager) where it runs: it renews automatically.
set -euo pipefail
NS="${1:-flowlens}"
OUT="${OUT:-./flowlens-tls}"
DAYS="${DAYS:-825}"
umask 077
mkdir -p "$OUT"
cd "$OUT"

if [ ! -s ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
    -subj "/CN=flowlens-ca" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

sans="DNS:flowlens-aggregator,DNS:flowlens-aggregator.$NS,DNS:flowlens-aggregator.$NS.svc"
sans="$sans,DNS:flowlens-aggregator.$NS.svc.cluster.local"
sans="$sans,DNS:flowlens-aggregator-headless.$NS.svc,DNS:flowlens-aggregator-headless.$NS.svc.cluster.local"

issue() { # name, subject CN, extendedKeyUsage, subjectAltName
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
    -out "$1.crt" -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$3" "$4")
  rm -f "$1.csr"
}
issue server "flowlens-aggregator.$NS.svc" serverAuth "$sans"
issue client "flowlens-agent" clientAuth "DNS:flowlens-agent"

kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
secret() { # name, file stem
  kubectl -n "$NS" create secret generic "$1" \
    --from-file=ca.crt=ca.crt --from-file=tls.crt="$2.crt" --from-file=tls.key="$2.key" \
    --dry-run=client -o yaml | kubectl apply -f -
}
secret flowlens-aggregator-tls server
secret flowlens-agent-tls client
echo "Secrets flowlens-aggregator-tls and flowlens-agent-tls are in namespace $NS; the CA key is in $PWD/ca.key"
