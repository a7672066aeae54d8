"""Waiting for a condition, with a deadline."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30) -> float:
    """Poll `predicate` (HTTP errors count as false) until true; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"condition not reached within {timeout_s} s")


def after_a_reconciler_pass(api: httpx.Client, timeout_s: float = 30) -> None:
    """Return right after the control plane's reconciler ended a pass (so the next one is about
    an interval away)."""
    passes = api.get("/reconciler").json()["passes"]
    wait_for(lambda: bool(api.get("/reconciler").json()["passes"] > passes), timeout_s)


def wait_for_status(
    api: httpx.Client, store_id: str, word: str, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll the store's status until it says `word`; return that status."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(api.get(f"/stores/{store_id}/deploy/status").json())
        return bool(seen["status"] == word)

    wait_for(reached, timeout_s)
    return seen
