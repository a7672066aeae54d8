"""The dashboard's fleet table (search, filters, sorting, pages) and overview."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from fakes import FakeDriver
from helpers import new_store
from storefleet.registry.models import Operation, OpState, Store, utcnow
from storefleet.services.board import StoreQuery
from storefleet.services.wiring import Services


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services()


def _fleet(services: Services) -> dict[str, str]:
    names = ["Zapatería Ana", "alfa", "Beta Store", "<b>gamma</b>", "Delta"]
    ids = {name: new_store(services, name) for name in names}
    with services.registry.transaction() as session:
        for i, sid in enumerate(ids.values()):
            store = session.get(Store, sid)
            assert store is not None
            store.plan = ("basic", "premium", "enterprise")[i % 3]
    return ids


def test_search_filters_sort_and_pages(services: Services) -> None:
    ids = _fleet(services)
    board = services.board
    table = board.table(StoreQuery(sort="nombre", desc=False, per_page=25))
    assert [r.nombre for r in table.rows] == [
        "<b>gamma</b>", "alfa", "Beta Store", "Delta", "Zapatería Ana"
    ]  # fmt: skip
    assert table.total == table.matching == 5 and table.pages == 1
    assert {r.status for r in table.rows} == {"not_deployed"}
    assert [r.nombre for r in board.table(StoreQuery(q="STORE")).rows] == ["Beta Store"]
    assert [r.nombre for r in board.table(StoreQuery(q=ids["Delta"][:8])).rows] == ["Delta"]
    premium = board.table(StoreQuery(plan="premium", sort="nombre", desc=False))
    assert [r.nombre for r in premium.rows] == ["alfa", "Delta"]
    assert board.table(StoreQuery(status="running")).matching == 0
    # pages of 2, newest first by default
    first = board.table(StoreQuery(per_page=2))
    assert first.pages == 3 and [r.nombre for r in first.rows] == ["Delta", "<b>gamma</b>"]
    last = board.table(StoreQuery(per_page=2, page=99))  # past the end: the last page
    assert last.page == 3 and [r.nombre for r in last.rows] == ["Zapatería Ana"]
    assert board.table(StoreQuery(), only=ids["alfa"]).total == 1
    assert table.plans == ["basic", "enterprise", "premium"]


def test_overview_names_what_needs_attention_and_why(
    make_services: Callable[..., Services],
) -> None:
    driver = FakeDriver()
    services = make_services(driver)
    healthy = new_store(services, "Healthy")
    broken = new_store(services, "Broken")
    looping = new_store(services, "Looping")
    failed_once = new_store(services, "Failed once")
    services.deployments.deploy(healthy)
    services.deployments.deploy(broken)
    driver.stacks.pop(broken)  # its stack vanished: `error`
    with services.registry.transaction() as session:
        for sid, errors in ((looping, 3), (failed_once, 1)):
            for n in range(errors):
                session.add(
                    Operation(
                        id=str(uuid.uuid4()),
                        store_id=sid,
                        kind="deploy",
                        state=OpState.FAILED,
                        params="{}",
                        steps=json.dumps([]),
                        error=f"boom {n}",
                        owner="x",
                        created_at=utcnow(),
                        finished_at=utcnow(),
                    )
                )
    view = services.board.overview()
    assert view.total == 4
    assert view.counts.get("running") == 1 and view.counts.get("error") == 1
    reasons = {a.nombre: a.reason for a in view.attention}
    assert set(reasons) == {"Broken", "Looping", "Failed once"}
    assert reasons["Looping"].startswith("crash-looping: its last 3 operations failed")
    assert reasons["Failed once"].startswith("its last operation (deploy) failed: boom")
    assert view.ports_leased == 6 and view.ports_total > 6
    assert any(e.type == "operation.finished" for e in view.events)
