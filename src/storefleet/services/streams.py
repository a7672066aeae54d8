"""Caps on long-lived streams (followed logs, the event stream), per token and in all.

A stream holds a slot from the moment it is accepted until it ends, whatever ends it (the
client went away, its token was revoked, the store's logs went with an undeploy). Past the cap a
new stream is refused with `TooManyError` (HTTP 429) before anything is read for it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from storefleet.errors import TooManyError

# How often a stream checks that its token is still valid (revoked, expired) and that its
# client is still there; also the longest a runtime's log iterator may block between items.
RECHECK_S = 2.0


class StreamGate:
    def __init__(self, per_token: int, total: int) -> None:
        self.per_token = per_token
        self.total = total
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open_count(self, token_id: str | None = None) -> int:
        with self._lock:
            return self._open[token_id] if token_id else sum(self._open.values())

    @contextmanager
    def hold(self, token_id: str, what: str) -> Iterator[None]:
        with self._lock:
            if self._open[token_id] >= self.per_token:
                raise TooManyError(
                    f"this token already has {self.per_token} open streams (the most allowed, "
                    f"STOREFLEET_STREAMS_PER_TOKEN); close one before opening another {what}",
                    code="too_many_streams",
                )
            if sum(self._open.values()) >= self.total:
                raise TooManyError(
                    f"the control plane serves {self.total} streams already "
                    f"(STOREFLEET_STREAMS_MAX); retry later",
                    code="too_many_streams",
                )
            self._open[token_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[token_id] -= 1
                if self._open[token_id] <= 0:
                    del self._open[token_id]
