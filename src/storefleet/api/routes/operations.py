"""Operations (every mutating action, recorded) and the reconciler's report."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from storefleet.api.deps import Operator, OwnedStore, PrincipalDep, ServicesDep
from storefleet.errors import NotFoundError
from storefleet.services.reconciler import ReconcilerReport
from storefleet.services.schemas import OperationView

router = APIRouter(tags=["operations"])


@router.get("/operations/{operation_id}")
def get_operation(
    operation_id: uuid.UUID, services: ServicesDep, principal: PrincipalDep
) -> OperationView:
    op = services.ops.get(str(operation_id))
    if principal.role == "store" and op.store_id != principal.store_id:
        raise NotFoundError(f"operation {operation_id} does not exist")
    return op


@router.post("/operations/{operation_id}/cancel", status_code=202, dependencies=[Operator])
def cancel_operation(operation_id: uuid.UUID, services: ServicesDep) -> OperationView:
    """Ask a running operation to stop; a cancelled deploy is rolled back completely."""
    return services.runner.cancel(str(operation_id))


@router.get("/stores/{store_id}/operations")
def store_operations(store_id: OwnedStore, services: ServicesDep) -> list[OperationView]:
    services.stores.require(store_id)  # 404 for an unknown store
    return services.ops.for_store(store_id)


@router.get("/reconciler", dependencies=[Operator])
def reconciler_report(services: ServicesDep) -> ReconcilerReport:
    """What the reconciler did lately, orphan stacks it removed and data no store owns."""
    return services.reconciler.report()
