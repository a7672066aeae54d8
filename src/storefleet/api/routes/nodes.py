"""The hosts stores run on (a runtime that spans several: Swarm)."""

from __future__ import annotations

from fastapi import APIRouter

from storefleet.api.deps import Operator, ServicesDep
from storefleet.services.nodes import NodeView

router = APIRouter(tags=["nodes"])


@router.get("/nodes", dependencies=[Operator])
def list_nodes(services: ServicesDep) -> list[NodeView]:
    """Each node: state, availability, address, the stores pinned to it and the CPU and
    memory their plans reserve. A runtime that runs every store on this host has one node,
    `local`."""
    return services.nodes.list()
