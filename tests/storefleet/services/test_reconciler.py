"""The reconciler's decisions, on both registries, with the fake driver."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from fakes import fake_of
from helpers import crashed_operation
from storefleet.errors import PermanentFailure
from storefleet.registry.models import DeployPhase, Operation, Store, utcnow
from storefleet.runtime.base import Ports, StackSpec
from storefleet.services.countries import country_id
from storefleet.services.schemas import StoreCreate
from storefleet.services.wiring import Services


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services(port_range="32000-32029", repair_backoff_initial_s=60)


def _store(services: Services, name: str = "Tienda") -> str:
    request = StoreCreate(
        nombre=name, country_id=country_id("ES"), tokens_disponibles=1, plan="basic"
    )
    return services.stores.create(request).id


def _phase(services: Services, store_id: str) -> str | None:
    with services.registry.transaction() as session:
        store = session.get(Store, store_id)
        return None if store is None else store.phase


def test_interrupted_deploy_without_healthy_stack_is_rolled_back(services: Services) -> None:
    sid = _store(services)
    services.allocator.lease(sid)
    dead_op = crashed_operation(services, sid, DeployPhase.DEPLOYING, "deploy")
    actions = services.reconciler.run_once()
    assert [a.action for a in actions] == ["rolled back an interrupted deploy"]
    assert _phase(services, sid) == DeployPhase.NOT_DEPLOYED
    assert services.allocator.ports_of(sid) is None
    assert services.ops.get(dead_op).state == "failed"
    assert "interrupted" in (services.ops.get(dead_op).error or "")
    assert services.reconciler.run_once() == []  # converged: nothing more to do


def test_interrupted_deploy_with_healthy_stack_is_finished(services: Services) -> None:
    sid = _store(services)
    ports = services.allocator.lease(sid)
    fake_of(services).apply(StackSpec(sid, "basic", ports), timeout_s=1)
    crashed_operation(services, sid, DeployPhase.DEPLOYING, "deploy")
    assert [a.action for a in services.reconciler.run_once()] == ["finished an interrupted deploy"]
    view = services.stores.get(sid)
    assert view.status == "running" and view.back_link == f"http://127.0.0.1:{ports.backend_port}"


def test_interrupted_delete_is_finished_and_data_kept_unless_purged(services: Services) -> None:
    sid = _store(services)
    services.deployments.deploy(sid)
    crashed_operation(services, sid, DeployPhase.UNDEPLOYING, "delete", '{"purge": false}')
    assert [a.action for a in services.reconciler.run_once()] == ["finished an interrupted delete"]
    assert _phase(services, sid) is None
    assert sid not in fake_of(services).stacks and sid in fake_of(services).data
    assert services.reconciler.report().orphan_data == [sid]  # reported, never removed


def test_vanished_stack_is_repaired_with_back_off(services: Services) -> None:
    sid = _store(services)
    services.deployments.deploy(sid)
    fake = fake_of(services)
    fake.stacks.clear()  # e.g. removed by hand
    assert [a.action for a in services.reconciler.run_once()] == ["started the stack again"]
    assert sid in fake.stacks
    fake.stacks.clear()
    fake.fail_apply = True
    first = services.reconciler.run_once()
    assert first and "repair failed" in first[0].action
    applies = fake.applies
    assert services.reconciler.run_once() == []  # backing off: no hot loop
    assert fake.applies == applies
    assert "repair failed" in (services.status.status(sid).last_error or "")


def test_leaked_leases_and_orphans(services: Services) -> None:
    sid = _store(services)
    services.allocator.lease(sid)  # leaked: the store is not deployed
    fake = fake_of(services)
    orphan = str(uuid.uuid4())
    fake.apply(StackSpec(orphan, "basic", Ports(1, 2, 3)), timeout_s=1)
    actions = {a.store_id: a.action for a in services.reconciler.run_once()}
    assert "leftovers" in actions[sid] and "orphan" in actions[orphan]
    assert services.allocator.ports_of(sid) is None
    assert orphan not in fake.stacks and orphan in fake.data
    report = services.reconciler.report()
    assert report.orphan_stacks_removed == [orphan] and report.orphan_data == [orphan]


def test_a_live_lock_is_never_touched(services: Services) -> None:
    sid = _store(services)
    with services.registry.transaction() as session:
        session.execute(
            update(Store)
            .where(Store.id == sid)
            .values(
                phase=DeployPhase.DEPLOYING,
                lock_token=str(uuid.uuid4()),
                lock_expires_at=utcnow() + timedelta(seconds=60),
            )
        )
    assert services.reconciler.run_once() == []
    assert _phase(services, sid) == DeployPhase.DEPLOYING
    with services.registry.transaction() as session:
        kinds = list(session.scalars(select(Operation.kind).where(Operation.store_id == sid)))
    assert kinds == []  # nothing recorded for a store that was not its turn


def test_operations_record_steps_and_cancel(services: Services) -> None:
    sid = _store(services)
    services.deployments.deploy(sid)
    (op,) = services.ops.for_store(sid)
    assert op.kind == "deploy" and op.state == "succeeded"
    assert [s.name for s in op.steps] == ["intent", "lease_ports", "secrets", "apply", "record"]
    assert all(s.state == "ok" for s in op.steps)
    assert op.result and op.result["status"] == "deployed"
    with pytest.raises(Exception, match="already ended"):
        services.runner.cancel(op.id)


def test_an_expired_lock_of_a_live_local_operation_is_never_taken(services: Services) -> None:
    # a heartbeat delayed by load lets the lock expire while the operation still runs here
    from storefleet.services.operations import RunningOp

    sid = _store(services)
    op_id = crashed_operation(
        services, sid, DeployPhase.DEPLOYING, "deploy"
    )  # expired lock, op running
    services.keeper.hold(RunningOp(op_id, sid, "deploy", services.ops))
    try:
        assert services.reconciler.run_once() == []
        assert _phase(services, sid) == DeployPhase.DEPLOYING
    finally:
        services.keeper.release(op_id)
    assert [a.action for a in services.reconciler.run_once()] == [
        "rolled back an interrupted deploy"
    ]


def test_a_permanent_failure_is_reported_once_then_left_until_the_store_changes(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(repair_backoff_initial_s=0.001, repair_backoff_max_s=0.001)
    sid = _store(services)
    services.deployments.deploy(sid)
    fake = fake_of(services)

    def next_pass() -> list[str]:
        fake.stacks.clear()  # the stack is gone again (a failed fake apply leaves one)
        time.sleep(0.01)  # past the 1 ms back-off
        return [a.action for a in services.reconciler.run_once()]

    fake.fail_apply = True  # retryable: every pass tries again
    assert ["repair failed" in a for a in next_pass() + next_pass()] == [True, True]
    fake.fail_apply = False

    def unfixable(spec: StackSpec, **_kw: object) -> None:
        raise PermanentFailure(f"version {spec.version!r} is not known to the fake runtime")

    fake.apply = unfixable  # type: ignore[method-assign]
    (first,) = next_pass()
    assert "not retried until the store changes" in first
    assert next_pass() == [] and next_pass() == []  # reported once, not retried
    del fake.apply  # the runtime is fixed; the reconciler still leaves the store alone
    assert next_pass() == []
    services.backups.create(sid)  # until an operation on the store ends
    assert next_pass() == ["started the stack again"]
