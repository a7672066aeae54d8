"""Operations as step lists: a step added once runs where it is named, is recorded in the
operation, and is undone in reverse order when a later step fails (deploy, start, repair)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fakes import FakeDriver
from helpers import new_store
from storefleet.errors import RuntimeFailure
from storefleet.services.steps import Context, Step, StepLists
from storefleet.services.wiring import Services


class Noop(Step):
    """A step that does nothing but say when it ran and when it was undone."""

    name = "noop"
    reversible = True

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal

    def run(self, ctx: Context) -> None:
        self.journal.append(f"run {ctx.store_id}")

    def undo(self, ctx: Context) -> None:
        self.journal.append(f"undo {ctx.store_id}")


def _before(steps: list[Step], label: str, step: Step) -> None:
    steps.insert([s.label for s in steps].index(label), step)


def _names(services: Services, sid: str) -> list[tuple[str, str]]:
    op = services.ops.for_store(sid)[0]
    return [(s.name, s.state) for s in op.steps]


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
def services(make_services: Callable[..., Services], driver: FakeDriver) -> Services:
    return make_services(driver=driver)


def test_a_step_added_to_deploy_runs_is_recorded_and_is_undone_in_reverse(
    services: Services, driver: FakeDriver
) -> None:
    journal: list[str] = []
    _before(services.steps.deploy, "secrets", Noop(journal))
    sid = new_store(services, "Uno")
    services.deployments.deploy(sid)
    assert journal == [f"run {sid}"]
    assert [n for n, _ in _names(services, sid)] == [
        "intent", "lease_ports", "noop", "secrets", "apply", "record",
    ]  # fmt: skip

    other = new_store(services, "Dos")
    driver.fail_apply = True
    with pytest.raises(RuntimeFailure):
        services.deployments.deploy(other)
    assert journal == [f"run {sid}", f"run {other}", f"undo {other}"]
    assert _names(services, other) == [
        ("intent", "ok"),
        ("lease_ports", "ok"),
        ("noop", "ok"),
        ("secrets", "ok"),
        ("apply", "failed"),
        ("undo_apply", "ok"),
        ("undo_noop", "ok"),
        ("undo_lease_ports", "ok"),
        ("undo_intent", "ok"),
    ]
    status = services.status.status(other)
    assert status.status == "not_deployed" and "deploy failed" in (status.last_error or "")
    assert services.allocator.ports_of(other) is None and other not in driver.stacks


def test_the_same_step_in_start_and_repair(services: Services, driver: FakeDriver) -> None:
    journal: list[str] = []
    lists = services.steps
    _before(lists.start, "start", Noop(journal))
    _before(lists.repair, "apply", Noop(journal))
    sid = new_store(services, "Tres")
    services.deployments.deploy(sid)
    services.lifecycle.stop(sid)

    driver.fail_apply = True
    with pytest.raises(RuntimeFailure):
        services.lifecycle.start(sid)
    assert journal == [f"run {sid}", f"undo {sid}"]
    assert _names(services, sid) == [
        ("secrets", "ok"),
        ("noop", "ok"),
        ("start", "failed"),
        ("undo_start", "ok"),
        ("undo_noop", "ok"),
    ]
    driver.fail_apply = False
    services.lifecycle.start(sid)
    assert journal[-1] == f"run {sid}"

    journal.clear()
    driver.stacks.pop(sid)  # the stack vanished: the reconciler repairs it
    driver.fail_apply = True
    with pytest.raises(RuntimeFailure):
        services.reconciler.convergence.repair(sid)
    assert journal == [f"run {sid}", f"undo {sid}"]
    assert _names(services, sid) == [
        ("secrets", "ok"),
        ("noop", "ok"),
        ("apply", "failed"),
        ("undo_noop", "ok"),
    ]
    driver.fail_apply = False
    assert services.reconciler.convergence.repair(sid) == "started the stack again"
    assert journal[-1] == f"run {sid}"


def test_the_step_table_is_the_documented_one() -> None:
    """docs/architecture.md shows each list; it must say what the code does."""
    from pathlib import Path

    doc = (Path(__file__).parents[3] / "docs" / "architecture.md").read_text()
    for kind, labels in StepLists.default().table().items():
        assert f"| {kind} | {' → '.join(labels)} |" in doc, kind
