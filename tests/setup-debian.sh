#!/usr/bin/env bash
# Installs what flowlens's tests and demo need on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are left alone.
set -euo pipefail
packages=(
  conntrack      # conntrack -L / -E: the reference the io-linux tests compare against
  iproute2       # ip netns, veth pairs for the test hosts
  nftables       # a ct rule so conntrack tracks traffic inside test namespaces
  iputils-ping   # ICMP test traffic
  tshark         # IPFIX dissector (cflow) for interop tests
  pmacct         # nfacctd (collector) and pmacctd/nfprobe (exporter) for interop tests
  libfixbuf-tools # ipfixDump
  softflowd      # third-party IPFIX exporter for decode tests
  nfdump         # nfcapd, another collector
  curl           # end-to-end tests' test traffic
  openssl        # TLS tests (foreign CAs) and deploy/tls/gen-certs.sh
  chromium       # headless browser for the dashboard tests
  fonts-dejavu-core # a font for Chromium's screenshots
  clickhouse-server # ClickHouse 18.16: the store and aggregator-exporter tests start one on loopback
  clickhouse-client # debugging those servers by hand (clickhouse-client --port N)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
