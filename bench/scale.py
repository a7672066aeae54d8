"""How the control plane's costs grow with the fleet: one control plane (Docker runtime) holding
100, then 1,000, then 10,000 registered stores, a few of them really running, and at each size
the fleet's status (`GET /stores/`, every store), a page of it, a reconciler pass, the control
plane's memory and the registry's size; then the event fan-out to 100 followed SSE streams.
Drawn into bench/results/scale.png (matplotlib)."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import body, rss_mb, stats

SIZES = (100, 1_000, 10_000)
RUNNING = 3  # really running Docker stacks among the registered stores
# goals at 10,000 stores (issue: cost curves)
GOALS = {"fleet_status_ms": 300.0, "reconcile_pass_ms": 1000.0, "rss_mb": 300.0}
SUBSCRIBERS = 100


def _timed_ms(call: Callable[[], httpx.Response]) -> float:
    start = time.perf_counter()
    call().raise_for_status()
    return (time.perf_counter() - start) * 1000


def _reconcile_passes(api: httpx.Client, count: int, timeout_s: float = 300) -> list[float]:
    """The durations (ms) of the reconciler's next `count` passes, from its report."""
    seen = api.get("/reconciler").json()["passes"]
    found: list[float] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the reconciler made {len(found)} passes in {timeout_s} s")
        time.sleep(0.2)
        report = api.get("/reconciler").json()
        if report["passes"] > seen:
            seen = report["passes"]
            found.append(float(report["last_pass_ms"]))
    return found


def _registry_mb(data_dir: Path) -> float:
    files = [data_dir / f"storefleet.db{suffix}" for suffix in ("", "-wal", "-shm")]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def measure_size(
    api: httpx.Client, data_dir: Path, pid: int, rounds: int, max_age_s: float
) -> dict[str, Any]:
    """One point of the curves. Every answer timed here is computed afresh: each request waits
    out the status window (`max_age_s`), so that no answer is one shared with an earlier one."""
    size = int(api.get("/stores/", params={"limit": 1}).headers["x-total-count"])
    fleet, page = [], []
    for _ in range(rounds):
        time.sleep(max_age_s + 0.05)
        fleet.append(_timed_ms(lambda: api.get("/stores/")))
        time.sleep(max_age_s + 0.05)
        page.append(
            _timed_ms(lambda: api.get("/stores/", params={"limit": 100, "offset": size // 2}))
        )
    passes = _reconcile_passes(api, 3)  # (a pass every 10 s, the default)
    return {
        "stores": size,
        "fleet_status_ms": stats(fleet)["median"],
        "fleet_status_ms_stats": stats(fleet),
        "list_page_ms": stats(page)["median"],
        "list_page_ms_stats": stats(page),
        "reconcile_pass_ms": stats(passes)["median"],
        "reconcile_pass_ms_stats": stats(passes),
        "rss_mb": rss_mb(pid),
        "registry_mb": _registry_mb(data_dir),
    }


def _at(data: str) -> float:
    return datetime.fromisoformat(json.loads(data)["at"]).timestamp()


async def _subscribers(
    url: str,
    token: str,
    count: int,
    connected: threading.Event,
    done: threading.Event,
    deliveries: list[tuple[str, float, float]],
) -> None:
    """`count` followed SSE streams of store.created events (each as its own client would
    read it: line by line); every event delivered is recorded as (store id, its time, the
    time it arrived). Ends once `done` is set and the streams went quiet."""
    opened = 0
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(30, read=120)  # keep-alive comments come more often than that
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:

        async def one() -> None:
            nonlocal opened
            params = {"types": "store.created", "last": "0"}
            async with client.stream("GET", url, params=params) as answer:
                answer.raise_for_status()
                opened += 1
                if opened == count:
                    connected.set()
                async for line in answer.aiter_lines():
                    if line.startswith("data:"):
                        data = line[5:].strip()
                        deliveries.append((json.loads(data)["store_id"], _at(data), time.time()))

        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while not done.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def measure_fanout(
    api: httpx.Client, url: str, token: str, *, rate: float, seconds: float
) -> dict[str, Any]:
    """`SUBSCRIBERS` followed streams of /events; stores registered at `rate` a second for
    `seconds` (each a store.created event): the deliveries per second and the lag of each
    delivery (arrival minus the event's own time)."""
    connected, done = threading.Event(), threading.Event()
    deliveries: list[tuple[str, float, float]] = []
    reader = threading.Thread(
        target=lambda: asyncio.run(
            _subscribers(url, token, SUBSCRIBERS, connected, done, deliveries)
        ),
        daemon=True,
    )
    reader.start()
    if not connected.wait(60):
        raise SystemExit("the SSE subscribers did not all connect within 60 s")
    published: set[str] = set()
    start = time.time()
    for i in range(int(rate * seconds)):
        time.sleep(max(0.0, start + i / rate - time.time()))
        answer = api.post("/stores/?deploy=false", json=body(f"fanout {i}"))
        answer.raise_for_status()
        published.add(answer.json()["store"]["id"])
    expected = len(published) * SUBSCRIBERS
    deadline = time.time() + 60
    while sum(1 for d in list(deliveries) if d[0] in published) < expected:
        if time.time() > deadline:
            break
        time.sleep(0.1)
    done.set()
    reader.join(30)
    ours = [d for d in deliveries if d[0] in published]
    lags = sorted((arrived - at) * 1000 for _, at, arrived in ours)
    span = max(arrived for _, _, arrived in ours) - start
    return {
        "subscribers": SUBSCRIBERS,
        "events": len(published),
        "deliveries": len(ours),
        "deliveries_expected": expected,
        "deliveries_per_s": len(ours) / span,
        "lag_p50_ms": statistics.median(lags),
        "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))],
        "lag_max_ms": lags[-1],
    }


def draw(curves: list[dict[str, Any]], running: int, out: Path) -> None:
    """The curves, one panel per cost, stores on a log axis; the goals at 10,000 dashed."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.pyplot as plt

    panels = [
        ("fleet_status_ms", "GET /stores/ (every store), ms"),
        ("list_page_ms", "GET /stores/?limit=100, ms"),
        ("reconcile_pass_ms", "reconciler pass, ms"),
        ("rss_mb", "control plane RSS, MiB"),
        ("registry_mb", "registry (SQLite), MiB"),
    ]
    sizes = [c["stores"] for c in curves]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), dpi=100)
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(sizes, [c[key] for c in curves], marker="o")
        for x, c in zip(sizes, curves, strict=True):
            ax.annotate(f"{c[key]:.0f}", (x, c[key]), textcoords="offset points", xytext=(0, 6))
        if key in GOALS:
            ax.axhline(GOALS[key], linestyle="--", color="grey", label="goal at 10,000")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("registered stores")
    fig.suptitle(f"storefleet cost curves ({running} stores really running on Docker)")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
