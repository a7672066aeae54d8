"""What the dashboard shows: the fleet table (search, filters, sorting, pages) and the overview.

Both read the registry once and the runtime once (`StatusService.fleet_words`: one pass for the
whole fleet, at most the observation window old), then filter and sort in memory: at 1,000
stores that is a few milliseconds, and the status words match what `GET /stores/` says.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select

from storefleet.registry.models import OP_DONE, Operation, OpState, Store, is_store, utcnow
from storefleet.services.events import EventLog, EventView
from storefleet.services.hostnames import Hostnames
from storefleet.services.ports import PortAllocator
from storefleet.services.reconciler import Reconciler
from storefleet.services.status import StatusService
from storefleet.services.steps import Toolkit

SortKey = Literal["nombre", "created_at", "status", "plan", "country_id", "version"]
SORT_KEYS: tuple[SortKey, ...] = ("nombre", "created_at", "status", "plan", "country_id", "version")
PAGE_SIZES = (25, 50, 100)
ATTENTION = ("error", "degraded")
# A store whose last few operations failed in a row is crash-looping (the reconciler keeps
# repairing it and the repair keeps failing).
LOOP_FAILURES = 3


@dataclass(frozen=True)
class StoreQuery:
    q: str = ""  # part of the name, the id or the hostname (case-insensitive)
    status: str = ""
    plan: str = ""
    country_id: str = ""
    version: str = ""
    sort: SortKey = "created_at"
    desc: bool = True  # newest first by default
    page: int = 1
    per_page: int = 25


@dataclass(frozen=True)
class StoreRow:
    id: str
    nombre: str
    country_id: str
    plan: str
    version: str
    status: str
    hostname: str | None
    back_link: str | None
    created_at: datetime


@dataclass(frozen=True)
class StoreTable:
    rows: list[StoreRow]
    total: int  # stores in the fleet
    matching: int  # of which match the query
    page: int
    pages: int
    query: StoreQuery
    # the values the filters offer (from the whole fleet)
    plans: list[str]
    countries: list[str]
    versions: list[str]
    statuses: list[str]


@dataclass(frozen=True)
class Attention:
    id: str
    nombre: str
    status: str
    reason: str


@dataclass(frozen=True)
class RunningOp:
    id: str
    store_id: str
    nombre: str
    kind: str
    step: str | None
    started_at: datetime | None


@dataclass(frozen=True)
class Overview:
    total: int
    counts: dict[str, int]
    attention: list[Attention]
    running: list[RunningOp]
    ports_leased: int
    ports_total: int
    routes: int | None  # hosts the edge routes (None: no edge)
    reconciler_lag_s: float | None  # since the last reconciler pass
    reconciler_pass_ms: float | None
    reconciler_error: str | None
    events: list[EventView] = field(default_factory=list)


def _host_part(hostname: str, needle: str) -> str:
    """What a search looks in: the store's own label (`tienda-ana`), or the whole hostname
    when the search has a dot (the fleet's base domain would match every store otherwise)."""
    return hostname if "." in needle else hostname.split(".", 1)[0]


class Board:
    def __init__(
        self,
        kit: Toolkit,
        *,
        status: StatusService,
        hostnames: Hostnames,
        allocator: PortAllocator,
        reconciler: Reconciler,
        events: EventLog,
    ) -> None:
        self.kit = kit
        self.status = status
        self.hostnames = hostnames
        self.allocator = allocator
        self.reconciler = reconciler
        self.events = events

    def _fleet(self) -> tuple[list[Store], dict[str, str]]:
        with self.kit.registry.transaction() as session:
            stores = list(session.scalars(select(Store).where(is_store())))
            session.expunge_all()
        words = self.status.fleet_words({s.id: s.phase for s in stores})
        return stores, dict(words)

    def table(self, query: StoreQuery, *, only: str | None = None) -> StoreTable:
        """A page of the fleet table; `only`: a store token's own store."""
        stores, words = self._fleet()
        if only is not None:
            stores = [s for s in stores if s.id == only]
        default = self.kit.driver.default_version()
        rows = [
            StoreRow(
                id=s.id,
                nombre=s.nombre,
                country_id=s.country_id,
                plan=s.plan,
                version=s.version or default,
                status=words[s.id],
                hostname=self.hostnames.hostname(s.slug),
                back_link=s.back_link,
                created_at=s.created_at,
            )
            for s in stores
        ]
        needle = query.q.strip().casefold()
        matching = [
            r
            for r in rows
            if (
                not needle
                or needle in r.nombre.casefold()
                or r.id.startswith(needle)
                or (r.hostname is not None and needle in _host_part(r.hostname, needle))
            )
            and (not query.status or r.status == query.status)
            and (not query.plan or r.plan == query.plan)
            and (not query.country_id or r.country_id == query.country_id)
            and (not query.version or r.version == query.version)
        ]
        sort = query.sort

        def key(row: StoreRow) -> tuple[str | datetime, str]:
            value = row.created_at if sort == "created_at" else getattr(row, sort)
            return (value.casefold() if isinstance(value, str) else value, row.id)

        matching.sort(key=key, reverse=query.desc)
        pages = max(1, -(-len(matching) // query.per_page))
        page = min(max(1, query.page), pages)
        start = (page - 1) * query.per_page
        return StoreTable(
            rows=matching[start : start + query.per_page],
            total=len(rows),
            matching=len(matching),
            page=page,
            pages=pages,
            query=query,
            plans=sorted({r.plan for r in rows}),
            countries=sorted({r.country_id for r in rows}),
            versions=sorted({r.version for r in rows}),
            statuses=sorted({r.status for r in rows}),
        )

    def word(self, store_id: str) -> str | None:
        """The status word of one store now (None: it does not exist)."""
        with self.kit.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None or store.pool is not None:
                return None
            session.expunge(store)
        return self.status.word_of(store)

    def overview(self, *, events: int = 15) -> Overview:
        stores, words = self._fleet()
        names = {s.id: s.nombre for s in stores}
        attention = [
            Attention(s.id, s.nombre, words[s.id], s.last_error or f"the store is {words[s.id]}")
            for s in stores
            if words[s.id] in ATTENTION
        ]
        flagged = {a.id for a in attention}
        with self.kit.registry.transaction() as session:
            running_rows = list(
                session.execute(
                    select(
                        Operation.id,
                        Operation.store_id,
                        Operation.kind,
                        Operation.steps,
                        Operation.started_at,
                    )
                    .where(Operation.state.in_((OpState.PENDING, OpState.RUNNING)))
                    .order_by(Operation.created_at)
                    .limit(50)
                )
            )
            # the newest few operations of each store, for failed ones and crash loops
            ranked = (
                select(
                    Operation.store_id,
                    Operation.state,
                    Operation.kind,
                    Operation.error,
                    func.row_number()
                    .over(partition_by=Operation.store_id, order_by=Operation.created_at.desc())
                    .label("n"),
                )
                .where(Operation.state.in_(OP_DONE))
                .subquery()
            )
            recent = list(
                session.execute(
                    select(ranked.c.store_id, ranked.c.state, ranked.c.kind, ranked.c.error)
                    .where(ranked.c.n <= LOOP_FAILURES)
                    .order_by(ranked.c.store_id, ranked.c.n)
                )
            )
        latest: dict[str, list[tuple[str, str, str | None]]] = {}
        for store_id, state, kind, error in recent:
            latest.setdefault(store_id, []).append((state, kind, error))
        for store_id, history in latest.items():
            if store_id not in names or store_id in flagged or history[0][0] != OpState.FAILED:
                continue
            state, kind, error = history[0]
            looping = len(history) >= LOOP_FAILURES and all(h[0] == OpState.FAILED for h in history)
            reason = (
                f"crash-looping: its last {len(history)} operations failed ({error})"
                if looping
                else f"its last operation ({kind}) failed: {error}"
            )
            attention.append(Attention(store_id, names[store_id], words[store_id], reason))
        running = []
        for op_id, store_id, kind, steps, started_at in running_rows:
            current = [s["name"] for s in json.loads(steps or "[]") if s.get("state") == "running"]
            running.append(
                RunningOp(
                    op_id,
                    store_id,
                    names.get(store_id, ""),
                    kind,
                    current[-1] if current else None,
                    started_at,
                )
            )
        report = self.reconciler.report()
        lag = (utcnow() - report.last_pass_at).total_seconds() if report.last_pass_at else None
        edge = self.hostnames.view()
        recent_events = self.events.after(
            self.events.floor_for_last(events), limit=events, types=()
        )
        return Overview(
            total=len(stores),
            counts=dict(Counter(words.values())),
            attention=attention,
            running=running,
            ports_leased=self.allocator.leased(),
            ports_total=self.allocator.port_range.last - self.allocator.port_range.first + 1,
            routes=edge.routes if edge.enabled else None,
            reconciler_lag_s=lag,
            reconciler_pass_ms=report.last_pass_ms,
            reconciler_error=report.last_error,
            events=list(reversed(recent_events)),
        )
