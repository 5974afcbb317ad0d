#!/usr/bin/env bash
# Install Debian's chromium (used by tests/test_html_report.py) when it is missing; silent on success.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
log="$(mktemp)"
if ! { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "chromium.sh: could not install chromium" >&2
    exit 1
fi
rm -f "$log"
