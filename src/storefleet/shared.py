"""What the processes of one control plane share on this host: numbers and bounded tables in
small memory-mapped files under `<data_dir>/shared/`.

With `STOREFLEET_WORKERS` above 1 the control plane serves from several processes, each a
control plane on the same registry. These files make them act as one: a write committed by one
makes the answers the others keep old at once (the registry's generation), a revocation or a
sign-out ends a token or a session everywhere at once, and rate limits and stream caps count a
client's requests across all of them.

A file is a fixed array of 32-byte slots. Every change takes the file's `flock` (and a thread
lock: a flock belongs to the open file, which the threads of a process share); reading one
number takes no lock (an aligned 8-byte read: at worst it is the value just before a change).
Without a path the slots live in this process's memory only (tests, tools), with the same code.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SLOT = 32  # bytes: a 16-byte key and two 8-byte values
_KEY = 16
_VALUES = struct.Struct("<dd")
_INT = struct.Struct("<q")
_FLOAT = struct.Struct("<d")
_EMPTY = bytes(_KEY)
# how many slots from its hash a table looks at for a key (a full window reuses its oldest)
PROBE = 8


def shared_dir(data_dir: Path) -> Path:
    return data_dir / "shared"


class SharedFile:
    """`slots` slots mapped from `path` (made 0600 when missing), or from memory (None)."""

    def __init__(self, path: Path | None, slots: int) -> None:
        self.slots = slots
        self._thread_lock = threading.Lock()
        size = slots * SLOT
        self._fd: int | None = None
        if path is None:
            self._map = mmap.mmap(-1, size)
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < size:  # new (or from a smaller version): zeros
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @contextmanager
    def locked(self) -> Iterator[mmap.mmap]:
        """The slots, with no other thread or process changing them meanwhile."""
        with self._thread_lock:
            if self._fd is None:
                yield self._map
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield self._map
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read_int(self, slot: int) -> int:
        return int(_INT.unpack_from(self._map, slot * SLOT)[0])

    def read_float(self, slot: int) -> float:
        return float(_FLOAT.unpack_from(self._map, slot * SLOT)[0])

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# The numbers of `numbers` (one file per data dir), by slot.
GENERATION = 0  # registry transactions that committed a write
REVOCATIONS = 1  # token revocations and dashboard sign-outs
RECONCILED_AT = 2  # time.time() of the reconciler's last pass (0: none yet)
POOL_FILLING = 3  # warm-pool fills running
RECONCILER_WAKE = 4  # `Waker`s: the reconciler's,
POOL_WAKE = 5  # the warm pool's,
CANCEL_WAKE = 6  # and the lock keepers' (a cancel asked in another process)
_NUMBERS = 8


class Numbers:
    """The few numbers the processes of a control plane share (the slots above)."""

    def __init__(self, path: Path | None) -> None:
        self._file = SharedFile(path, _NUMBERS)

    @classmethod
    def of(cls, data_dir: Path) -> Numbers:
        return cls(shared_dir(data_dir) / "numbers")

    def get(self, slot: int) -> int:
        return self._file.read_int(slot)

    def bump(self, slot: int) -> int:
        """Add one; the new value."""
        with self._file.locked() as slots:
            value = int(_INT.unpack_from(slots, slot * SLOT)[0]) + 1
            _INT.pack_into(slots, slot * SLOT, value)
            return value

    def set_int(self, slot: int, value: int) -> None:
        with self._file.locked() as slots:
            _INT.pack_into(slots, slot * SLOT, value)

    def add_int(self, slot: int, delta: int) -> int:
        with self._file.locked() as slots:
            value = max(0, int(_INT.unpack_from(slots, slot * SLOT)[0]) + delta)
            _INT.pack_into(slots, slot * SLOT, value)
            return value

    def get_float(self, slot: int) -> float:
        return self._file.read_float(slot)

    def set_float(self, slot: int, value: float) -> None:
        with self._file.locked() as slots:
            _FLOAT.pack_into(slots, slot * SLOT, value)

    def close(self) -> None:
        self._file.close()


class Waker:
    """A `threading.Event` that the other processes sharing `numbers` can set too (their
    `set` moves number `slot`, which `wait` looks at every `step_s`)."""

    def __init__(self, numbers: Numbers | None, slot: int, step_s: float = 0.1) -> None:
        self._event = threading.Event()
        self._numbers = numbers
        self._slot = slot
        self._step_s = step_s
        self._seen = numbers.get(slot) if numbers is not None else 0

    def set(self) -> None:
        """Wake the waiter of this process and those of the others."""
        self._event.set()
        if self._numbers is not None:
            self._numbers.bump(self._slot)

    def set_here(self) -> None:
        """Wake the waiter of this process only (it stops, say)."""
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        """Until set (True) or `timeout_s` passed (False)."""
        if self._numbers is None:
            return self._event.wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            if self._event.is_set() or self._numbers.get(self._slot) != self._seen:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._event.wait(min(self._step_s, left)):
                return True

    def clear(self) -> None:
        self._event.clear()
        if self._numbers is not None:
            self._seen = self._numbers.get(self._slot)


class Rows:
    """The slots of a `Table` while its lock is held: read, write, clear, scan."""

    def __init__(self, slots: mmap.mmap, count: int) -> None:
        self._slots = slots
        self.count = count

    def key(self, index: int) -> bytes:
        start = index * SLOT
        return bytes(self._slots[start : start + _KEY])

    def values(self, index: int) -> tuple[float, float]:
        a, b = _VALUES.unpack_from(self._slots, index * SLOT + _KEY)
        return float(a), float(b)

    def write(self, index: int, key: bytes, a: float, b: float) -> None:
        start = index * SLOT
        self._slots[start : start + _KEY] = key
        _VALUES.pack_into(self._slots, start + _KEY, a, b)

    def clear(self, index: int) -> None:
        self.write(index, _EMPTY, 0.0, 0.0)

    def used(self) -> Iterator[tuple[int, bytes, float, float]]:
        """(index, key, a, b) of every slot in use."""
        for index in range(self.count):
            key = self.key(index)
            if key != _EMPTY:
                yield (index, key, *self.values(index))

    def find(self, key: bytes, *, make: bool, evict: bool = True) -> int | None:
        """The slot of `key`; with `make`, a slot for it when it has none: an empty one near
        its hash, else the one there whose second value (its last use) is the oldest. Without
        `evict` the whole table is looked at and no key gives up its slot (None when full)."""
        if len(key) != _KEY or key == _EMPTY:
            raise ValueError("a key is 16 bytes, not all zero")
        home = int.from_bytes(key[:8], "little") % self.count
        if not evict:
            window = [(home + step) % self.count for step in range(self.count)]
        else:
            window = [(home + step) % self.count for step in range(min(PROBE, self.count))]
        free: int | None = None
        for index in window:
            found = self.key(index)
            if found == key:
                return index
            if found == _EMPTY and free is None:
                free = index
        if not make:
            return None
        if free is not None or not evict:
            return free
        return min(window, key=lambda index: self.values(index)[1])

    def slot(self, key: bytes) -> int:
        """The slot of `key`, or one made for it (reusing the oldest of its window)."""
        index = self.find(key, make=True)
        if index is None:  # not reached: with eviction a window always gives a slot
            raise RuntimeError("no slot")
        return index


class Table:
    """A bounded map of 16-byte keys to two floats, shared through a `SharedFile`; when a key's
    probe window is full, its least recently used slot is reused (so it holds at most `slots`
    keys, however many clients come)."""

    def __init__(self, path: Path | None, slots: int) -> None:
        self._file = SharedFile(path, slots)

    def transact(self, work: Callable[[Rows], T]) -> T:
        """`work` on the rows, with no other thread or process changing them meanwhile."""
        with self._file.locked() as slots:
            return work(Rows(slots, self._file.slots))

    def close(self) -> None:
        self._file.close()
