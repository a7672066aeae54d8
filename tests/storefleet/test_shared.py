"""What the processes of a control plane share: numbers, bounded tables and wakers in files.

Two handles on one file stand for two processes (each maps the file and takes its flock on an
open file of its own, as another process does); one test uses a real second process."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from pathlib import Path

from storefleet.shared import GENERATION, REVOCATIONS, Numbers, Rows, Table, Waker


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _bump_many(path: str, times: int) -> None:
    numbers = Numbers(Path(path))
    for _ in range(times):
        numbers.bump(GENERATION)


def test_numbers_are_one_for_every_handle_and_process(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "numbers"
    here, there = Numbers(path), Numbers(path)
    assert here.get(GENERATION) == there.get(GENERATION) == 0
    assert here.bump(GENERATION) == 1
    assert there.get(GENERATION) == 1
    assert there.get(REVOCATIONS) == 0  # slots are apart
    here.set_float(3, 12.5)
    assert there.get_float(3) == 12.5
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700

    # bumps from two processes at once (and a thread here) are never lost
    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(target=_bump_many, args=(str(path), 2000))
    child.start()
    mine = threading.Thread(target=_bump_many, args=(str(path), 2000))
    mine.start()
    _bump_many(str(path), 2000)
    child.join(60)
    mine.join(60)
    assert child.exitcode == 0
    assert here.get(GENERATION) == 1 + 3 * 2000
    here.close()
    there.close()


def test_a_table_is_bounded_and_reuses_the_least_recently_used_slot(tmp_path: Path) -> None:
    table = Table(tmp_path / "table", slots=16)
    other = Table(tmp_path / "table", slots=16)

    def put(name: str, at: float) -> None:
        def work(rows: Rows) -> None:
            rows.write(rows.slot(_key(name)), _key(name), 1.0, at)

        table.transact(work)

    for i in range(100):  # far more keys than slots
        put(f"client-{i}", float(i))
    used = other.transact(lambda rows: [(key, b) for _, key, _, b in rows.used()])
    assert len(used) == 16
    # the newest keys are kept: a full window gave its oldest slot away
    newest = {_key(f"client-{i}") for i in range(92, 100)}
    assert newest <= {key for key, _ in used}
    assert other.transact(lambda rows: rows.find(_key("client-99"), make=False)) is not None


def test_a_table_without_eviction_says_when_it_is_full(tmp_path: Path) -> None:
    table = Table(None, slots=4)

    def add(name: str) -> int | None:
        def work(rows: Rows) -> int | None:
            index = rows.find(_key(name), make=True, evict=False)
            if index is not None:
                rows.write(index, _key(name), 1.0, 0.0)
            return index

        return table.transact(work)

    assert all(add(f"k{i}") is not None for i in range(4))
    assert add("one more") is None
    assert add("k2") is not None  # a key already there still finds its slot
    gone = table.transact(lambda rows: rows.find(_key("k1"), make=False, evict=False))
    assert gone is not None
    table.transact(lambda rows: rows.clear(gone))
    assert add("one more") is not None


def test_a_waker_is_woken_from_another_handle(tmp_path: Path) -> None:
    path = tmp_path / "numbers"
    waiter = Waker(Numbers(path), 4, step_s=0.02)
    other = Waker(Numbers(path), 4)
    started = time.monotonic()
    assert waiter.wait(0.1) is False
    assert time.monotonic() - started >= 0.1
    timer = threading.Timer(0.1, other.set)
    timer.start()
    assert waiter.wait(10) is True
    timer.join()
    waiter.clear()
    assert waiter.wait(0.05) is False  # cleared: the same wake does not count twice
    waiter.set_here()
    assert waiter.wait(0) is True
    # without numbers it is a plain event of this process
    alone = Waker(None, 4)
    threading.Timer(0.05, alone.set).start()
    assert alone.wait(10) is True
