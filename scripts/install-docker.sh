#!/usr/bin/env bash
# Install and start the Docker engine and the Compose v2 plugin on a Debian bookworm machine.
# Idempotent: every step is skipped when its result is already there.
set -euo pipefail

log() { printf '[install-docker] %s\n' "$*" >&2; }

need_apt_update=1
apt_update() {
  if [ "$need_apt_update" = 1 ]; then
    apt-get update -qq
    need_apt_update=0
  fi
}

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io (engine, containerd, runc)"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

plugin=/usr/libexec/docker/cli-plugins/docker-compose
if [ ! -x "$plugin" ]; then
  log "installing the Compose v2 plugin from Debian trixie's docker-compose package"
  tmp=$(mktemp -d)
  list=/etc/apt/sources.list.d/storefleet-trixie-tmp.list
  cleanup() { rm -f "$list"; rm -rf "$tmp"; apt-get update -qq || true; }
  trap cleanup EXIT
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "deb $mirror trixie main" >"$list"
  apt-get update -qq
  (cd "$tmp" && apt-get download -qq docker-compose)
  dpkg -x "$tmp"/docker-compose_*.deb "$tmp/root"
  mkdir -p /usr/libexec/docker/cli-plugins
  install -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
  cleanup
  trap - EXIT
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap (for building base images without a registry)"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi
docker compose version >/dev/null
log "docker $(docker version --format '{{.Server.Version}}') with compose $(docker compose version --short) is ready"
