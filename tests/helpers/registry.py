"""Registry states made directly (bare stores, an operation its control plane left)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from storefleet.registry.db import Registry
from storefleet.registry.models import Operation, OpState, Store, utcnow


def add_bare_stores(registry: Registry, count: int) -> list[str]:
    """`count` minimal store rows straight in the registry (for allocator tests and benches)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with registry.transaction() as session:
        session.add_all(
            Store(id=s, nombre=s, nombre_key=s, country_id="x", tokens_disponibles=0, plan="basic")
            for s in ids
        )
    return ids


def new_store(services: Any, name: str = "Tienda") -> str:
    """Register a store through the services (no HTTP); returns its id."""
    from storefleet.services.countries import country_id
    from storefleet.services.schemas import StoreCreate

    request = StoreCreate(
        nombre=name, country_id=country_id("ES"), tokens_disponibles=1, plan="basic"
    )
    return str(services.stores.create(request).id)


def crashed_operation(
    services: Any, store_id: str, phase: str | None, kind: str, params: str = "{}"
) -> str:
    """Leave the registry as a control plane that died mid-operation leaves it (a running
    operation of a dead plane holding an expired lock; `phase` None keeps the phase)."""
    op_id = str(uuid.uuid4())
    with services.registry.transaction() as session:
        session.add(
            Operation(
                id=op_id,
                store_id=store_id,
                kind=kind,
                state=OpState.RUNNING,
                params=params,
                steps="[]",
                cancel_requested=False,
                owner="dead-plane",
                started_at=utcnow(),
            )
        )
        session.execute(
            update(Store)
            .where(Store.id == store_id)
            .values(lock_token=op_id, lock_expires_at=utcnow() - timedelta(seconds=1))
        )
    if phase is not None:
        with services.registry.transaction() as session:
            session.execute(update(Store).where(Store.id == store_id).values(phase=phase))
    return op_id
