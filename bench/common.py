"""What the benchmarks share: statistics, a store's body, registering many stores."""

from __future__ import annotations

import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ES = "c756430b-f637-52ac-a7e8-6b5e821a0cc4"  # Spain's id in the seeded countries


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p95": p95, "n": len(ordered)}


def body(name: str) -> dict[str, Any]:
    return {"nombre": name, "country_id": ES, "tokens_disponibles": 1, "plan": "basic"}


def register(api: httpx.Client, count: int, prefix: str) -> list[str]:
    """Register `count` stores (not deployed), 8 requests at a time; their ids."""

    def one(i: int) -> str:
        answer = api.post("/stores/?deploy=false", json=body(f"{prefix} {i}"))
        answer.raise_for_status()
        return str(answer.json()["store"]["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def rss_mb(pid: int) -> float:
    """The resident memory of process `pid`, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """The resident memory of process `pid` and its children (a server's workers), MiB."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(k) for k in children.read_text().split()] if children.exists() else []
    return rss_mb(pid) + sum(tree_rss_mb(kid) for kid in kids)
