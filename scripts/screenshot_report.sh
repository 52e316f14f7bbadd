#!/usr/bin/env bash
# Render an HTML report in headless Chromium (Debian's `chromium` package) to a PNG,
# so that it is seen to render:  scripts/screenshot_report.sh demo_out/compare/report.html [out.png]
set -euo pipefail
report=$(realpath "$1")
out=$(realpath -m "${2:-${report%.html}.png}")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no Chromium found: install it (Debian: apt-get install chromium)" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1280,4200 \
  --screenshot="$out" "file://$report" >/dev/null 2>&1
[ -s "$out" ] || { echo "Chromium wrote no screenshot for $report" >&2; exit 1; }
echo "$out"
