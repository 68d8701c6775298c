#!/usr/bin/env sh
# Fetches the web UI's third-party JavaScript from the npm registry (the ordinary npm client),
# so nothing is fetched at run time and nothing minified is committed:
#   bins/ui/vendor/echarts.min.js   ECharts (charts, sankey, heatmap), embedded by bins/build.rs
#   bins/ui/vendor/node_modules     playwright-core, driving Debian's chromium in the browser
#                                   tests (only with --test-tools)
# Usage: sh bins/ui/vendor.sh [--test-tools]. Idempotent; bins/ui/vendor/ is git-ignored.
set -eu
ECHARTS_VERSION=5.6.0
# sha256 of dist/echarts.min.js in echarts-5.6.0.tgz: a changed file fails loudly.
ECHARTS_SHA256=bf4a223524e40b77c304bec67e1222cf551f14880cf42c69dc046558e11c07b1
PLAYWRIGHT_VERSION=1.56.1

here=$(cd "$(dirname "$0")" && pwd)
out="$here/vendor"
mkdir -p "$out"

if [ ! -s "$out/echarts.min.js" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "echarts@$ECHARTS_VERSION" >/dev/null)
  tar -xzf "$tmp/echarts-$ECHARTS_VERSION.tgz" -C "$tmp" package/dist/echarts.min.js
  got=$(sha256sum "$tmp/package/dist/echarts.min.js" | cut -d' ' -f1)
  if [ "$got" != "$ECHARTS_SHA256" ]; then
    echo "vendor.sh: echarts.min.js sha256 $got, expected $ECHARTS_SHA256" >&2
    exit 1
  fi
  cp "$tmp/package/dist/echarts.min.js" "$out/echarts.min.js.part"
  mv "$out/echarts.min.js.part" "$out/echarts.min.js"
  echo "vendored echarts $ECHARTS_VERSION into $out"
fi

if [ "${1:-}" = "--test-tools" ] && [ ! -d "$out/node_modules/playwright-core" ]; then
  npm install --silent --no-audit --no-fund --prefix "$out" "playwright-core@$PLAYWRIGHT_VERSION"
  echo "installed playwright-core $PLAYWRIGHT_VERSION into $out/node_modules"
fi
