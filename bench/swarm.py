"""Benchmarks on the Swarm lab (`make swarm-lab`): a deploy through storefleet against the same
rendered stack deployed by hand with `docker stack deploy --detach=false` (interleaved), the
fleet's status with 1,000 registered stores, and a move of a store holding 10,000 orders."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import body, register, stats
from helpers.swarm import NODES

PREFIX = "sfb"


def lab_is_up() -> bool:
    done = subprocess.run(
        ["docker", "node", "ls", "--format", "{{.Status}}"], capture_output=True, text=True
    )
    return done.returncode == 0 and done.stdout.split().count("Ready") >= len(NODES)


def _docker(node: str, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["docker", "-H", NODES[node], *args], capture_output=True, text=True, timeout=300
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def _node_of(api: httpx.Client, store_id: str) -> str:
    return str(api.get(f"/stores/{store_id}/deploy/status").json()["node"])


def _hand_deploy(stack_file: Path, node: str, work: Path, label: str, *, watch: bool) -> float:
    """A copy of storefleet's rendered stack deployed by hand under another name (its external
    secrets made first, untimed), then removed with its volume: `docker stack deploy
    --detach=false` (the CLI waits for each service in turn, then for its tasks to stay up
    through the CLI's stability window), or (`watch`) `--detach=true` and `docker stack ps`
    asked every 0.25 s until both services run healthy, as storefleet watches them."""
    name = f"{PREFIX}-raw-{uuid.uuid4().hex[:8]}"
    doc = yaml.safe_load(stack_file.read_text())
    copy = Path(tempfile.mkdtemp(dir=work)) / "stack.yaml"
    renamed = []
    for secret in doc["secrets"].values():
        secret["name"] = f"{name}-{secret['name'][-20:]}"
        renamed.append(secret["name"])
        subprocess.run(
            ["docker", "secret", "create", "--label", label, secret["name"], "-"],
            input=uuid.uuid4().hex,
            capture_output=True,
            text=True,
            check=True,
        )
    # not storefleet's labels: its reconciler would take the stack for a leftover and remove it
    key, _, value = label.partition("=")
    for service in doc["services"].values():
        service["labels"] = service["deploy"]["labels"] = {key: value}
    for kind in ("networks", "volumes"):
        for item in doc.get(kind, {}).values():
            if "labels" in item:
                item["labels"] = {key: value}
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    start = time.perf_counter()
    done = subprocess.run(
        ["docker", "stack", "deploy", f"--detach={str(watch).lower()}", "--resolve-image=never",
         "-c", str(copy), name],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"docker stack deploy by hand: {done.stderr.strip()[-500:]}")
    while watch:
        states = subprocess.run(
            ["docker", "stack", "ps", name, "--filter", "desired-state=running", "--format",
             "{{.CurrentState}}"],
            capture_output=True,
            text=True,
        ).stdout.split("\n")  # fmt: skip
        if sum(1 for state in states if state.startswith("Running")) >= 2:
            break
        if time.perf_counter() - start > 300:
            raise RuntimeError("the stack deployed by hand did not run in 300 s")
        time.sleep(0.25)
    took = time.perf_counter() - start
    subprocess.run(["docker", "stack", "rm", name], capture_output=True, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = _docker(node, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={name}")
        if not left:
            break
        time.sleep(0.25)
    for _ in range(40):
        gone = subprocess.run(
            [
                "docker",
                "network",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.stack.namespace={name}",
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        removed = subprocess.run(["docker", "network", "rm", *gone], capture_output=True)
        if not gone or removed.returncode == 0:
            break
        time.sleep(0.25)
    _docker(node, "volume", "rm", "-f", f"{name}_dbdata", check=False)
    subprocess.run(["docker", "secret", "rm", *renamed], capture_output=True)
    shutil.rmtree(copy.parent, ignore_errors=True)
    return took


def bench_swarm_deploy(
    api: httpx.Client, data_dir: Path, work: Path, rounds: int, label: str
) -> dict[str, Any]:
    ours, raw, watched = [], [], []
    for i in range(rounds):
        sid = api.post("/stores/?deploy=false", json=body(f"swarm {i}")).json()["store"]["id"]
        start = time.perf_counter()
        api.post(f"/stores/{sid}/deploy").raise_for_status()
        ours.append(time.perf_counter() - start)
        node = _node_of(api, sid)
        stack = Path(tempfile.mkdtemp(dir=work)) / "stack.yaml"
        shutil.copy(data_dir / "stores" / sid / "deploy" / "stack.yaml", stack)
        api.delete(f"/stores/{sid}", params={"purge": "true"}).raise_for_status()
        raw.append(_hand_deploy(stack, node, work, label, watch=False))
        watched.append(_hand_deploy(stack, node, work, label, watch=True))
    return {
        "storefleet_s": stats(ours),
        "stack_deploy_s": stats(raw),
        "stack_deploy_watched_s": stats(watched),
        "ratio": statistics.median(ours) / statistics.median(raw),
        "ratio_watched": statistics.median(ours) / statistics.median(watched),
    }


def bench_swarm_fleet_status(
    api: httpx.Client, stores: int, running: int, rounds: int
) -> dict[str, Any]:
    ids = register(api, stores, "flota")
    for sid in ids[:running]:
        api.post(f"/stores/{sid}/deploy").raise_for_status()
    listing = []
    for _ in range(rounds):
        start = time.perf_counter()
        answer = api.get("/stores/", timeout=60)
        listing.append((time.perf_counter() - start) * 1000)
        assert len(answer.json()) >= stores
    seen = sum(1 for s in answer.json() if s["status"] == "running")
    for sid in ids[:running]:
        api.delete(f"/stores/{sid}", params={"purge": "true"}).raise_for_status()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda sid: api.delete(f"/stores/{sid}"), ids[running:]))
    return {"stores": stores, "running": running, "running_seen": seen, "ms": stats(listing)}


def _count_orders(node: str, store_id: str) -> int:
    container = _docker(
        node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={PREFIX}-{store_id}_db"
    ).split()[0]
    out = _docker(
        node, "exec", "-u", "postgres", container, "psql", "-U", "store", "-d", "store", "-tAc",
        "SELECT count(*) FROM orders",
    )  # fmt: skip
    return int(out)


def bench_move(api: httpx.Client, rounds: int, orders: int) -> dict[str, Any]:
    """A store holding `orders` orders (inserted in its database directly) moved from node to
    node, each time checked to hold them all on arrival."""
    created = api.post("/stores/", json=body("mudanza"))
    created.raise_for_status()
    answer = created.json()
    sid = answer["store"]["id"]
    back, key = answer["deployment"]["back_link"], answer["api_key"]
    httpx.post(
        back + "/api/v1/orders",
        json={"amount": 1, "currency": "EUR", "reference": "first"},
        headers={"X-Api-Key": key},
        timeout=10,
    ).raise_for_status()  # the backend made its table
    node = _node_of(api, sid)
    container = _docker(
        node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={PREFIX}-{sid}_db"
    ).split()[0]
    insert = (
        "INSERT INTO orders SELECT md5(g::text), g, 'EUR', 'bench-' || g, now() "  # noqa: S608 (a number)
        f"FROM generate_series(2, {int(orders)}) g"
    )
    _docker(
        node, "exec", "-u", "postgres", container, "psql", "-U", "store", "-d", "store", "-qc",
        insert,
    )  # fmt: skip
    times = []
    for _ in range(rounds):
        there = next(n for n in sorted(NODES) if n != node and n != "h0") if node == "h0" else "h0"
        start = time.perf_counter()
        moved = api.post(f"/stores/{sid}/move", json={"node": there}, timeout=600)
        times.append(time.perf_counter() - start)
        moved.raise_for_status()
        node = there
        assert _count_orders(node, sid) == orders
    backups = api.get(f"/stores/{sid}/backups").json()
    size = max(b["size_bytes"] for b in backups)
    api.delete(f"/stores/{sid}", params={"purge": "true"}).raise_for_status()
    return {"orders": orders, "move_s": stats(times), "dump_bytes": size}
