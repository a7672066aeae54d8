"""Events: written with the change they report, tailed once each, even when committed late."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from helpers import new_store
from storefleet.errors import StorefleetError
from storefleet.registry.models import Event, utcnow
from storefleet.services.events import EventTail, check_patterns, matches
from storefleet.services.wiring import Services


def _types(services: Services, store_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.type, e.data) for e in services.events.after(0, store_id=store_id, limit=1000)]


def test_a_deploy_is_told_step_by_step(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    seen = _types(services, sid)
    assert seen[0] == ("store.created", {"nombre": "Tienda", "plan": "basic"})
    assert seen[1][0] == "operation.started" and seen[1][1]["kind"] == "deploy"
    steps = [(d["step"], d["state"]) for t, d in seen if t == "operation.step"]
    assert steps == [
        (s, state)
        for s in ("intent", "lease_ports", "secrets", "apply", "record")
        for state in ("running", "ok")
    ]
    assert seen[-1][0] == "operation.finished" and seen[-1][1]["state"] == "succeeded"


def test_a_failed_deploy_says_which_step_failed(make_services: Callable[..., Services]) -> None:
    services = make_services()
    driver = services.driver
    driver.fail_apply = True  # type: ignore[attr-defined]
    sid = new_store(services)
    with pytest.raises(StorefleetError):
        services.deployments.deploy(sid)
    seen = _types(services, sid)
    failed = [d for t, d in seen if t == "operation.step" and d["state"] == "failed"]
    assert [d["step"] for d in failed] == ["apply"]
    assert "never became healthy" in str(failed[0]["error"])
    assert seen[-1][1]["state"] == "failed" and "never became healthy" in str(seen[-1][1]["error"])


def _insert(services: Services, event_id: int, store_id: str = "s") -> None:
    with services.registry.transaction() as session:
        session.add(
            Event(id=event_id, type="store.created", store_id=store_id, data="{}", at=utcnow())
        )


def test_tail_delivers_each_event_once_even_when_committed_late(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    tail = EventTail(services.events, after=0)
    for i in (1, 2, 10):
        _insert(services, i)
    assert [e.id for e in tail.poll()] == [1, 2, 10]
    assert tail.poll() == []
    _insert(services, 5)  # its transaction took the id earlier but committed after 10
    assert [e.id for e in tail.poll()] == [5]
    assert tail.poll() == []


def test_tail_starts_at_the_newest_event_unless_told(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    _insert(services, 1)
    assert EventTail(services.events).poll() == []
    assert [e.id for e in EventTail(services.events, after=0).poll()] == [1]
    only = EventTail(services.events, after=0, store_id="other")
    _insert(services, 2, store_id="other")
    assert [e.id for e in only.poll()] == [2]


def test_patterns() -> None:
    assert matches(["*"], "store.status")
    assert matches(["operation.*"], "operation.step")
    assert not matches(["operation.*"], "store.status")
    assert check_patterns(["operation.*", "store.status", "*"]) == []
    assert check_patterns(["operations.*", "store"]) == ["operations.*", "store"]


def test_status_changes_are_one_event_each_across_control_planes(
    make_services: Callable[..., Services],
) -> None:
    one = make_services()
    two = make_services(driver=one.driver)  # a second control plane, same runtime
    sid = new_store(one)
    one.deployments.deploy(sid)
    one.reconciler.run_once()
    two.reconciler.run_once()
    one.driver.stacks.pop(sid)  # type: ignore[attr-defined]  # the stack vanished
    # both planes read the registry and the runtime before either records what it saw
    seen_by_one = (one.reconciler._rows(), one.driver.fleet_status())
    seen_by_two = (two.reconciler._rows(), two.driver.fleet_status())
    two.reconciler._record_statuses(*seen_by_two)
    one.reconciler._record_statuses(*seen_by_one)
    changes = [
        (e.data["from"], e.data["to"])
        for e in one.events.after(0, store_id=sid)
        if e.type == "store.status"
    ]
    assert changes == [("not_deployed", "running"), ("running", "error")]
    raw = [e for e in one.events.after(0) if e.type == "store.status"]
    assert json.loads(raw[-1].model_dump_json())["data"]["detail"] is None
