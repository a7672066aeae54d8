"""Day-2 operations: stop/start/restart, versions and upgrades, backups, logs."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema

from storefleet.api.deps import Operator, OwnedStore, ServicesDep
from storefleet.api.streams import Followed, TokenAlive, lines_of, threads
from storefleet.services.backups import BackupView, RestoreResult
from storefleet.services.lifecycle import (
    ActionResult,
    FleetUpgradeRequest,
    UpgradeRequest,
    VersionsView,
)
from storefleet.services.schemas import OperationView, Timestamp

router = APIRouter(tags=["day-2"])

Wait = Annotated[
    bool, Query(description="Wait until done (the default); false: 202 with the operation.")
]
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": OperationView, "description": "accepted (wait=false)"}
}


def answer(result: BaseModel) -> BaseModel | JSONResponse:
    if isinstance(result, OperationView):
        return JSONResponse(result.model_dump(mode="json"), status_code=202)
    return result


def _action_route(action: str, doc: str) -> None:
    def act(
        store_id: uuid.UUID, services: ServicesDep, wait: Wait = True
    ) -> BaseModel | JSONResponse:
        run = getattr(services.lifecycle, action)
        return answer(run(str(store_id), wait=wait))

    act.__doc__ = doc
    router.add_api_route(
        f"/stores/{{store_id}}/{action}",
        act,
        methods=["POST"],
        name=f"{action}_store",
        response_model=ActionResult,
        responses=ACCEPTED,
        dependencies=[Operator],
    )


_action_route("stop", "Stop the store's stack; its ports, links and data are kept (`stopped`).")
_action_route("start", "Start a stopped store on the same ports, with its data.")
_action_route("restart", "Stop and start the store's stack; wait until it is healthy.")


@router.get("/versions", dependencies=[Operator])
def versions(services: ServicesDep) -> VersionsView:
    """Backend versions this control plane's runtime can run, and the default one."""
    return services.lifecycle.versions()


@router.post(
    "/stores/{store_id}/upgrade",
    response_model=ActionResult,
    responses=ACCEPTED,
    dependencies=[Operator],
)
def upgrade_store(
    store_id: uuid.UUID, body: UpgradeRequest, services: ServicesDep, wait: Wait = True
) -> BaseModel | JSONResponse:
    """Replace the store's backend by `version`, keeping its data. A version that does not
    become healthy within the deploy deadline is rolled back; the error says why."""
    return answer(services.lifecycle.upgrade(str(store_id), body.version, wait=wait))


@router.post("/fleet/upgrade", status_code=202, dependencies=[Operator])
def upgrade_fleet(body: FleetUpgradeRequest, services: ServicesDep) -> OperationView:
    """Upgrade every deployed store in waves of `batch_size`; stop once more than
    `max_failures` stores failed. The answer is the operation that shows the progress."""
    return services.lifecycle.fleet_upgrade(body)


@router.post(
    "/stores/{store_id}/backups",
    status_code=201,
    response_model=BackupView,
    responses=ACCEPTED,
    dependencies=[Operator],
)
def create_backup(
    store_id: uuid.UUID, services: ServicesDep, wait: Wait = True
) -> BaseModel | JSONResponse:
    """Back up the store's database now (pg_dump, or SQLite's online backup), with a SHA-256."""
    result = services.backups.create(str(store_id), wait=wait)
    if isinstance(result, OperationView):
        return answer(result)
    return JSONResponse(result.model_dump(mode="json"), status_code=201)


@router.get("/stores/{store_id}/backups", dependencies=[Operator])
def list_backups(store_id: OwnedStore, services: ServicesDep) -> list[BackupView]:
    return services.backups.for_store(store_id)


@router.get("/stores/{store_id}/backups/{backup_id}", dependencies=[Operator])
def get_backup(store_id: OwnedStore, backup_id: uuid.UUID, services: ServicesDep) -> BackupView:
    return services.backups.get(store_id, str(backup_id))


@router.get(
    "/stores/{store_id}/backups/{backup_id}/download",
    response_class=FileResponse,
    dependencies=[Operator],
)
def download_backup(
    store_id: OwnedStore, backup_id: uuid.UUID, services: ServicesDep
) -> FileResponse:
    """The backup file, checked against its SHA-256 first (also sent as `X-Checksum-SHA256`)."""
    view, path = services.backups.verified_file(store_id, str(backup_id))
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"store-{store_id}-{view.created_at:%Y%m%dT%H%M%SZ}-{path.name}",
        headers={"X-Checksum-SHA256": view.sha256},
    )


@router.post(
    "/stores/{store_id}/backups/{backup_id}/restore",
    response_model=RestoreResult,
    responses=ACCEPTED,
    dependencies=[Operator],
)
def restore_backup(
    store_id: uuid.UUID, backup_id: uuid.UUID, services: ServicesDep, wait: Wait = True
) -> BaseModel | JSONResponse:
    """Restore the backup into the same store (a corrupted backup is refused, 409)."""
    return answer(services.backups.restore(str(store_id), str(backup_id), wait=wait))


@router.get("/stores/{store_id}/logs", response_class=StreamingResponse)
async def store_logs(
    store_id: OwnedStore,
    services: ServicesDep,
    request: Request,
    follow: Followed,
    alive: TokenAlive,
    service: Annotated[
        str | SkipJsonSchema[None],
        Query(max_length=50, pattern=r"^[a-z][a-z0-9_-]*$", description="Default: backend"),
    ] = None,
    tail: Annotated[int, Query(ge=0, le=10_000)] = 100,
    since: Timestamp | SkipJsonSchema[None] = None,
) -> StreamingResponse:
    """The store's logs as text lines (each with its UTC time), secrets redacted; `follow`
    keeps the stream open for new lines (a few per token at once: 429 past the cap). Services:
    backend (default) and db (Docker) or supervisor (process runtime)."""
    pool = threads(request).streams
    lines = await to_thread.run_sync(
        lambda: services.logs.open(
            store_id, service=service, tail=tail, since=since, follow=follow
        ),
        limiter=pool,
    )
    return StreamingResponse(
        lines_of(lines, pool=pool, alive=alive), media_type="text/plain; charset=utf-8"
    )
