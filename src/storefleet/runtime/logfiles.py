"""Reading log files written by a store's supervisor: tails from the end, follows across
rotation (`backend.log` is renamed to `backend.log.1` past `MAX_LOG_BYTES`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

MAX_LOG_BYTES = 10 * 1024 * 1024  # one file; one rotated generation is kept (`.1`)
IDLE_TICK_S = 0.25  # a followed file yields None this often while nothing new comes
_BLOCK = 64 * 1024
MAX_LINE_BYTES = 1024 * 1024


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _backward(path: Path) -> Iterator[str]:
    """The file's lines, last first, reading blocks from the end (never the whole file)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        handle.seek(0, os.SEEK_END)
        position = handle.tell()
        pending = b""
        while position > 0:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            pending = handle.read(step) + pending
            parts = pending.split(b"\n")
            pending = parts[0]
            for part in reversed(parts[1:]):
                if part:
                    yield part.decode("utf-8", errors="replace")
            if len(pending) > MAX_LINE_BYTES:  # a line this long is cut, never read whole
                yield pending[-MAX_LINE_BYTES:].decode("utf-8", errors="replace")
                pending = b""
        if pending:
            yield pending.decode("utf-8", errors="replace")


def tail_lines(path: Path, tail: int | None, keep: Callable[[str], bool]) -> list[str]:
    """The last `tail` lines (all when None) of `path` and its rotated generation that `keep`
    accepts, oldest first. `keep` must be monotonic in time (a `since` filter): reading stops at
    the first line it refuses."""
    found: list[str] = []
    if tail == 0:
        return found
    for source in (path, rotated(path)):
        for line in _backward(source):
            if not keep(line):
                return found[::-1]
            found.append(line)
            if tail is not None and len(found) >= tail:
                return found[::-1]
    return found[::-1]


def follow(path: Path, offset: int | None = None) -> Iterator[str | None]:
    """Lines appended to `path` from `offset` (default: its end) as they come; None every
    IDLE_TICK_S while none does. A rotation (the file replaced) is followed into the new
    file; ends when the file is gone."""
    handle = None
    try:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return
        handle.seek(0, os.SEEK_END)
        if offset is not None and offset < handle.tell():
            handle.seek(offset)
        pending = b""
        while True:
            chunk = handle.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending.rstrip(b"\n").decode("utf-8", errors="replace")
                    pending = b""
                continue
            try:
                replaced = path.stat().st_ino != os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                return  # undeployed: its logs went with it
            if replaced:
                handle.close()
                handle = path.open("rb")
                continue
            yield None
            time.sleep(IDLE_TICK_S)
    finally:
        if handle is not None:
            handle.close()
