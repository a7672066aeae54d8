"""The hosts of a runtime that spans several (Swarm): their state and what they hold."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select

from storefleet.registry.models import DeployPhase, Store, is_store
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
        """Every node with the stores pinned to it and the resources their plans reserve
        (501 on a runtime that runs every store on one host)."""
        nodes = self.kit.caps.need_nodes()
        with self.kit.registry.transaction() as session:
            deployed = list(
                session.execute(
                    select(Store.id, Store.plan).where(
                        is_store(), Store.phase != DeployPhase.NOT_DEPLOYED
                    )
                )
            )
        held: dict[str, list[str]] = {}
        for store_id, plan in deployed:
            pinned = nodes.placed_on(store_id)
            if pinned is not None:
                held.setdefault(pinned, []).append(plan)
        views = []
        for node in nodes.nodes():
            plans = held.get(node.name, [])
            limits = [self.kit.plan_limits.get(p) for p in plans]
            views.append(
                NodeView(
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
            )
        return views
