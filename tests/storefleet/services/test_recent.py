"""Answers kept for a short window (services/recent.py): shared while current, old at once
when the registry changes, computed once for callers arriving together."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from storefleet.services.recent import Recent


class Generation:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def test_an_answer_is_shared_within_its_window_and_computed_again_after() -> None:
    computed: list[int] = []

    def compute() -> tuple[int, float]:
        computed.append(1)
        return len(computed), time.monotonic()

    recent: Recent[str, int] = Recent(0.2, Generation())
    assert recent.peek("a") is None
    assert recent.get("a", compute) == 1
    assert recent.get("a", compute) == 1 and recent.peek("a") == 1
    time.sleep(0.25)
    assert recent.peek("a") is None
    assert recent.get("a", compute) == 2


def test_the_window_counts_from_when_the_answer_was_observed() -> None:
    """An answer built on an observation 0.15 s old has 0.05 s left of a 0.2 s window."""
    recent: Recent[str, str] = Recent(0.2, Generation())
    assert recent.get("a", lambda: ("old", time.monotonic() - 0.15)) == "old"
    assert recent.peek("a") == "old"
    time.sleep(0.08)
    assert recent.peek("a") is None


def test_a_registry_write_makes_every_answer_old_at_once() -> None:
    generation = Generation()
    recent: Recent[str, str] = Recent(60, generation)
    recent.get("a", lambda: ("a1", time.monotonic()))
    recent.get("b", lambda: ("b1", time.monotonic()))
    generation.value += 1
    assert recent.peek("a") is None and recent.peek("b") is None
    assert recent.get("a", lambda: ("a2", time.monotonic())) == "a2"


def test_a_write_while_computing_is_not_hidden() -> None:
    """The generation is read before computing: an answer that may predate a write made
    meanwhile is not served afterwards."""
    generation = Generation()
    recent: Recent[str, str] = Recent(60, generation)

    def compute() -> tuple[str, float]:
        generation.value += 1  # a commit lands while the answer is built
        return "maybe-old", time.monotonic()

    assert recent.get("a", compute) == "maybe-old"
    assert recent.peek("a") is None


def test_callers_arriving_together_share_one_computation() -> None:
    calls = 0
    gate = threading.Event()

    def compute() -> tuple[int, float]:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return 42, time.monotonic()

    recent: Recent[str, int] = Recent(5, Generation())
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(recent.get, "a", compute) for _ in range(20)]
        time.sleep(0.1)
        gate.set()
        assert [f.result() for f in futures] == [42] * 20
    assert calls == 1


def test_forget_and_a_zero_window() -> None:
    recent: Recent[str, int] = Recent(60, Generation())
    recent.get("a", lambda: (1, time.monotonic()))
    recent.forget("a")
    assert recent.peek("a") is None
    never: Recent[str, int] = Recent(0, Generation())
    assert never.get("a", lambda: (1, time.monotonic())) == 1
    assert never.peek("a") is None


def test_keys_are_bounded() -> None:
    recent: Recent[int, int] = Recent(60, Generation(), max_keys=10)
    for i in range(25):
        recent.get(i, lambda i=i: (i, time.monotonic()))  # type: ignore[misc]
    assert len(recent._kept) <= 10
