"""The warm pool: its members by plan and state, claims, misses, refills."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter

from storefleet.api.deps import Operator, ServicesDep
from storefleet.services.pool import PoolView

router = APIRouter(tags=["pool"])


@router.get("/pool", dependencies=[Operator])
async def pool_state(services: ServicesDep) -> PoolView:
    """Members wanted and present per plan (`filling`, `ready`, `stale`: of an older default
    version, about to be recycled), and this control plane's claims, misses and refills."""
    return await to_thread.run_sync(services.pool.view)
