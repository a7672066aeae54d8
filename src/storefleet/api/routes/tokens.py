"""API tokens and the audit log (admin only)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from storefleet.api.deps import Admin, ServicesDep
from storefleet.services.auth import AuditView, TokenCreate, TokenCreated, TokenView
from storefleet.services.schemas import Timestamp

router = APIRouter(tags=["security"], dependencies=[Admin])


@router.post("/tokens", status_code=201)
def create_token(body: TokenCreate, services: ServicesDep) -> TokenCreated:
    """A new token; its value is in this answer only (the registry keeps a hash)."""
    return services.tokens.create(body)


@router.get("/tokens")
def list_tokens(services: ServicesDep) -> list[TokenView]:
    return services.tokens.list()


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: uuid.UUID, services: ServicesDep) -> Response:
    services.tokens.revoke(str(token_id))
    return Response(status_code=204)


@router.get("/audit", response_model=list[AuditView])
def audit_log(
    services: ServicesDep,
    token_id: uuid.UUID | None = None,
    store_id: uuid.UUID | None = None,
    outcome: Literal["ok", "error", "denied"] | None = None,
    since: Timestamp | None = None,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """Mutating requests, newest first: token, action, store, time, outcome. Requests without
    a valid token are one entry per client address and minute, with their `count`. Pages:
    `before=<id>`; the header `X-Next-Before` gives the next page's value while there is one."""
    entries = services.audit.query(
        token_id=str(token_id) if token_id else None,
        store_id=str(store_id) if store_id else None,
        outcome=outcome,
        since=since,
        before=before,
        limit=limit,
    )
    headers = {"X-Next-Before": str(entries[-1].id)} if len(entries) == limit else {}
    body = [e.model_dump(mode="json") for e in entries]
    return JSONResponse(body, headers=headers)
