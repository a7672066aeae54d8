"""Stores and their deployments: the seed's contract, exactly."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from storefleet.api.deps import (
    DeploymentsDep,
    Operator,
    OwnedStore,
    PrincipalDep,
    ServicesDep,
    StatusDep,
    StoresDep,
)
from storefleet.services.api_keys import ApiKeyView
from storefleet.services.schemas import (
    DeploymentView,
    DeployResult,
    DeployStatus,
    OperationView,
    StoreCreate,
    StoreUpdate,
    StoreView,
    UndeployResult,
)
from storefleet.services.wiring import Services

router = APIRouter(prefix="/stores", tags=["stores"])

Purge = Annotated[
    bool, Query(description="Also delete the store's data (database). Default: keep it.")
]
FinalBackup = Annotated[
    bool,
    Query(description="With purge: take a final backup first (the default); false: do not."),
]


class StoreCreated(BaseModel):
    message: str
    store: StoreView
    deployment: DeploymentView | None
    api_key: str = Field(
        description="The store's API key, required by its backend's orders API and websocket "
        "(`X-Api-Key`). Later: GET /stores/{id}/api-key with the store's token."
    )


@router.post("/", status_code=201, dependencies=[Operator])
@router.post("", status_code=201, include_in_schema=False, dependencies=[Operator])
def create_store(
    body: StoreCreate,
    services: ServicesDep,
    deploy: Annotated[bool, Query(description="Deploy the store's stack right away.")] = True,
) -> StoreCreated:
    """Register a store and (unless `deploy=false`) deploy its own backend and database."""
    stores = services.stores
    if not deploy:
        store = stores.create(body)
        key = services.api_keys.issue(store.id)
        return StoreCreated(message="store registered", store=store, deployment=None, api_key=key)
    return _create_and_deploy(body, services)


def _create_and_deploy(body: StoreCreate, services: Services) -> StoreCreated:
    store, result = services.stores.create_and_deploy(body)
    deployment = DeploymentView(
        status=result.status,
        back_link=result.back_link,
        db_link=result.db_link,
        ports=result.ports,
        hostname=result.hostname,
    )
    return StoreCreated(
        message="store registered and deployed",
        store=store,
        deployment=deployment,
        api_key=services.api_keys.issue(store.id),
    )


@router.post("/deploy", status_code=201, dependencies=[Operator])
def create_and_deploy_store(body: StoreCreate, services: ServicesDep) -> StoreCreated:
    """Register a store and deploy it in one call (the seed's test client uses this path):
    the same body and answer as `POST /stores/`; a duplicate `nombre` is a 409."""
    return _create_and_deploy(body, services)


@router.get("/", response_model=list[StoreView])
@router.get("", include_in_schema=False, response_model=list[StoreView])
async def list_stores(
    stores: StoresDep,
    principal: PrincipalDep,
    response: Response,
    limit: Annotated[
        int | None, Query(ge=1, le=1000, description="At most this many (default: all)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Skip this many first")] = 0,
) -> Response | list[StoreView]:
    """Stores in registration order with their observed status (a store token sees its own
    store only). Without `limit`, all of them (the seed's answer); with it, a page, and
    `X-Total-Count` says how many stores there are in all. An answer is at most
    `STOREFLEET_STATUS_MAX_AGE_S` old (README: how fresh a status is)."""
    if principal.role == "store" and principal.store_id:
        own = [await run_in_threadpool(stores.get, principal.store_id)]
        response.headers["X-Total-Count"] = "1"
        return own[offset:][:limit] if limit is not None else own[offset:]
    page = stores.recent_list_json(limit=limit, offset=offset)
    if page is None:
        page = await run_in_threadpool(partial(stores.list_json, limit=limit, offset=offset))
    return Response(
        page.body, media_type="application/json", headers={"X-Total-Count": str(page.total)}
    )


@router.get("/{store_id}")
def get_store(store_id: OwnedStore, stores: StoresDep) -> StoreView:
    return stores.get(store_id)


@router.get("/{store_id}/api-key")
def get_api_key(store_id: OwnedStore, services: ServicesDep) -> ApiKeyView:
    """The store's API key (for its own token, or an operator)."""
    return services.api_keys.get(store_id)


@router.post("/{store_id}/api-key/rotate")
def rotate_api_key(store_id: OwnedStore, services: ServicesDep) -> ApiKeyView:
    """A new API key; the running backend refuses the old one from its next request on."""
    return services.api_keys.rotate(store_id)


@router.patch("/{store_id}", dependencies=[Operator])
def update_store(store_id: uuid.UUID, body: StoreUpdate, stores: StoresDep) -> StoreView:
    return stores.update(str(store_id), body)


@router.delete("/{store_id}", status_code=204, dependencies=[Operator])
def delete_store(
    store_id: uuid.UUID, stores: StoresDep, purge: Purge = False, final_backup: FinalBackup = True
) -> Response:
    """Undeploy the store if it is deployed, then delete it. Its data is kept unless `purge`
    (which takes a final backup first, kept in the backups folder, unless `final_backup=false`)."""
    stores.delete(str(store_id), purge=purge, final_backup=final_backup)
    return Response(status_code=204)


Wait = Annotated[
    bool,
    Query(description="Wait until done (the default, as seed clients expect); false: 202."),
]


@router.post(
    "/{store_id}/deploy",
    response_model=DeployResult,
    dependencies=[Operator],
    responses={202: {"model": OperationView, "description": "accepted (wait=false)"}},
)
def deploy_store(
    store_id: uuid.UUID, deployments: DeploymentsDep, wait: Wait = True
) -> DeployResult | JSONResponse:
    if not wait:
        op = deployments.deploy_async(str(store_id))
        return JSONResponse(op.model_dump(mode="json"), status_code=202)
    return deployments.deploy(str(store_id))


@router.get("/{store_id}/deploy/status")
async def deploy_status(store_id: OwnedStore, status: StatusDep) -> DeployStatus:
    """Status observed from the runtime (processes or containers, and health checks), at most
    `STOREFLEET_STATUS_MAX_AGE_S` ago (README: how fresh a status is)."""
    found = status.recent(store_id)
    if found is None:
        found = await run_in_threadpool(status.status, store_id)
    return found


@router.delete(
    "/{store_id}/deploy",
    response_model=UndeployResult,
    dependencies=[Operator],
    responses={202: {"model": OperationView, "description": "accepted (wait=false)"}},
)
def undeploy_store(
    store_id: uuid.UUID,
    deployments: DeploymentsDep,
    purge: Purge = False,
    wait: Wait = True,
    final_backup: FinalBackup = True,
) -> UndeployResult | JSONResponse:
    if not wait:
        op = deployments.undeploy_async(str(store_id), purge=purge, final_backup=final_backup)
        return JSONResponse(op.model_dump(mode="json"), status_code=202)
    return deployments.undeploy(str(store_id), purge=purge, final_backup=final_backup)
