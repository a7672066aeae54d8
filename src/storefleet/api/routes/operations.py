"""Operations (every mutating action, recorded) and the reconciler's report."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from storefleet.api.deps import DeploymentsDep, ServicesDep
from storefleet.services.reconciler import ReconcilerReport
from storefleet.services.schemas import OperationView

router = APIRouter(tags=["operations"])


@router.get("/operations/{operation_id}")
def get_operation(operation_id: uuid.UUID, deployments: DeploymentsDep) -> OperationView:
    return deployments.ops.get(str(operation_id))


@router.post("/operations/{operation_id}/cancel", status_code=202)
def cancel_operation(operation_id: uuid.UUID, deployments: DeploymentsDep) -> OperationView:
    """Ask a running operation to stop; a cancelled deploy is rolled back completely."""
    return deployments.cancel(str(operation_id))


@router.get("/stores/{store_id}/operations")
def store_operations(store_id: uuid.UUID, deployments: DeploymentsDep) -> list[OperationView]:
    sid = str(store_id)
    deployments.status(sid)  # 404 for an unknown store
    return deployments.ops.for_store(sid)


@router.get("/reconciler")
def reconciler_report(services: ServicesDep) -> ReconcilerReport:
    """What the reconciler did lately, orphan stacks it removed and data no store owns."""
    return services.reconciler.report()
