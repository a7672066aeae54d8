#!/usr/bin/env bash
# Install a headless browser for the browser tests: Debian's `chromium` (Playwright drives it
# with executable_path; no browser can be downloaded here). Skipped when it is installed.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "[install-browser] installing chromium" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "[install-browser] $(chromium --version 2>/dev/null | head -1) is ready" >&2
