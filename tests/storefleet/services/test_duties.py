"""One process of a control plane runs its duties (reconciler, webhooks, backups, pool)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from storefleet.services.duties import Duties
from storefleet.services.wiring import Services


def test_one_holder_at_a_time_and_another_takes_over(tmp_path: Path) -> None:
    lock = tmp_path / "shared" / "duties.lock"
    started = {"first": threading.Event(), "second": threading.Event()}
    waited = threading.Event()
    first = Duties(lock, start=started["first"].set, waiting=lambda: None, retry_s=0.05)
    second = Duties(lock, start=started["second"].set, waiting=waited.set, retry_s=0.05)
    first.start()
    assert first.held and started["first"].is_set()
    second.start()
    assert not second.held
    assert waited.wait(5)  # it keeps trying, and does its waiting work meanwhile
    assert not started["second"].is_set()
    first.stop()
    first.release()  # as when its process ends
    assert started["second"].wait(5)
    assert second.held
    second.stop()
    second.release()


def test_the_workers_of_a_control_plane_run_one_reconciler_and_share_its_report(
    make_services: Callable[..., Services],
) -> None:
    """Two services on one data dir (two workers): one runs the reconciler; the other answers
    with that one's report, and its metrics say when that one's last pass ended."""
    first, second = make_services(), make_services()
    first.start()
    second.start()
    try:
        assert first.duties.held and not second.duties.held
        assert first.reconciler._thread is not None and second.reconciler._thread is None
        first.reconciler.run_once()
        report = second.reconciler.report()
        assert report.passes >= 1 and report.last_pass_at is not None
        scraped = second.metrics.exposition().decode()
        lag = next(
            line for line in scraped.splitlines() if line.startswith("storefleet_reconciler_lag")
        )
        assert 0 <= float(lag.split()[-1]) < 60
    finally:
        second.duties.stop()
