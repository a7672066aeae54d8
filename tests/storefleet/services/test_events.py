"""Events: written with the change they report, tailed once each, even when committed late."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from helpers import new_store
from storefleet.errors import StorefleetError
from storefleet.registry.models import Event, utcnow
from storefleet.services.events import EventFeed, EventTail, check_patterns, matches
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


def test_feed_reads_once_for_every_follower_and_keeps_the_newest(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    _insert(services, 1)
    feed = EventFeed(services.events, capacity=3)
    assert feed.refresh(poll_s=60) == 0  # from the newest event on: 1 is not in it
    assert feed.since(0) == []
    for i in (2, 3):
        _insert(services, i)
    services.events.committed += 1  # (as a commit of this control plane tells it)
    assert feed.due(poll_s=60)
    assert feed.refresh(poll_s=60) == 2
    assert not feed.due(poll_s=60)  # nothing new committed here: no read until poll_s
    assert [e.id for e in feed.since(0) or []] == [2, 3]
    assert [e.id for e in feed.since(1) or []] == [3]
    for i in (4, 5, 6):
        _insert(services, i)
    feed.refresh(poll_s=0)  # (another control plane's events: read once poll_s passed)
    assert [e.id for e in feed.since(3) or []] == [5, 6]
    assert feed.since(1) is None  # 3 and 4 are no longer kept: read the registry instead


def test_feed_rows_pass_each_followers_filters_once(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    feed = EventFeed(services.events)
    feed.refresh(poll_s=0)
    ours = EventTail(services.events, store_id="ours")
    everything = EventTail(services.events)
    _insert(services, 2, store_id="ours")
    _insert(services, 3, store_id="theirs")
    assert [e.id for e in ours.poll()] == [2]  # read from the registry while joining
    feed.refresh(poll_s=0)
    rows = feed.since(0) or []
    assert [e.id for e in ours.admit(rows)] == []  # 2 was delivered already, 3 is not its
    assert [e.id for e in everything.admit(rows)] == [2, 3]
    assert everything.admit(rows) == []
    _insert(services, 1, store_id="ours")  # committed late, below what the feed saw
    feed.refresh(poll_s=0)
    assert [e.id for e in ours.admit(feed.since(2) or [])] == [1]


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
