#!/usr/bin/env bash
# Build the store images locally, with no container registry: a Debian base made with
# debootstrap, then PostgreSQL 15 and the reference backend on top. Each image is skipped when it
# already exists with the same inputs (a content hash is part of its tag).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[build-images] %s\n' "$*" >&2; }

BASE=storefleet/debian-base:bookworm
BACKEND_IMAGE=${STOREFLEET_BACKEND_IMAGE:-storefleet/store-backend:0.1.0}
POSTGRES_IMAGE=${STOREFLEET_POSTGRES_IMAGE:-storefleet/postgres:15}
EDGE_IMAGE=${STOREFLEET_EDGE_IMAGE:-storefleet/edge:2.6}
if command -v uv >/dev/null 2>&1; then UV=(uv); else UV=(python3 -m uv); fi

exists() { docker image inspect "$1" >/dev/null 2>&1; }
label_of() { docker image inspect --format "{{ index .Config.Labels \"io.storefleet.inputs\" }}" "$1" 2>/dev/null || true; }

if ! exists "$BASE"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  log "debootstrap bookworm from $mirror (about 30 s)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

# PostgreSQL
inputs=$(cat images/postgres/* | sha256sum | cut -c1-16)
if [ "$(label_of "$POSTGRES_IMAGE")" != "$inputs" ]; then
  log "building $POSTGRES_IMAGE"
  docker build -q --label "io.storefleet.inputs=$inputs" --build-arg "BASE=$BASE" \
    -t "$POSTGRES_IMAGE" images/postgres >/dev/null
fi

# The edge (Caddy)
inputs=$(cat images/edge/* | sha256sum | cut -c1-16)
if [ "$(label_of "$EDGE_IMAGE")" != "$inputs" ]; then
  log "building $EDGE_IMAGE"
  docker build -q --label "io.storefleet.inputs=$inputs" --build-arg "BASE=$BASE" \
    -t "$EDGE_IMAGE" images/edge >/dev/null
fi

# Reference backend: its libraries come from uv.lock, installed for Debian's Python 3.11.
inputs=$( (cat images/backend/Dockerfile uv.lock; find src/storefleet_backend -name '*.py' -print0 | sort -z | xargs -0 cat) | sha256sum | cut -c1-16)
if [ "$(label_of "$BACKEND_IMAGE")" != "$inputs" ]; then
  log "building $BACKEND_IMAGE"
  ctx=$(mktemp -d)
  trap 'rm -rf "$ctx"' EXIT
  cp images/backend/Dockerfile "$ctx/"
  cp -r src/storefleet_backend "$ctx/storefleet_backend"
  find "$ctx" -name __pycache__ -prune -exec rm -rf {} +
  "${UV[@]}" export --frozen --no-dev --no-hashes --no-emit-project --quiet -o "$ctx/constraints.txt"
  "${UV[@]}" pip install --quiet --target "$ctx/site" --python-version 3.11 \
    --python-platform x86_64-manylinux_2_36 --only-binary :all: -c "$ctx/constraints.txt" \
    fastapi pydantic 'uvicorn[standard]' 'psycopg[binary]' pycountry fastapi-offline
  docker build -q --label "io.storefleet.inputs=$inputs" --build-arg "BASE=$BASE" \
    -t "$BACKEND_IMAGE" "$ctx" >/dev/null
fi
log "images ready: $POSTGRES_IMAGE, $BACKEND_IMAGE, $EDGE_IMAGE"
