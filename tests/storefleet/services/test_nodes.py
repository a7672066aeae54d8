"""Nodes: a runtime that runs every store on this host has one node, `local`, holding them."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import update

from fakes import FakeNodesDriver
from helpers import crashed_operation, new_store, wait_for
from storefleet.errors import ConflictError, InvalidInputError, NotFoundError, RuntimeFailure
from storefleet.registry.models import Operation
from storefleet.services.nodes import MoveResult
from storefleet.services.wiring import Services


def test_a_single_host_runtime_has_one_local_node_with_its_stores(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    deployed = new_store(services, "Uno")
    new_store(services, "Dos")  # registered only: holds nothing
    services.deployments.deploy(deployed)
    [node] = services.nodes.list()
    assert (node.name, node.state, node.availability, node.stores) == (
        "local",
        "ready",
        "active",
        1,
    )
    basic = services.settings.plan_limits["basic"]
    assert node.reserved_cpus == 2 * basic.cpus and node.reserved_memory_mb == 2 * basic.memory_mb


def test_a_move_carries_the_rows_and_drops_the_old_data_only_at_the_end(
    make_services: Callable[..., Services],
) -> None:
    fake = FakeNodesDriver()
    services = make_services(fake)
    sid = new_store(services, "Viajera")
    services.deployments.deploy(sid)
    assert fake.pinned[sid] == "h0"
    fake.rows[sid].append("order-1")
    moved = services.nodes.move(sid, "h1")
    assert isinstance(moved, MoveResult)
    assert (moved.status, moved.from_node, moved.node, moved.notes) == ("moved", "h0", "h1", [])
    assert fake.pinned[sid] == "h1" and fake.rows_on[sid, "h1"] == ["order-1"]
    assert (sid, "h0") not in fake.rows_on  # dropped once healthy on h1
    assert [b.reason for b in services.backups.for_store(sid)] == ["move"]
    assert services.nodes.move(sid, "h1").status == "already_there"  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="no node 'h7'"):
        services.nodes.move(sid, "h7")


def test_a_failed_move_leaves_the_store_where_it_was_with_its_data(
    make_services: Callable[..., Services],
) -> None:
    fake = FakeNodesDriver()
    services = make_services(fake)
    sid = new_store(services, "Quieta")
    services.deployments.deploy(sid)
    fake.rows[sid].append("order-1")
    fake.fail_restore = True
    with pytest.raises(RuntimeFailure, match="runs on h0 as before"):
        services.nodes.move(sid, "h1")
    assert fake.pinned[sid] == "h0" and sid in fake.stacks
    assert fake.rows_on == {(sid, "h0"): ["order-1"]}  # the copy on h1 went with its stack
    [op] = [o for o in services.ops.for_store(sid) if o.kind == "move"]
    names = [s.name for s in op.steps]
    assert names[-3:] == ["undo_apply_on_new_node", "undo_relocate_to_h1", "undo_quiesce"]


def test_a_drain_moves_every_store_off_the_node(
    make_services: Callable[..., Services],
) -> None:
    fake = FakeNodesDriver()
    services = make_services(fake)
    ids = [new_store(services, f"Tienda {i}") for i in range(3)]
    for sid in ids:
        services.deployments.deploy(sid)
    on_h0 = [sid for sid in ids if fake.pinned[sid] == "h0"]
    assert on_h0
    op = services.nodes.drain("h0")
    wait_for(lambda: services.ops.get(op.id).state in ("succeeded", "failed", "cancelled"), 10)
    done = services.ops.get(op.id)
    assert done.state == "succeeded", done.error
    assert set(done.result["moved"]) == set(on_h0)  # type: ignore[index]
    assert all(node == "h1" for node in fake.pinned.values())
    assert fake.availability["h0"] == "drain"
    with pytest.raises(NotFoundError):
        services.nodes.drain("h7")


def test_a_single_host_runtime_moves_nothing(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services, "Fija")
    services.deployments.deploy(sid)
    with pytest.raises(ConflictError, match="no other node to move a store to") as refused:
        services.nodes.move(sid, "local")
    assert refused.value.code == "single_host"
    with pytest.raises(ConflictError):
        services.nodes.drain("local")


def _cut_short_move(services: Services, sid: str, done: list[str]) -> str:
    """A move from h0 to h1 whose control plane died after the steps `done`."""
    op_id = crashed_operation(services, sid, None, "move", '{"node": "h1", "from": "h0"}')
    at = "2026-11-29T00:00:00+00:00"
    steps = [{"name": n, "state": "ok", "started_at": at, "finished_at": at} for n in done]
    with services.registry.transaction() as session:
        session.execute(
            update(Operation).where(Operation.id == op_id).values(steps=json.dumps(steps))
        )
    return op_id


def test_a_move_cut_short_before_its_record_goes_back_where_the_data_is(
    make_services: Callable[..., Services],
) -> None:
    fake = FakeNodesDriver()
    services = make_services(fake, store_lock_ttl_s=1)
    sid = new_store(services, "Interrumpida")
    services.deployments.deploy(sid)
    fake.rows[sid].append("order-1")
    # it had started on h1 with a restored copy, then its control plane died
    fake.relocate(sid, "h1", timeout_s=1)
    fake.rows_on[sid, "h1"] = ["order-1"]
    op_id = _cut_short_move(services, sid, ["secrets", "quiesce", "backup", "relocate_to_h1"])
    services.reconciler.run_once()
    assert fake.pinned[sid] == "h0" and sid in fake.stacks
    assert fake.rows_on == {(sid, "h0"): ["order-1"]}
    assert services.ops.get(op_id).state == "failed"
    assert "interrupted; back on h0" in (services.nodes.kit.load(sid).last_error or "")


def test_a_move_cut_short_after_its_record_is_finished(
    make_services: Callable[..., Services],
) -> None:
    fake = FakeNodesDriver()
    services = make_services(fake, store_lock_ttl_s=1)
    sid = new_store(services, "Casi")
    services.deployments.deploy(sid)
    fake.rows[sid].append("order-1")
    fake.relocate(sid, "h1", timeout_s=1)
    fake.rows_on[sid, "h1"] = ["order-1"]
    _cut_short_move(services, sid, ["secrets", "quiesce", "backup", "relocate_to_h1", "record"])
    services.reconciler.run_once()
    assert fake.pinned[sid] == "h1"
    assert fake.rows_on == {(sid, "h1"): ["order-1"]}  # the old copy removed
