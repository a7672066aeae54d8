"""The hosts of a runtime that spans several (Swarm): their state and what they hold."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from sqlalchemy import select

from storefleet.registry.models import DeployPhase, Store, is_store
from storefleet.runtime.base import NodeInfo
from storefleet.services.steps import Toolkit


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
    def __init__(self, kit: Toolkit) -> None:
        self.kit = kit

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
