"""The edge: its CA certificate (public), the on-demand TLS check it asks (public), its state."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from storefleet.api.deps import Operator, ServicesDep
from storefleet.errors import NotFoundError
from storefleet.services.hostnames import EdgeView

router = APIRouter(tags=["edge"])

# Paths answered without a token (the edge and any client that wants the CA).
PUBLIC = ("/api/v1/edge/ca.pem", "/api/v1/edge/ask")
_ERROR: dict[str, Any] = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
}


@router.get(
    "/edge/ca.pem",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"application/x-pem-file": {}}, "description": "the root certificate"},
        404: {"description": "the edge is off, or uses ACME (publicly trusted)", **_ERROR},
    },
)
async def edge_ca(services: ServicesDep) -> Response:
    """The root certificate of the edge's own CA: trust it to reach stores over HTTPS
    (`curl --cacert ca.pem https://<store>.stores.localhost`). No token needed."""
    pem = await to_thread.run_sync(services.hostnames.ca_pem)
    if pem is None:
        raise NotFoundError("the edge has no CA of its own here (it is off, or uses ACME)")
    return Response(pem, media_type="application/x-pem-file")


@router.get(
    "/edge/ask",
    response_class=PlainTextResponse,
    responses={
        200: {"description": "the edge may get a certificate for this host"},
        404: {"description": "not a host of a deployed store", **_ERROR},
        429: {"description": "too many checks (see Retry-After)", **_ERROR},
    },
)
async def edge_ask(
    request: Request,
    services: ServicesDep,
    domain: Annotated[str, Query(min_length=1, max_length=253)],
) -> Response:
    """The edge asks before it gets a certificate on demand: yes only for the hostname or a
    custom domain of a deployed store. One file check, no registry read; rate-limited."""
    wait = request.app.state.ask_limiter.take("edge")
    if wait > 0:
        return PlainTextResponse(
            "too many checks\n", status_code=429, headers={"Retry-After": str(int(wait) + 1)}
        )
    if not services.hostnames.approves(domain):
        raise NotFoundError(f"{domain!r} is not a host of a deployed store")
    return PlainTextResponse("ok\n")


@router.get("/edge", dependencies=[Operator])
async def edge_state(services: ServicesDep) -> EdgeView:
    """Whether the edge runs, where it listens, and how many hosts it routes."""
    return await to_thread.run_sync(services.hostnames.view)
