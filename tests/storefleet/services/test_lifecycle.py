"""Stop/start/restart, upgrades with rollback, fleet waves and plan limits (fake driver)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from fakes import fake_of
from helpers import crashed_operation, new_store
from storefleet.errors import ConflictError, InvalidInputError, RuntimeFailure
from storefleet.registry.models import DeployPhase, Operation, OpState, utcnow
from storefleet.runtime.base import Limits
from storefleet.services.lifecycle import FleetUpgradeRequest
from storefleet.services.schemas import StoreUpdate
from storefleet.services.wiring import Services


def test_stop_keeps_ports_links_and_data_and_start_reuses_them(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services)
    deployed = services.deployments.deploy(sid)
    services.lifecycle.stop(sid)
    status = services.status.status(sid)
    assert status.status == "stopped" and status.ports == deployed.ports
    assert status.back_link == deployed.back_link
    assert sid in fake_of(services).data
    services.reconciler.run_once()  # a stopped store is not "repaired"
    assert services.status.status(sid).status == "stopped"
    assert services.lifecycle.stop(sid).status == "already_stopped"  # type: ignore[union-attr]
    assert services.lifecycle.start(sid).status == "started"  # type: ignore[union-attr]
    again = services.status.status(sid)
    assert again.status == "running" and again.ports == deployed.ports
    assert services.lifecycle.start(sid).status == "already_running"  # type: ignore[union-attr]


def test_deploy_of_a_stopped_store_starts_it_on_its_ports(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services)
    first = services.deployments.deploy(sid)
    services.lifecycle.stop(sid)
    second = services.deployments.deploy(sid)
    assert second.status == "deployed" and second.ports == first.ports


def test_restart_and_refusals(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    with pytest.raises(ConflictError):
        services.lifecycle.stop(sid)  # not deployed
    services.deployments.deploy(sid)
    applies = fake_of(services).applies
    assert services.lifecycle.restart(sid).status == "restarted"  # type: ignore[union-attr]
    assert fake_of(services).applies == applies + 1
    kinds = [op.kind for op in services.ops.for_store(sid)]
    assert kinds[:2] == ["restart", "deploy"]


def test_a_running_store_marked_stopped_is_stopped_again(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    services.lifecycle.stop(sid)
    fake_of(services).stopped.discard(sid)  # someone started it behind our back
    services.reconciler.run_once()
    assert sid in fake_of(services).stopped


def test_upgrade_records_the_version_and_unknown_versions_are_refused(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    assert services.deployments.kit.load(sid).version == "0.1.0"
    result = services.lifecycle.upgrade(sid, "0.2.0")
    assert result.status == "upgraded" and result.version == "0.2.0"  # type: ignore[union-attr]
    assert fake_of(services).stacks[sid].version == "0.2.0"
    assert services.deployments.kit.load(sid).version == "0.2.0"
    with pytest.raises(InvalidInputError) as refused:
        services.lifecycle.upgrade(sid, "7.0.0")
    assert "available: 0.1.0, 0.2.0" in refused.value.message


def test_an_unhealthy_version_is_rolled_back_and_the_operation_says_why(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    with pytest.raises(RuntimeFailure) as failed:
        services.lifecycle.upgrade(sid, "9.9.9-broken")
    assert "did not become healthy" in failed.value.message
    assert "rolled back to 0.1.0" in failed.value.message
    assert fake_of(services).stacks[sid].version == "0.1.0"
    store = services.deployments.kit.load(sid)
    assert store.version == "0.1.0" and store.phase == DeployPhase.DEPLOYED
    op = services.ops.for_store(sid)[0]
    assert op.kind == "upgrade" and op.state == "failed" and "rolled back" in (op.error or "")
    assert [(s.name, s.state) for s in op.steps] == [
        ("apply_9.9.9-broken", "failed"),
        ("roll_back_to_0.1.0", "ok"),
    ]


def _wait_op(services: Services, op_id: str) -> None:
    deadline = time.monotonic() + 30
    while services.ops.get(op_id).state in ("pending", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_fleet_upgrade_in_waves(make_services: Callable[..., Services]) -> None:
    services = make_services()
    ids = [new_store(services, f"Flota {i}") for i in range(5)]
    for sid in ids:
        services.deployments.deploy(sid)
    op = services.lifecycle.fleet_upgrade(FleetUpgradeRequest(version="0.2.0", batch_size=2))
    _wait_op(services, op.id)
    done = services.ops.get(op.id)
    assert done.state == "succeeded" and done.store_id == "fleet"
    assert [s.name for s in done.steps] == ["wave_1_of_3", "wave_2_of_3", "wave_3_of_3"]
    assert done.result is not None and sorted(done.result["upgraded"]) == sorted(ids)
    assert {services.deployments.kit.load(s).version for s in ids} == {"0.2.0"}


def test_fleet_upgrade_stops_when_failures_exceed_the_limit(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    ids = [new_store(services, f"Ola {i}") for i in range(6)]
    for sid in ids:
        services.deployments.deploy(sid)
    failing = {ids[0], ids[3]}  # their new version never gets healthy
    fake_of(services).fail_when = lambda spec: spec.store_id in failing and spec.version == "0.2.0"
    request = FleetUpgradeRequest(version="0.2.0", batch_size=2, max_failures=1)
    op = services.lifecycle.fleet_upgrade(request)
    _wait_op(services, op.id)
    done = services.ops.get(op.id)
    assert done.state == "failed" and "more than max_failures=1" in (done.error or "")
    assert done.result is not None
    assert set(done.result["failed"]) == {ids[0], ids[3]}
    assert sorted(done.result["upgraded"]) == sorted([ids[1], ids[2]])
    assert {services.deployments.kit.load(s).version for s in ids[4:]} == {"0.1.0"}  # not reached


def test_a_new_plan_gives_the_stack_new_limits(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    assert fake_of(services).stacks[sid].limits == Limits(cpus=0.5, memory_mb=256)
    services.stores.update(sid, StoreUpdate(plan="enterprise"))
    assert fake_of(services).stacks[sid].limits == Limits(cpus=2.0, memory_mb=1024)
    assert services.ops.for_store(sid)[0].kind == "apply_plan"
    fake_of(services).fail_when = lambda spec: spec.plan == "premium"
    with pytest.raises(RuntimeFailure, match="plan enterprise restored"):
        services.stores.update(sid, StoreUpdate(plan="premium"))
    assert services.deployments.kit.load(sid).plan == "enterprise"


def test_an_upgrade_cut_short_by_a_crash_converges_on_the_recorded_version(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(store_lock_ttl_s=1)
    sid = new_store(services)
    services.deployments.deploy(sid)
    fake = fake_of(services)
    # a dead control plane had started the new version, then died before recording it
    fake.stacks[sid] = dataclasses.replace(fake.stacks[sid], version="0.2.0")
    op_id = crashed_operation(services, sid, None, "upgrade", '{"version": "0.2.0"}')
    services.reconciler.run_once()
    assert fake.stacks[sid].version == "0.1.0"
    assert services.ops.get(op_id).state == "failed"
    assert "interrupted" in (services.ops.get(op_id).error or "")


def test_a_fleet_upgrade_whose_control_plane_died_is_marked_failed(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(deploy_timeout_s=1, undeploy_timeout_s=1, store_lock_ttl_s=1)
    dead = services.ops.create("fleet", "fleet_upgrade", {"version": "0.2.0"})
    with services.registry.transaction() as session:
        op = session.get(Operation, dead.id)
        assert op is not None
        op.state, op.owner = OpState.RUNNING, "dead-plane"
        op.started_at = utcnow() - timedelta(minutes=5)
    services.reconciler.run_once()
    ended = services.ops.get(dead.id)
    assert ended.state == "failed" and "abandoned" in (ended.error or "")
    mine = services.lifecycle.fleet_upgrade(FleetUpgradeRequest(version="0.2.0"))
    _wait_op(services, mine.id)
    assert services.ops.get(mine.id).state == "succeeded"  # a live one is left alone


def test_status_shows_the_version(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    assert services.status.status(sid).version is None
    services.deployments.deploy(sid)
    assert services.status.status(sid).version == "0.1.0"
    services.lifecycle.upgrade(sid, "0.2.0")
    assert services.status.status(sid).version == "0.2.0"
