#!/usr/bin/env bash
# A 3-node Docker Swarm on this one machine: the host's engine (manager, node h0) plus two
# engines in network namespaces of their own (workers h1, h2) on one bridge with the host (each
# node one address of 10.231.0.0/24: the overlay's tunnels need every node to see every other
# at the one address it advertises), with the store images loaded into each. `up` is idempotent; `down` removes it all.
#
#   bash scripts/swarm-lab.sh up      # make swarm-lab
#   bash scripts/swarm-lab.sh down    # make swarm-lab-down (add --purge to drop the engines' data)
#   bash scripts/swarm-lab.sh status
#
# Facts this relies on (../shared/guides/environment.md): dockerd runs in a namespace under
# `nsenter --net=` (not `ip netns exec`); the IPVS VIP and the routing mesh do not work in this
# kernel, so services use `endpoint_mode: dnsrr` and host-mode ports.
set -euo pipefail

NODES=(1 2)
NET=10.231.0          # the host (manager) is .1 on the bridge, node hN is .(10+N)
BRIDGE=sflab0
MANAGER_ADDR="$NET.1"
IMAGES=(storefleet/store-backend:0.1.0 storefleet/postgres:15 storefleet/edge:2.6)
LABEL=io.storefleet.node

say() { echo "[swarm-lab] $*"; }
sock() { echo "unix:///var/run/docker-sf-h$1.sock"; }
dk() { local n=$1; shift; docker -H "$(sock "$n")" "$@"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then echo "swarm-lab: run as root (it makes namespaces and engines)" >&2; exit 1; fi
}

bridge_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$MANAGER_ADDR/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
}

node_up() {
  local n=$1 ns="sf-h$1" host_if="sflab$1" node_if="sflab${1}n"
  [ -e "/var/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$host_if" >/dev/null 2>&1; then
    ip link add "$host_if" type veth peer name "$node_if"
    ip link set "$node_if" netns "$ns"
    ip link set "$host_if" master "$BRIDGE"
    ip -n "$ns" addr add "$NET.$((10 + n))/24" dev "$node_if"
  fi
  ip link set "$host_if" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "$node_if" up
  ip -n "$ns" route replace default via "$MANAGER_ADDR"
  if ! dk "$n" info >/dev/null 2>&1; then
    say "starting the engine of h$n (namespace $ns)"
    rm -f "/var/run/docker-sf-h$n.pid"
    # a configuration of its own (the host's daemon.json holds the host's address pools)
    mkdir -p /etc/docker
    echo '{}' >"/etc/docker/sf-h$n.json"
    # In a mount namespace of its own where /var/run/docker.sock is this node's socket, as on a
    # real host (a container that mounts the engine's socket gets its own node's).
    # (a socket left by a killed engine would be bound instead of the new one: remove it first)
    rm -f "/var/run/docker-sf-h$n.sock"
    # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE: a task runs the image the node has (loaded below)
    # instead of first trying a registry, which nothing here reaches (each task waited ~20 s)
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 \
      nsenter --net="/var/run/netns/$ns" unshare --mount --propagation slave sh -c '
      dockerd --config-file "/etc/docker/sf-h$0.json" \
        --data-root "/var/lib/docker-sf-h$0" --exec-root "/var/run/docker-sf-h$0" \
        -H "unix:///var/run/docker-sf-h$0.sock" --pidfile "/var/run/docker-sf-h$0.pid" \
        --containerd-namespace "sf-h$0" --containerd-plugins-namespace "sf-h$0p" \
        --bip "172.29.$0.1/24" --default-address-pool "base=10.$((200 + $0)).0.0/16,size=24" &
      engine=$!
      for _ in $(seq 1 200); do [ -S "/var/run/docker-sf-h$0.sock" ] && break; sleep 0.1; done
      mount --bind "/var/run/docker-sf-h$0.sock" /var/run/docker.sock
      wait "$engine"' "$n" >"/var/log/docker-sf-h$n.log" 2>&1 &
    for _ in $(seq 1 120); do
      dk "$n" info >/dev/null 2>&1 && break
      kill -0 "$(cat "/var/run/docker-sf-h$n.pid" 2>/dev/null || echo 0)" 2>/dev/null || [ "$_" -lt 10 ] || break
      sleep 0.5
    done
    dk "$n" info >/dev/null 2>&1 || { tail -20 "/var/log/docker-sf-h$n.log" >&2; exit 1; }
  fi
  for image in "${IMAGES[@]}"; do
    if docker image inspect "$image" >/dev/null 2>&1 && ! dk "$n" image inspect "$image" >/dev/null 2>&1; then
      say "loading $image into h$n"
      docker save "$image" | dk "$n" load -q >/dev/null
    fi
  done
}

# The node's /var/run/docker.sock (in its mount namespace) must be its own engine's. It is a bind
# mount there, which the host's engine undoes whenever it restarts (it unlinks and makes
# /var/run/docker.sock anew, and unlinking a mount point ends the mount in every namespace):
# the node then saw the host's engine through it. Bind it again.
own_socket() {
  local n=$1 pid want seen
  pid=$(cat "/var/run/docker-sf-h$n.pid" 2>/dev/null) || return 0
  want=$(dk "$n" info --format '{{.Swarm.NodeID}}' 2>/dev/null) || return 0
  seen=$(nsenter --mount="/proc/$pid/ns/mnt" docker -H unix:///var/run/docker.sock info \
    --format '{{.Swarm.NodeID}}' 2>/dev/null || true)
  if [ "$seen" != "$want" ]; then
    say "h$n: /var/run/docker.sock is its own engine's again"
    [ -e /var/run/docker.sock ] || touch /var/run/docker.sock
    nsenter --mount="/proc/$pid/ns/mnt" mount --bind "/var/run/docker-sf-h$n.sock" /var/run/docker.sock
  fi
}

up() {
  need_root
  docker info >/dev/null 2>&1 || { echo "swarm-lab: the host's Docker engine is not running (make docker)" >&2; exit 1; }
  # the nodes reach each other through the host: forward between their links (Docker's own
  # FORWARD policy drops what it does not know)
  sysctl -qw net.ipv4.ip_forward=1
  iptables -C DOCKER-USER -s "$NET.0/24" -d "$NET.0/24" -j ACCEPT 2>/dev/null \
    || iptables -I DOCKER-USER -s "$NET.0/24" -d "$NET.0/24" -j ACCEPT
  bridge_up
  for n in "${NODES[@]}"; do node_up "$n"; done
  for n in "${NODES[@]}"; do own_socket "$n"; done
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    say "swarm init on the host (manager h0, $MANAGER_ADDR)"
    docker swarm init --advertise-addr "$MANAGER_ADDR" --listen-addr "$MANAGER_ADDR:2377" >/dev/null
  fi
  local token
  token=$(docker swarm join-token -q worker)
  for n in "${NODES[@]}"; do
    local id
    id=$(dk "$n" info --format '{{.Swarm.NodeID}}')
    if [ "$(dk "$n" info --format '{{.Swarm.LocalNodeState}}')" != active ] \
      || ! docker node inspect "$id" >/dev/null 2>&1; then
      # a node left in an earlier swarm (its engine was down when the lab was taken down)
      dk "$n" swarm leave --force >/dev/null 2>&1 || true
      say "h$n joins the swarm"
      dk "$n" swarm join --token "$token" --advertise-addr "$NET.$((10 + n))" "$MANAGER_ADDR:2377" >/dev/null
    fi
  done
  # nodes of an earlier lab that are not these engines any more
  local current
  current=" $(docker info --format '{{.Swarm.NodeID}}') "
  for n in "${NODES[@]}"; do current+="$(dk "$n" info --format '{{.Swarm.NodeID}}') "; done
  for id in $(docker node ls -q); do
    case "$current" in *" $id "*) ;; *) docker node rm --force "$id" >/dev/null 2>&1 || true ;; esac
  done
  docker node update --label-add "$LABEL=h0" "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
  for n in "${NODES[@]}"; do
    docker node update --label-add "$LABEL=h$n" "$(dk "$n" info --format '{{.Swarm.NodeID}}')" >/dev/null
  done
  for _ in $(seq 1 60); do
    [ "$(docker node ls --format '{{.Status}}' | grep -c Ready)" -ge 3 ] && break
    sleep 0.5
  done
  status
}

down() {
  need_root
  for n in "${NODES[@]}"; do
    if ! dk "$n" info >/dev/null 2>&1; then
      rm -rf "/var/lib/docker-sf-h$n/swarm"  # its engine is gone: forget the swarm it was in
    else
      dk "$n" swarm leave --force >/dev/null 2>&1 || true
      # what the lab ran on the node (services' tasks leave with the swarm; anything else of ours)
      dk "$n" ps -aq --filter label=io.storefleet.managed | xargs -r dk "$n" rm -f >/dev/null 2>&1 || true
    fi
    if [ -f "/var/run/docker-sf-h$n.pid" ]; then
      pid=$(cat "/var/run/docker-sf-h$n.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      rm -f "/var/run/docker-sf-h$n.pid"
    fi
    ip link del "sflab$n" 2>/dev/null || true
    ip netns del "sf-h$n" 2>/dev/null || true
    if [ "${1:-}" = --purge ]; then rm -rf "/var/lib/docker-sf-h$n" "/var/run/docker-sf-h$n"; fi
    rm -f "/etc/docker/sf-h$n.json"
  done
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = active ]; then
    docker swarm leave --force >/dev/null
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  iptables -D DOCKER-USER -s "$NET.0/24" -d "$NET.0/24" -j ACCEPT 2>/dev/null || true
  say "down"
}

status() {
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" != active ]; then
    say "no swarm on the host"
    return 0
  fi
  docker node ls -q | xargs docker node inspect --format \
    "{{index .Spec.Labels \"$LABEL\"}} {{.Status.State}} {{.Spec.Availability}} {{.Status.Addr}} {{.ID}}"
}

# The failure drill: a node's engine dies as in a crash (SIGKILL, its containerd too; the
# containers' shims stay, as on a host whose engine died). `up` brings it back.
kill_node() {
  need_root
  local pid containerd="/var/run/docker-sf-h$1/containerd/containerd.pid"
  pid=$(cat "/var/run/docker-sf-h$1.pid" 2>/dev/null) || { say "h$1 runs no engine"; return 0; }
  kill -9 "$pid" 2>/dev/null || true
  if [ -f "$containerd" ]; then kill -9 "$(cat "$containerd")" 2>/dev/null || true; fi
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "/var/run/docker-sf-h$1.pid" "/var/run/docker-sf-h$1.sock"
  say "h$1's engine killed"
}

case "${1:-}" in
  up) up ;;
  kill-node) kill_node "${2:?which node: 1 or 2}" ;;
  down) shift; down "$@" ;;
  status) status ;;
  *) echo "usage: $0 up|down [--purge]|status|kill-node N" >&2; exit 2 ;;
esac
