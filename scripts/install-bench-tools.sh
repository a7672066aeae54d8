#!/usr/bin/env bash
# Install what `make bench` needs beyond the tests: Debian's `hey`, a native HTTP load generator
# (it does not compete with the server for the cores the way Python threads would).
set -euo pipefail
if ! command -v hey >/dev/null 2>&1; then
  echo "[install-bench-tools] installing hey" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null
fi
