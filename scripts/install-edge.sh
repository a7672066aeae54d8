#!/usr/bin/env bash
# Install the edge proxy for this host (the process runtime's edge and the tests): Debian's
# `caddy` package (2.6). Its package does not start a service here (no systemd); storefleet
# starts and configures Caddy itself. Skipped when `caddy` is already installed.
set -euo pipefail
if ! command -v caddy >/dev/null 2>&1; then
  echo "[install-edge] installing caddy" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq caddy >/dev/null
fi
