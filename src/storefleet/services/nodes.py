"""The hosts of a runtime that spans several (Swarm): their state and what they hold; a store
moved to another node, a node drained of its stores."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from storefleet.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RuntimeFailure,
    StorefleetError,
)
from storefleet.registry.models import DeployPhase, Store, is_store
from storefleet.runtime.base import NodeInfo
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.runner import OperationRunner
from storefleet.services.schemas import OperationView
from storefleet.services.steps import Context, StepLists, Toolkit, reason_of, run_steps

log = logging.getLogger(__name__)

NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(pattern=NODE_NAME, description="The node's name (GET /nodes)")


class MoveResult(BaseModel):
    message: str
    store_id: str
    status: str  # moved | already_there
    node: str
    from_node: str | None = None
    backup_id: str | None = None
    notes: list[str] = []


class NodeView(BaseModel):
    id: str
    name: str
    state: str  # ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    address: str
    manager: bool
    since: str  # when its state last changed (UTC)
    stores: int  # deployed stores pinned to it
    reserved_cpus: float  # the CPU limits of those stores' plans (per container, summed)
    reserved_memory_mb: int


class NodeService:
    def __init__(
        self,
        kit: Toolkit,
        *,
        runner: OperationRunner,
        steps: StepLists,
        backup_for_move: Callable[[str], Path],
    ) -> None:
        self.kit = kit
        self.runner = runner
        self.steps = steps
        self.backup_for_move = backup_for_move

    def list(self) -> list[NodeView]:
        """Every node with the stores pinned to it and the resources their plans reserve; a
        runtime that runs every store on this host has one node, `local`."""
        nodes = self.kit.caps.nodes
        with self.kit.registry.transaction() as session:
            deployed = list(
                session.execute(
                    select(Store.id, Store.plan).where(
                        is_store(), Store.phase != DeployPhase.NOT_DEPLOYED
                    )
                )
            )
        if nodes is None:
            return [self._view(LOCAL, [plan for _, plan in deployed])]
        held: dict[str, list[str]] = {}
        for store_id, plan in deployed:
            pinned = nodes.placed_on(store_id)
            if pinned is not None:
                held.setdefault(pinned, []).append(plan)
        return [self._view(node, held.get(node.name, [])) for node in nodes.nodes()]

    # -- moving stores ----------------------------------------------------------------------

    def _target(self, name: str, *, missing: type[StorefleetError] = InvalidInputError) -> NodeInfo:
        if self.kit.caps.relocation is None:
            raise ConflictError(
                f"the {self.kit.caps.runtime} runtime runs every store on this host: there is "
                "no other node to move a store to",
                code="single_host",
            )
        nodes = self.kit.caps.need_nodes().nodes()
        found = next((n for n in nodes if n.name == name), None)
        if found is None:
            known = ", ".join(n.name for n in nodes)
            raise missing(f"there is no node {name!r} (nodes: {known})", code="no_node")
        return found

    def move(self, store_id: str, node: str, *, wait: bool = True) -> MoveResult | OperationView:
        """Move a running store to `node`: its backend stops, a backup is taken (kept), the
        stack is started on the new node, the backup restored there, the store checked healthy
        and recorded there; only then is its data on the old node removed. On any failure
        before that, the store runs where it was, with its data."""
        target = self._target(node)
        if target.state != "ready" or target.availability != "active":
            raise ConflictError(
                f"node {node} is {target.state} and {target.availability}: it takes no store",
                code="node_unavailable",
            )
        here = self.kit.caps.need_nodes().placed_on(store_id)
        params = {"node": node, "from": here}  # a move cut short goes back by these
        return self.runner.operation(
            store_id, OpKind.MOVE, self._move_body(node), params, wait=wait
        )

    def _move_body(self, node: str) -> Callable[[RunningOp], MoveResult]:
        def body(run: RunningOp) -> MoveResult:
            store = self.kit.load(run.store_id)
            if store.phase != DeployPhase.DEPLOYED:
                raise ConflictError(
                    f"store {store.id} is {store.phase}: only a running store is moved",
                    code="not_deployed",
                    store_id=store.id,
                )
            nodes = self.kit.caps.need_nodes()
            here = nodes.placed_on(store.id)
            if here == node:
                return MoveResult(
                    message=f"store {store.id} already runs on {node}",
                    store_id=store.id,
                    status="already_there",
                    node=node,
                    from_node=node,
                )
            taken: list[Path] = []

            def backup(store_id: str) -> Path:
                taken.append(self.backup_for_move(store_id))
                return taken[-1]

            def explain(ctx: Context, exc: BaseException) -> BaseException:
                return RuntimeFailure(
                    f"the move of store {store.id} to {node} failed ({reason_of(exc)}); "
                    f"it runs on {here} as before",
                    store_id=store.id,
                )

            ctx = self.kit.context(run, store, node=node, backup_hook=backup)
            ctx.need_ports()
            run_steps(self.steps.move, ctx, failure="move failed", explain=explain)
            log.info("store %s moved from %s to %s", store.id, ctx.from_node, node)
            return MoveResult(
                message=f"store {store.id} moved from {ctx.from_node} to {node}",
                store_id=store.id,
                status="moved",
                node=node,
                from_node=ctx.from_node,
                backup_id=taken[0].stem if taken else None,
                notes=ctx.notes,
            )

        return body

    def drain(self, node: str) -> OperationView:
        """Take no new store on `node` (availability `pause`), move its stores one by one to
        the least loaded other nodes, then set it to `drain`. Runs in the background; the
        answer is the operation (one step per store). A store that fails to move stays where
        it is; the drain then stops, the node left paused."""
        self._target(node, missing=NotFoundError)
        return self.runner.fleet_operation(
            OpKind.DRAIN, {"node": node}, lambda run, result: self._drain(run, node, result)
        )

    def _drain(self, run: RunningOp, node: str, result: dict[str, Any]) -> None:
        relocation = self.kit.caps.need_relocation()
        moved: dict[str, str] = {}
        result.update(node=node, moved=moved)
        with run.step("pause"):
            relocation.set_availability(node, "pause")
        for store_id in self._stores_on(node, self.kit.caps.need_nodes().placed_on):
            self.runner.cancel_requested(run.id)
            with run.step(f"move_{store_id}"):
                target = relocation.choose_node(store_id)
                params = {"node": target, "from": node}
                self.runner.operation(store_id, OpKind.MOVE, self._move_body(target), params)
                moved[store_id] = target
        with run.step("drain"):
            relocation.set_availability(node, "drain")

    def _stores_on(self, node: str, placed_on: Callable[[str], str | None]) -> Sequence[str]:
        with self.kit.registry.transaction() as session:
            rows = session.execute(
                select(Store.id)
                .where(is_store(), Store.phase == DeployPhase.DEPLOYED)
                .order_by(Store.created_at, Store.id)
            ).scalars()
            ids = [*rows]
        return [sid for sid in ids if placed_on(sid) == node]

    def _view(self, node: NodeInfo, plans: Sequence[str]) -> NodeView:
        limits = [self.kit.plan_limits.get(p) for p in plans]
        return NodeView(
            id=node.id,
            name=node.name,
            state=node.state,
            availability=node.availability,
            address=node.address,
            manager=node.manager,
            since=node.since,
            stores=len(plans),
            # two containers per store (backend, database), each limited by its plan
            reserved_cpus=round(sum(2 * x.cpus for x in limits if x), 2),
            reserved_memory_mb=sum(2 * x.memory_mb for x in limits if x),
        )


# The one host of a runtime that runs every store here (process, docker)
LOCAL = NodeInfo(
    id="local",
    name="local",
    state="ready",
    availability="active",
    address="127.0.0.1",
    manager=True,
    since="",
)
