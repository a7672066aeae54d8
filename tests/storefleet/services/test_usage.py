"""Usage rates from cumulative counters (the fake driver adds 0.1 CPU second per reading)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from fakes import FakeDriver
from helpers import new_store, wait_for
from storefleet.errors import ConflictError
from storefleet.runtime.base import Ports, StackSpec
from storefleet.services.usage import UsageMeter
from storefleet.services.wiring import Services


def test_measure_rates_cpu_over_its_window(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    view = services.status.usage(sid)
    assert view.window_s is not None and view.window_s >= 0.5
    assert view.cpu_percent == pytest.approx(0.1 / view.window_s * 100, rel=0.01)
    assert view.memory_bytes == 50 * 2**20 and view.disk_bytes == 4096
    assert [s.name for s in view.services] == ["backend"]


def test_status_usage_never_waits(make_services: Callable[..., Services]) -> None:
    driver = FakeDriver()
    services = make_services(driver=driver)
    sid = new_store(services)
    services.deployments.deploy(sid)
    first = services.status.status(sid).usage
    assert first is not None and first.cpu_percent is None  # one reading: no rate yet
    again = services.status.status(sid).usage
    assert again == first and driver.readings[sid] == 1  # reused while fresh


def test_old_readings_are_rated_against_the_previous_one() -> None:
    driver = FakeDriver()
    meter = UsageMeter(driver, max_age_s=0.0)
    driver.apply(StackSpec("s", "basic", Ports(1, 2, 3)), timeout_s=1)
    first = meter.recent("s")
    assert first is not None
    time.sleep(0.25)
    assert meter.recent("s") == first  # the old one, while a new one is read in the background
    wait_for(lambda: bool(meter.history("s")))  # rated against the first one
    second = meter.history("s")[0]
    assert second.cpu_percent is not None
    assert second.window_s is not None and second.window_s >= 0.25


def test_a_store_that_does_not_run_has_no_usage(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    with pytest.raises(ConflictError):
        services.status.usage(sid)
    assert services.status.status(sid).usage is None
