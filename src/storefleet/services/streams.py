"""Caps on long-lived streams (followed logs, the event stream), per token and in all.

A stream holds a slot from the moment it is accepted until it ends, whatever ends it (the
client went away, its token was revoked, the store's logs went with an undeploy). Past the cap a
new stream is refused with `TooManyError` (HTTP 429) before anything is read for it.

The counts are kept per process and token in a `Table` shared by the worker processes of this
control plane (`storefleet.shared`), so the caps hold for the whole plane; the counts of a
process that is gone (a worker that died) are dropped at the next stream's check.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storefleet.errors import TooManyError
from storefleet.shared import Rows, Table

# How often a stream checks that its token is still valid (revoked, expired) and that its
# client is still there; also the longest a runtime's log iterator may block between items.
RECHECK_S = 2.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, as another user
        return True
    return True


class StreamGate:
    def __init__(self, per_token: int, total: int, *, path: Path | None = None) -> None:
        self.per_token = per_token
        self.total = total
        # one slot per (process, token) with streams open: at most `total`
        self._table = Table(path, max(64, 2 * total))

    @staticmethod
    def _token(token_id: str) -> bytes:
        return hashlib.blake2b(token_id.encode(), digest_size=8).digest()

    def _key(self, token_id: str) -> bytes:
        return self._token(token_id) + os.getpid().to_bytes(8, "little")

    def _counts(self, rows: Rows, token: bytes | None) -> int:
        """Streams open in all (of `token` alone when given); drops the counts of processes
        that are gone."""
        found = 0
        alive: dict[int, bool] = {}
        for index, key, count, _ in rows.used():
            pid = int.from_bytes(key[8:], "little")
            if pid not in alive:
                alive[pid] = _alive(pid)
            if not alive[pid]:
                rows.clear(index)
            elif token is None or key[:8] == token:
                found += int(count)
        return found

    def open_count(self, token_id: str | None = None) -> int:
        token = self._token(token_id) if token_id else None
        return self._table.transact(lambda rows: self._counts(rows, token))

    @contextmanager
    def hold(self, token_id: str, what: str) -> Iterator[None]:
        key = self._key(token_id)

        def take(rows: Rows) -> None:
            if self._counts(rows, key[:8]) >= self.per_token:
                raise TooManyError(
                    f"this token already has {self.per_token} open streams (the most allowed, "
                    f"STOREFLEET_STREAMS_PER_TOKEN); close one before opening another {what}",
                    code="too_many_streams",
                )
            if self._counts(rows, None) >= self.total:
                raise TooManyError(
                    f"the control plane serves {self.total} streams already "
                    f"(STOREFLEET_STREAMS_MAX); retry later",
                    code="too_many_streams",
                )
            index = rows.find(key, make=True, evict=False)
            if index is None:  # more (process, token) pairs than streams: not reached
                raise TooManyError("no stream slot is free; retry later", code="too_many_streams")
            count = rows.values(index)[0] if rows.key(index) == key else 0.0
            rows.write(index, key, count + 1, 0.0)

        def give_back(rows: Rows) -> None:
            index = rows.find(key, make=False, evict=False)
            if index is None:
                return
            count = rows.values(index)[0] - 1
            if count <= 0:
                rows.clear(index)
            else:
                rows.write(index, key, count, 0.0)

        self._table.transact(take)
        try:
            yield
        finally:
            self._table.transact(give_back)
