"""The store registry: create, list, read, update and delete stores."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storefleet.errors import ConflictError, InvalidInputError, NotFoundError, StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import Store, is_store, utcnow
from storefleet.services.countries import get_country
from storefleet.services.deployments import DeploymentService
from storefleet.services.events import EventLog
from storefleet.services.hostnames import ROUTED_PHASES, Hostnames, free_slug
from storefleet.services.pool import WarmPool
from storefleet.services.recent import Recent
from storefleet.services.schemas import (
    DeployResult,
    StatusWord,
    StoreCreate,
    StoreUpdate,
    StoreView,
)
from storefleet.services.status import StatusService
from storefleet.services.validation import nombre_key

log = logging.getLogger(__name__)
# A create that loses the race for a hostname tries again (concurrent creates of one name).
CREATE_ATTEMPTS = 30
# Claims a warm-pool member inside the registration's transaction (its id, or None).
Take = Callable[[Session], str | None]


def _view(
    store: Store,
    status: StatusWord | None = None,
    *,
    hostname: str | None = None,
    domains: list[str] | None = None,
) -> StoreView:
    return StoreView.model_validate(
        {
            "id": store.id,
            "nombre": store.nombre,
            "country_id": store.country_id,
            "tokens_disponibles": store.tokens_disponibles,
            "plan": store.plan,
            "created_at": store.created_at,
            "back_link": store.back_link,
            "db_link": store.db_link,
            "status": status,
            "hostname": hostname,
            "domains": domains or [],
        }
    )


def _found(store: Store | None) -> Store | None:
    """The row if it is a store (a warm-pool member is none)."""
    return store if store is not None and store.pool is None else None


def _check_country(country_id: str) -> None:
    if get_country(country_id) is None:
        raise InvalidInputError(
            f"country_id {country_id!r} is not a known country; see GET /api/v1/countries",
            code="unknown_country",
        )


def _duplicate(nombre: str) -> ConflictError:
    return ConflictError(f"a store named {nombre!r} already exists", code="duplicate_nombre")


@dataclass(frozen=True)
class StorePage:
    stores: list[StoreView]
    total: int  # stores in the registry, whatever the page


@dataclass(frozen=True)
class StorePageJson:
    """A page of the store list as its JSON answer (a JSON list of StoreView)."""

    body: bytes
    total: int


_Rows = list[dict[str, Any]]  # (`list` is also a method of StoreService)
# what a listing reads of each store
_LISTED = (
    Store.id,
    Store.nombre,
    Store.country_id,
    Store.tokens_disponibles,
    Store.plan,
    Store.created_at,
    Store.back_link,
    Store.db_link,
    Store.phase,
    Store.slug,
)


class StoreService:
    def __init__(
        self,
        *,
        registry: Registry,
        deployments: DeploymentService,
        status: StatusService,
        events: EventLog,
        hostnames: Hostnames,
        plan_changed: Callable[[str, str], object] | None = None,
        pool: WarmPool | None = None,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.hostnames = hostnames
        self.deployments = deployments
        self.status = status
        self.events = events
        # (store id, previous plan): give a deployed store the limits of its new plan.
        self.plan_changed = plan_changed
        # whole list answers, shared by the callers of one window (see services/recent.py)
        self.pages: Recent[tuple[int | None, int], StorePageJson] = Recent(
            status.observations.max_age_s,
            lambda: registry.generation,
            max_keys=256,
            ahead=status.ahead,
        )

    def create(self, request: StoreCreate) -> StoreView:
        return self._register(request)[0]

    def _register(self, request: StoreCreate, take: Take | None = None) -> tuple[StoreView, bool]:
        """Register the store; with `take`, in a warm-pool member's row when it gives one
        (same transaction, so a name clash gives the member back). Returns (view, claimed)."""
        _check_country(request.country_id)
        key = nombre_key(request.nombre)
        for attempt in range(CREATE_ATTEMPTS):
            store = Store(
                id=str(uuid.uuid4()),
                nombre=request.nombre,
                nombre_key=key,
                country_id=request.country_id,
                tokens_disponibles=request.tokens_disponibles,
                plan=request.plan,
                observed_status="not_deployed",
            )
            claimed = False
            try:
                with self.registry.transaction() as session:
                    if session.scalar(select(Store.id).where(Store.nombre_key == key)):
                        raise _duplicate(request.nombre)
                    store.slug = free_slug(session, request.nombre, spread=attempt)
                    member = take(session) if take is not None else None
                    if member is None:
                        session.add(store)
                    else:  # the member's row becomes the store (its id is the store's)
                        claimed, store.id = True, member
                        store.created_at = store.updated_at = utcnow()
                        store.observed_status = "deploying"
                        session.execute(
                            update(Store)
                            .where(Store.id == member)
                            .values(
                                nombre=store.nombre,
                                nombre_key=store.nombre_key,
                                country_id=store.country_id,
                                tokens_disponibles=store.tokens_disponibles,
                                slug=store.slug,
                                created_at=store.created_at,
                                updated_at=store.updated_at,
                                observed_status=store.observed_status,
                            )
                            .execution_options(synchronize_session=False)
                        )
                    session.flush()
                    self.events.emit(
                        session,
                        "store.created",
                        store_id=store.id,
                        data={"nombre": store.nombre, "plan": store.plan},
                    )
            except IntegrityError as exc:
                # a concurrent create won the unique name, or the same hostname: try again
                with self.registry.transaction() as session:
                    if session.scalar(select(Store.id).where(Store.nombre_key == key)):
                        raise _duplicate(request.nombre) from exc
                if attempt == CREATE_ATTEMPTS - 1:
                    raise ConflictError(
                        f"no free hostname for {request.nombre!r} after {CREATE_ATTEMPTS} "
                        "tries (many stores of that name registered at once); try again",
                        code="concurrent_change",
                    ) from exc
                continue
            break
        log.info("store %s registered%s", store.id, " (warm-pool member)" if claimed else "")
        word: StatusWord = "deploying" if claimed else "not_deployed"
        return _view(store, word, hostname=self.hostnames.hostname(store.slug)), claimed

    def create_and_deploy(self, request: StoreCreate) -> tuple[StoreView, DeployResult]:
        """Register a store and deploy it: from the warm pool when a member of its plan and
        the default version is ready, else cold. A failed deploy leaves the store registered
        (and nothing of its stack behind); the error says so and names the store."""
        pool = self.pool
        take: Take | None = None
        op_id = str(uuid.uuid4())
        if pool is not None and pool.enabled:
            version = pool.kit.driver.default_version()  # (outside the transaction)

            def take(session: Session) -> str | None:
                return pool.take(session, request.plan, version, op_id)

        view, claimed = self._register(request, take)
        if pool is not None and pool.enabled:
            pool.wake()  # a member was taken, or none was there: the pool refills
            if not claimed:
                pool.metrics.pool_claim(request.plan, "miss")
        try:
            if claimed:
                result = self.deployments.deploy_claimed(op_id, view.id)
            else:
                result = self.deployments.deploy(view.id)
        except StorefleetError as exc:
            exc.message = (
                f"store {view.id} was registered, but its deploy failed: {exc.message} "
                f"(retry with POST /api/v1/stores/{view.id}/deploy)"
            )
            exc.extra["store_id"] = view.id
            raise
        return self.get(view.id), result

    def require(self, store_id: str) -> None:
        """NotFoundError unless the store exists (a registry read, no runtime call)."""
        with self.registry.transaction() as session:
            if _found(session.get(Store, store_id)) is None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)

    def get(self, store_id: str) -> StoreView:
        with self.registry.transaction() as session:
            store = _found(session.get(Store, store_id))
            if store is None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            domains = self.hostnames.domains_of(session, [store_id])[store_id]
        return _view(
            store,
            self.status.word_of(store),
            hostname=self.hostnames.hostname(store.slug),
            domains=domains,
        )

    def list(self, *, limit: int | None = None, offset: int = 0) -> StorePage:
        """Stores in registration order with their observed status: all of them, or the page of
        at most `limit` after the first `offset`, and how many there are in all."""
        rows, total = self._listing(limit, offset)
        return StorePage([StoreView.model_validate(row) for row in rows], total)

    def _listing(self, limit: int | None, offset: int) -> tuple[_Rows, int]:
        """`list`'s stores as the fields of their views (in StoreView's order), and the total.
        Columns read through Core rather than ORM objects, and no model per store: at 10,000
        stores building those was most of the cost of a listing (the registry's values were
        checked when they were written)."""
        query = (
            select(*_LISTED).where(is_store()).order_by(Store.created_at, Store.id).offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.registry.transaction() as session:
            # Core, not the ORM: columns need none of its row loading (a fifth of a listing)
            rows = session.connection().execute(query).all()
            total = session.scalar(select(func.count()).select_from(Store).where(is_store())) or 0
            domains = self.hostnames.domains_of(
                session, [r.id for r in rows] if limit is not None else None
            )
        # (rows unpacked as tuples: a Row's attributes cost a lookup each)
        words = self.status.fleet_words({r[0]: r[8] for r in rows})
        hostname = self.hostnames.hostname
        return [
            {
                "id": sid,
                "nombre": nombre,
                "country_id": country_id,
                "tokens_disponibles": tokens,
                "plan": plan,
                "created_at": created_at,
                "back_link": back_link,
                "db_link": db_link,
                "status": words[sid],
                "hostname": hostname(slug),
                "domains": domains.get(sid, []),
            }
            for sid, nombre, country_id, tokens, plan, created_at, back_link, db_link, _, slug in (
                rows
            )
        ], int(total)

    def recent_list_json(self, *, limit: int | None, offset: int) -> StorePageJson | None:
        """The page's JSON answer if one at most the status window old is at hand (never
        blocks), else None."""
        return self.pages.peek((limit, offset))

    def list_json(self, *, limit: int | None = None, offset: int = 0) -> StorePageJson:
        """`list` as its JSON answer, computed once per status window for all callers."""

        def compute() -> tuple[StorePageJson, float]:
            born = time.monotonic()
            rows, total = self._listing(limit, offset)
            return StorePageJson(to_json(rows), total), born

        return self.pages.get((limit, offset), compute)

    def update(self, store_id: str, request: StoreUpdate) -> StoreView:
        if request.country_id is not None:
            _check_country(request.country_id)
        try:
            with self.registry.transaction() as session:
                store = _found(session.get(Store, store_id))
                if store is None:
                    raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
                if request.nombre is not None:
                    key = nombre_key(request.nombre)
                    clash = session.scalar(
                        select(Store.id).where(Store.nombre_key == key, Store.id != store_id)
                    )
                    if clash:
                        raise _duplicate(request.nombre)
                    store.nombre, store.nombre_key = request.nombre, key
                if request.country_id is not None:
                    store.country_id = request.country_id
                if request.tokens_disponibles is not None:
                    store.tokens_disponibles = request.tokens_disponibles
                previous_plan = store.plan
                if request.plan is not None:
                    store.plan = request.plan
                routed = store.phase in ROUTED_PHASES
                gone: set[str] = set()
                if request.domains is not None:
                    gone = self.hostnames.set_domains(session, store_id, request.domains)
        except IntegrityError as exc:
            if request.domains is not None:  # a concurrent PATCH took one of the domains
                raise ConflictError(
                    "one of these domains was just given to another store", code="domain_taken"
                ) from exc
            raise _duplicate(request.nombre or "") from exc
        if request.domains is not None and routed and self.hostnames.edge is not None:
            # the edge serves the new domains now and the removed ones no more (no reload)
            self.hostnames.unpublish(store_id, gone)
            self.hostnames.publish(store_id)
        if request.plan is not None and request.plan != previous_plan and self.plan_changed:
            self.plan_changed(store_id, previous_plan)
        return self.get(store_id)

    def delete(self, store_id: str, *, purge: bool = False, final_backup: bool = True) -> None:
        """Undeploy (keeping data unless `purge`) then forget the store."""
        self.deployments.delete(store_id, purge=purge, final_backup=final_backup)
