"""The hosts stores run on (a runtime that spans several: Swarm); moving stores between them."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from storefleet.api.deps import Operator, ServicesDep
from storefleet.api.routes.lifecycle import ACCEPTED, Wait, answer
from storefleet.services.nodes import NODE_NAME, MoveRequest, MoveResult, NodeView
from storefleet.services.schemas import OperationView

router = APIRouter(tags=["nodes"])

NodeName = Annotated[str, Path(pattern=NODE_NAME, description="The node's name")]


@router.get("/nodes", dependencies=[Operator])
def list_nodes(services: ServicesDep) -> list[NodeView]:
    """Each node: state, availability, address, the stores pinned to it and the CPU and
    memory their plans reserve. A runtime that runs every store on this host has one node,
    `local`."""
    return services.nodes.list()


@router.post(
    "/stores/{store_id}/move",
    response_model=MoveResult,
    responses=ACCEPTED,
    dependencies=[Operator],
)
def move_store(
    store_id: uuid.UUID, body: MoveRequest, services: ServicesDep, wait: Wait = True
) -> BaseModel | JSONResponse:
    """Move a running store to another node with its data: final backup on the old node,
    stack on the new one, restore, health check, then the old stack's data removed. On
    failure the store runs where it was. 409 `single_host` on a runtime with one host."""
    return answer(services.nodes.move(str(store_id), body.node, wait=wait))


@router.post("/nodes/{node}/drain", status_code=202, dependencies=[Operator])
def drain_node(node: NodeName, services: ServicesDep) -> OperationView:
    """Stop placing stores on the node and move its stores, one by one, to the least loaded
    other nodes; then the node is set to `drain`. The answer is the operation."""
    return services.nodes.drain(node)
