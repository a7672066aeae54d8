"""FastAPI dependencies: the services of this app, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from storefleet.services.deployments import DeploymentService
from storefleet.services.stores import StoreService
from storefleet.services.wiring import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_stores(request: Request) -> StoreService:
    return get_services(request).stores


def get_deployments(request: Request) -> DeploymentService:
    return get_services(request).deployments


ServicesDep = Annotated[Services, Depends(get_services)]
StoresDep = Annotated[StoreService, Depends(get_stores)]
DeploymentsDep = Annotated[DeploymentService, Depends(get_deployments)]
