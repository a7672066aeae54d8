"""FastAPI dependencies: services, the caller (principal), role and ownership checks."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from storefleet.errors import ForbiddenError, NotFoundError
from storefleet.services.auth import Principal, Role
from storefleet.services.deployments import DeploymentService
from storefleet.services.status import StatusService
from storefleet.services.stores import StoreService
from storefleet.services.wiring import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_stores(request: Request) -> StoreService:
    services: Services = request.app.state.services
    return services.stores


async def get_deployments(request: Request) -> DeploymentService:
    services: Services = request.app.state.services
    return services.deployments


async def get_status(request: Request) -> StatusService:
    services: Services = request.app.state.services
    return services.status


async def get_principal(request: Request) -> Principal:
    principal: Principal = request.state.principal  # set by SecurityMiddleware
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
StoresDep = Annotated[StoreService, Depends(get_stores)]
DeploymentsDep = Annotated[DeploymentService, Depends(get_deployments)]
StatusDep = Annotated[StatusService, Depends(get_status)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through callers of `role` or above (403 otherwise)."""

    async def check(principal: PrincipalDep) -> Principal:
        if not principal.at_least(role):
            raise ForbiddenError(
                f"this action needs the {role} role; this token is {principal.role}"
            )
        return principal

    return check


def check_owner(principal: Principal, store_id: str) -> None:
    """A store token sees its own store only: any other store does not exist for it."""
    if principal.role == "store" and principal.store_id != store_id:
        raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)


async def own_store(store_id: uuid.UUID, principal: PrincipalDep) -> str:
    """Path parameter `store_id`, checked for ownership."""
    sid = str(store_id)
    check_owner(principal, sid)
    return sid


OwnedStore = Annotated[str, Depends(own_store)]
Operator = Depends(require("operator"))
Admin = Depends(require("admin"))
