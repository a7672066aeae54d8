"""Metrics: counted where things happen, fleet gauges computed at scrape time."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpers import new_store
from storefleet.errors import StorefleetError
from storefleet.services.wiring import Services


def _value(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in the exposition")


def test_operations_stores_ports_and_reconciler(make_services: Callable[..., Services]) -> None:
    services = make_services()
    ok, bad, idle = (new_store(services, n) for n in ("Bien", "Mal", "Quieta"))
    services.deployments.deploy(ok)
    services.driver.fail_apply = True  # type: ignore[attr-defined]
    with pytest.raises(StorefleetError):
        services.deployments.deploy(bad)
    services.reconciler.run_once()
    text = services.metrics.exposition().decode()
    assert _value(text, 'storefleet_operations_total{kind="deploy",outcome="succeeded"}') == 1
    assert _value(text, 'storefleet_operations_total{kind="deploy",outcome="failed"}') == 1
    assert _value(text, 'storefleet_deploy_duration_seconds_count{outcome="succeeded"}') == 1
    assert _value(text, 'storefleet_stores{status="running"}') == 1
    assert _value(text, 'storefleet_stores{status="not_deployed"}') == 2
    assert _value(text, "storefleet_ports_leased") == 3
    assert _value(text, "storefleet_ports_total") == 30
    assert _value(text, "storefleet_port_range_usage_ratio") == pytest.approx(0.1)
    assert _value(text, "storefleet_reconciler_passes_total") == 1
    assert 0 <= _value(text, "storefleet_reconciler_lag_seconds") < 5
    assert idle  # registered, never deployed


def test_lag_is_negative_before_the_first_pass(make_services: Callable[..., Services]) -> None:
    text = make_services().metrics.exposition().decode()
    assert _value(text, "storefleet_reconciler_lag_seconds") == -1
