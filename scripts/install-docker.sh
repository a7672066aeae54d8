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

# Every store's networks take address pools of the engine: Docker's defaults hold 31 networks
# (about 15 routed stores per host). Give it 131,072 small ones (a /27 each, from 10.192.0.0/10)
# unless the host's daemon.json already says how to pool addresses.
config=/etc/docker/daemon.json
pools_added=0
if ! grep -q '"default-address-pools"' "$config" 2>/dev/null; then
  log "giving the engine address pools for many store networks ($config)"
  mkdir -p /etc/docker
  python3 - "$config" <<'PY'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
config = json.loads(path.read_text()) if path.is_file() and path.read_text().strip() else {}
config["default-address-pools"] = [{"base": "10.192.0.0/10", "size": 27}]
path.write_text(json.dumps(config, indent=2) + "\n")
PY
  pools_added=1
fi
if [ "$pools_added" = 1 ] && docker info >/dev/null 2>&1; then
  if [ -n "$(docker ps -q)" ]; then
    log "restart the Docker engine to apply $config (containers are running: not restarted)"
  elif command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker 2>/dev/null; then
    log "restarting the Docker engine (systemd) to apply $config"
    systemctl restart docker
  elif [ -f /var/run/docker.pid ]; then
    log "restarting the Docker engine to apply $config (no container runs)"
    pid=$(cat /var/run/docker.pid)
    kill "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  mkdir -p /var/log
  # A Swarm task's image is used as it is on the node: without this the engine first tries to
  # pull it (no registry is reachable here: every task would wait on the attempt).
  DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi
docker compose version >/dev/null
log "docker $(docker version --format '{{.Server.Version}}') with compose $(docker compose version --short) is ready"
