"""Port leases: a triple (backend, websocket, db) per store, unique across the registry."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storefleet.config import PortRange
from storefleet.errors import CapacityError
from storefleet.registry.db import Registry
from storefleet.registry.models import PortLease
from storefleet.runtime.base import Ports, bind_probe

ROLES = ("backend", "websocket", "db")


def port_is_free(port: int) -> bool:
    """True when nothing on this host listens on `port` (any address)."""
    return bind_probe(port)


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_overlap(port_range: PortRange, source: Path = EPHEMERAL_RANGE_FILE) -> str | None:
    """The host's ephemeral port range when `port_range` overlaps it, else None. Outgoing
    connections take ephemeral ports at any moment, so a leased port there may be taken
    between the lease and the moment the store binds it."""
    try:
        low, high = (int(v) for v in source.read_text().split())
    except (OSError, ValueError):
        return None
    if port_range.first <= high and port_range.last >= low:
        return f"{low}-{high}"
    return None


class PortAllocator:
    """Leases port triples from `port_range`. The registry's primary key on the port makes two
    stores on one port impossible, across threads and across control planes."""

    def __init__(
        self,
        registry: Registry,
        port_range: PortRange,
        probe: Callable[[int], bool] = port_is_free,
    ) -> None:
        self.registry = registry
        self.port_range = port_range
        self.probe = probe

    def leased(self) -> int:
        """How many ports are leased (inside or outside the current range)."""
        with self.registry.transaction() as session:
            return int(session.scalar(select(func.count()).select_from(PortLease)) or 0)

    def ports_of(self, store_id: str) -> Ports | None:
        with self.registry.transaction() as session:
            return self.ports_in(session, store_id)

    @staticmethod
    def ports_in(session: Session, store_id: str) -> Ports | None:
        rows = session.execute(
            select(PortLease.role, PortLease.port).where(PortLease.store_id == store_id)
        ).all()
        by_role = {role: port for role, port in rows}
        if set(by_role) != set(ROLES):
            return None
        return Ports(by_role["backend"], by_role["websocket"], by_role["db"])

    def lease(self, store_id: str) -> Ports:
        """Lease a free triple for `store_id` (its existing one, if it has a whole one)."""
        existing = self.ports_of(store_id)
        if existing is not None:
            return existing
        self.release(store_id)  # a partial leftover of an interrupted lease
        foreign: set[int] = set()
        lost = 0
        while True:
            with self.registry.transaction() as session:
                taken = set(session.scalars(select(PortLease.port))) | foreign
            free = [b for b in self.port_range.bases() if not {b, b + 1, b + 2} & taken]
            if not free:
                break
            # Alone, a request takes the lowest free triple. After losing a race it picks among
            # the next few, so that concurrent requests stop chasing the same triple.
            base = free[0] if lost == 0 else random.choice(free[: min(len(free), 8 * lost)])  # noqa: S311 (spreading, not security)
            triple = (base, base + 1, base + 2)
            if not all(self.probe(p) for p in triple):
                foreign.update(triple)  # held by a process storefleet does not know: skip it
                continue
            try:
                with self.registry.transaction() as session:
                    session.add_all(
                        PortLease(port=p, store_id=store_id, role=role)
                        for p, role in zip(triple, ROLES, strict=True)
                    )
            except IntegrityError:
                lost += 1  # another request won this triple
                continue
            return Ports(*triple)
        raise CapacityError(
            f"no free port triple left in STOREFLEET_PORT_RANGE {self.port_range}",
            port_range=str(self.port_range),
        )

    def release(self, store_id: str) -> None:
        with self.registry.transaction() as session:
            session.execute(delete(PortLease).where(PortLease.store_id == store_id))
