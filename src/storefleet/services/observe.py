"""Shared, short-lived observations of the runtime.

Many callers asking for one store's status at once (a dashboard, 50 API clients) share one
observation of the runtime instead of each asking Docker or probing processes: an observation
is reused for at most `max_age_s` (default 0.5 s, below Docker's own health-check interval) and
only one caller observes at a time (single flight). Every operation on a store forgets its
observation at once, so a status right after a deploy or undeploy is observed afresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from storefleet.runtime.base import StackStatus


@dataclass
class _Entry:
    at: float
    status: StackStatus


class Observations:
    def __init__(self, observe: Callable[[str], StackStatus], max_age_s: float = 0.5) -> None:
        self._observe = observe
        self.max_age_s = max_age_s
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, store_id: str) -> StackStatus:
        return self.observed(store_id)[0]

    def observed(self, store_id: str, max_age_s: float | None = None) -> tuple[StackStatus, float]:
        """The store's observation and when it was made (monotonic time), at most `max_age_s`
        (by default the window's) old."""
        age = self.max_age_s if max_age_s is None else min(max_age_s, self.max_age_s)
        if age <= 0:
            return self._observe(store_id), time.monotonic()
        with self._guard:
            lock = self._locks.setdefault(store_id, threading.Lock())
        with lock:  # one observer per store at a time; the others reuse its answer
            entry = self._entries.get(store_id)
            if entry is not None and time.monotonic() - entry.at < age:
                return entry.status, entry.at
            at = time.monotonic()
            status = self._observe(store_id)
            self._entries[store_id] = _Entry(at, status)
            return status, at

    def forget(self, store_id: str) -> None:
        self._entries.pop(store_id, None)
