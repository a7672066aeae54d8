"""Who is signed in, and what they may see: the API's role rules, for the dashboard."""

from __future__ import annotations

import uuid

from fastapi import Request

from storefleet.errors import ForbiddenError, NotFoundError
from storefleet.services.auth import Principal, Role
from storefleet.services.wiring import Services


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def me(request: Request) -> Principal:
    principal: Principal = request.state.principal
    return principal


def need(request: Request, role: Role) -> Principal:
    who = me(request)
    if not who.at_least(role):
        raise ForbiddenError(f"this page needs the {role} role; you are signed in as {who.role}")
    return who


def own(request: Request, store_id: uuid.UUID) -> str:
    """The store id, if the signed-in token may see it (a store token: its own only)."""
    who = me(request)
    sid = str(store_id)
    if who.role == "store" and who.store_id != sid:
        raise NotFoundError(f"store {sid} does not exist", store_id=sid)
    return sid
