#!/usr/bin/env bash
# Screenshot a run's HTML report in headless Chromium: scripts/report_screenshot.sh RUN_DIR [OUT.png]
set -euo pipefail
run_dir=$(realpath "$1"); out=$(realpath -m "${2:-$run_dir/report/screenshot.png}")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome) || {
  echo "no Chromium found: install one (e.g. apt install chromium)" >&2; exit 1; }
[ -f "$run_dir/report/index.html" ] || mmpost report "$run_dir"
profile=$(mktemp -d)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1280,3000 \
  --screenshot="$out" "file://$run_dir/report/index.html" >/dev/null 2>&1
rm -rf "$profile"
echo "wrote $out"
