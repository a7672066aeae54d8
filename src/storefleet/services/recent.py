"""Answers kept in memory for a short window, so that many callers asking the same question at
once (50 API clients polling one store's status, a dashboard and scripts listing the fleet)
share one computation instead of each reading the registry and the runtime.

An answer is served while both hold:
- it is younger than `max_age_s`, counted from when what it shows was observed (the caller
  says when: an answer built on an observation 0.3 s old has 0.2 s left of a 0.5 s window);
- the registry's `generation` has not moved since it was computed: any write this control
  plane commits (a deploy, a rename, a status change the reconciler saw) makes every answer
  old at once. Writes by other control planes on the same registry are seen once the window
  ends.

Computing is single flight per key: the callers that arrive meanwhile wait for that answer.
With `ahead`, an answer asked for in the second half of its window is computed again in the
background (once per key) while the kept one is still served: callers that keep asking never
wait for a computation (under load, one could take long enough to stall every caller of that
key); callers that stop asking cost nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Kept(Generic[V]):
    value: V
    born: float  # monotonic time of what the value shows
    generation: int
    compute: Callable[[], tuple[V, float]]


class Recent(Generic[K, V]):
    def __init__(
        self,
        max_age_s: float,
        generation: Callable[[], int],
        *,
        max_keys: int = 4096,
        ahead: Executor | None = None,
    ) -> None:
        self.max_age_s = max_age_s
        self._generation = generation
        self._max_keys = max_keys  # bounded whatever keys callers send
        self._ahead = ahead
        self._kept: dict[K, _Kept[V]] = {}
        self._locks: dict[K, threading.Lock] = {}
        self._guard = threading.Lock()

    def peek(self, key: K) -> V | None:
        """The kept answer if it is still current; never computes, never blocks."""
        kept = self._kept.get(key)
        if kept is None or not self._current(kept):
            return None
        if self._ahead is not None and time.monotonic() - kept.born >= self.max_age_s / 2:
            self._refresh(key, kept.compute)
        return kept.value

    def get(self, key: K, compute: Callable[[], tuple[V, float]]) -> V:
        """The kept answer if current, else `compute()`'s (value, monotonic time of what it
        shows), kept for the others."""
        found = self.peek(key)
        if found is not None or self.max_age_s <= 0:
            return found if found is not None else compute()[0]
        lock = self._lock(key)
        with lock:
            found = self.peek(key)
            if found is not None:
                return found
            return self._compute(key, lock, compute)

    def forget(self, key: K) -> None:
        self._kept.pop(key, None)

    def _lock(self, key: K) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _compute(self, key: K, lock: threading.Lock, compute: Callable[[], tuple[V, float]]) -> V:
        """Compute and keep (the caller holds `lock`, the key's)."""
        generation = self._generation()  # read before: a write meanwhile makes it old
        value, born = compute()
        with self._guard:
            if len(self._kept) >= self._max_keys:
                self._kept.clear()
                self._locks = {key: lock}
            self._kept[key] = _Kept(value, born, generation, compute)
        return value

    def _refresh(self, key: K, compute: Callable[[], tuple[V, float]]) -> None:
        """Compute `key` again in the background unless that is under way already."""
        lock = self._lock(key)
        if not lock.acquire(blocking=False):
            return  # being computed (ahead, or by a caller whose answer went old)

        def job() -> None:
            try:
                self._compute(key, lock, compute)
            except Exception:  # the next caller computes it itself, and sees the error
                log.debug("computing %r ahead failed", key, exc_info=True)
            finally:
                lock.release()

        assert self._ahead is not None
        try:
            self._ahead.submit(job)
        except RuntimeError:  # the executor was shut down (the control plane is stopping)
            lock.release()

    def _current(self, kept: _Kept[V]) -> bool:
        return (
            time.monotonic() - kept.born < self.max_age_s and kept.generation == self._generation()
        )
