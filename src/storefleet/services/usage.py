"""Per-store resource usage from the runtime's counters.

Drivers report cumulative CPU seconds; a rate needs two readings. `UsageMeter.measure` uses the
previous reading of the store when it is recent enough, and otherwise takes two readings
`window_s` apart. `UsageMeter.recent` (used by the status) never waits: it answers from a
reading at most `max_age_s` old, or takes one reading and rates it against the previous one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from storefleet.errors import RuntimeFailure
from storefleet.registry.models import utcnow
from storefleet.runtime.base import StackUsage, Usage
from storefleet.services.schemas import ServiceUsageView, UsageView

log = logging.getLogger(__name__)

MIN_WINDOW_S = 0.2
HISTORY = 120  # readings kept per store for the dashboard's chart (10 minutes at one per 5 s)
MAX_WINDOW_S = 300.0


@dataclass
class _Reading:
    at: float
    usage: StackUsage
    view: UsageView


def _percent(cpu_delta: float, window: float) -> float:
    return round(max(0.0, cpu_delta) / window * 100, 2)


class UsageMeter:
    def __init__(self, driver: Usage, *, window_s: float = 0.5, max_age_s: float = 5.0):
        self.driver = driver
        self.window_s = window_s
        self.max_age_s = max_age_s
        self._last: dict[str, _Reading] = {}
        self._reading: dict[str, threading.Lock] = {}  # one reader of a store at a time
        self._history: dict[str, deque[UsageView]] = {}
        self._lock = threading.Lock()
        # new readings behind `recent`: one at a time (bounded whatever the stores polled)
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage")

    def _rate(
        self, store_id: str, before: _Reading | None, usage: StackUsage, now: float
    ) -> UsageView:
        window = now - before.at if before is not None else None
        usable = (
            before is not None and window is not None and MIN_WINDOW_S <= window <= MAX_WINDOW_S
        )
        previous = {s.name: s for s in before.usage.services} if before is not None else {}
        services = []
        for service in usage.services:
            old = previous.get(service.name)
            cpu = (
                _percent(service.cpu_seconds - old.cpu_seconds, window)
                if usable and old is not None and window
                else None
            )
            services.append(
                ServiceUsageView(
                    name=service.name, cpu_percent=cpu, memory_bytes=service.memory_bytes
                )
            )
        total = (
            _percent(usage.cpu_seconds - before.usage.cpu_seconds, window)
            if usable and before is not None and window
            else None
        )
        return UsageView(
            store_id=store_id,
            sampled_at=utcnow(),
            window_s=round(window, 3) if usable and window else None,
            cpu_percent=total,
            memory_bytes=usage.memory_bytes,
            disk_bytes=usage.disk_bytes,
            services=services,
        )

    def _read(self, store_id: str, before: _Reading | None) -> UsageView | None:
        usage = self.driver.usage(store_id)
        now = time.monotonic()
        if usage is None:
            with self._lock:
                self._last.pop(store_id, None)
            return None
        view = self._rate(store_id, before, usage, now)
        with self._lock:
            self._last[store_id] = _Reading(now, usage, view)
            if view.cpu_percent is not None:
                self._history.setdefault(store_id, deque(maxlen=HISTORY)).append(view)
        return view

    def history(self, store_id: str) -> list[UsageView]:
        """The store's rated readings of the last minutes, oldest first (at most HISTORY)."""
        with self._lock:
            return list(self._history.get(store_id, ()))

    def measure(self, store_id: str) -> UsageView | None:
        """A fresh reading, rated over at least `window_s` (may wait that long)."""
        with self._lock:
            before = self._last.get(store_id)
        now = time.monotonic()
        if before is None or not (self.window_s <= now - before.at <= MAX_WINDOW_S):
            first = self.driver.usage(store_id)
            if first is None:
                return None
            before = _Reading(time.monotonic(), first, self._rate(store_id, None, first, now))
            time.sleep(self.window_s)
        return self._read(store_id, before)

    def recent(self, store_id: str) -> UsageView | None:
        """A reading at most `max_age_s` old, without waiting: the first reading of a store is
        taken at once; after that, an older one is answered while a new one is taken in the
        background (a reading runs `du` in the store's database container: a status, which
        shows this, never waits for it)."""
        with self._lock:
            before = self._last.get(store_id)
            reading = self._reading.setdefault(store_id, threading.Lock())
        if before is not None and time.monotonic() - before.at < self.max_age_s:
            return before.view
        if before is None:
            with reading:
                with self._lock:  # a reader that went first may have just read it
                    current = self._last.get(store_id)
                if current is not None:
                    return current.view
                return self._read(store_id, None)
        if reading.acquire(blocking=False):  # else being read already

            def again() -> None:
                try:
                    with self._lock:
                        current = self._last.get(store_id)
                    if current is None or time.monotonic() - current.at >= self.max_age_s:
                        self._read(store_id, current)
                except RuntimeFailure as exc:  # the next status tries again
                    log.debug("usage of store %s: %s", store_id, exc)
                finally:
                    reading.release()

            try:
                self._ahead.submit(again)
            except RuntimeError:  # shut down: the control plane is stopping
                reading.release()
        return before.view

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)

    def forget(self, store_id: str) -> None:
        with self._lock:
            self._last.pop(store_id, None)
            self._history.pop(store_id, None)
