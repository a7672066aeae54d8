"""Operations in the registry: recorded before anything acts, each step and end with it, and an
event for each in the same transaction."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpers import new_store
from storefleet.errors import ConflictError, OperationCancelledError, RuntimeFailure
from storefleet.registry.models import OpState
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.wiring import Services


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services()


def test_an_operation_records_its_steps_end_and_events(services: Services) -> None:
    sid = new_store(services, "Registrada")
    op = services.ops.create(sid, OpKind.BACKUP, {"reason": "manual"})
    assert op.state == "pending" and op.params == {"reason": "manual"}
    services.ops.start(op.id)
    run = RunningOp(op.id, sid, OpKind.BACKUP, services.ops)
    with run.step("first"):
        pass
    with pytest.raises(RuntimeFailure), run.step("second"):
        raise RuntimeFailure("the disk is full")
    services.ops.finish(op.id, OpState.FAILED, error="the disk is full")
    done = services.ops.get(op.id)
    assert done.state == "failed" and done.error == "the disk is full"
    assert [(s.name, s.state, s.error) for s in done.steps] == [
        ("first", "ok", None),
        ("second", "failed", "the disk is full"),
    ]
    types = [e.type for e in services.events.after(0, store_id=sid)]
    # each step twice (running, then ok or failed)
    assert types[-6:] == ["operation.started", *["operation.step"] * 4, "operation.finished"]


def test_a_cancel_stops_before_the_next_cancellable_step(services: Services) -> None:
    sid = new_store(services, "Cancelable")
    op = services.ops.create(sid, OpKind.BACKUP)
    services.ops.start(op.id)
    run = RunningOp(op.id, sid, OpKind.BACKUP, services.ops)
    run.cancel.set()
    with pytest.raises(OperationCancelledError), run.step("never"):
        raise AssertionError("a cancelled operation starts no cancellable step")
    with run.step("clean_up", cancellable=False):
        pass  # what must run whatever happens still runs
    assert [s.name for s in services.ops.get(op.id).steps] == ["clean_up"]


def test_only_a_running_operation_can_be_cancelled(services: Services) -> None:
    sid = new_store(services, "Terminada")
    op = services.ops.create(sid, OpKind.BACKUP)
    services.ops.start(op.id)
    assert services.ops.request_cancel(op.id).cancel_requested
    services.ops.finish(op.id, OpState.CANCELLED, error="cancelled")
    with pytest.raises(ConflictError):
        services.ops.request_cancel(op.id)


def test_a_cancel_asked_in_another_worker_reaches_the_operation_at_once(
    make_services: Callable[..., Services],
) -> None:
    """Two services on one data dir are two workers of one control plane: a cancel asked in
    the one where the operation does not run wakes the other's lock keeper, which reads the
    flag at once instead of at its next renewal (every ttl/6, 5 s here)."""
    here, there = make_services(), make_services()
    sid = new_store(here, "Lejana")
    op = here.ops.create(sid, OpKind.BACKUP)
    here.ops.start(op.id)
    run = RunningOp(op.id, sid, OpKind.BACKUP, here.ops)
    here.keeper.hold(run)
    here.keeper.start()
    try:
        there.runner.cancel(op.id)
        assert run.cancel.wait(2.5)
    finally:
        here.keeper.release(op.id)
