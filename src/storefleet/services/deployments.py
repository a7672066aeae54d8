"""Deploy, undeploy and observe one store's stack.

A deploy: lock the store -> record intent (phase `deploying`) -> lease ports -> secrets -> the
runtime driver applies the stack and waits until healthy -> record links (phase `deployed`).
Any failure removes what this deploy created (stack, files, leases) and leaves the store
`not_deployed` with `last_error`. Registry work happens in short transactions; the driver is
only ever called outside them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, or_, select, update

from storefleet.errors import BusyError, NotFoundError, StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import DeployPhase, Store, utcnow
from storefleet.runtime.base import (
    Observed,
    Ports,
    RuntimeDriver,
    StackSpec,
    StackStatus,
)
from storefleet.services.ports import PortAllocator
from storefleet.services.schemas import (
    DeployResult,
    DeployStatus,
    PathsView,
    PortsView,
    ServiceView,
    StatusWord,
    UndeployResult,
)
from storefleet.services.secrets import SecretStore

log = logging.getLogger(__name__)

_OBSERVED_WORD: dict[Observed, StatusWord] = {
    Observed.RUNNING: "running",
    Observed.DEGRADED: "degraded",
    Observed.STOPPED: "stopped",
    Observed.ERROR: "error",
    Observed.ABSENT: "error",
}


def status_word(phase: str, observed: Observed) -> StatusWord:
    """The status a person sees: the registry's intent checked against what the runtime shows."""
    if phase == DeployPhase.DEPLOYING:
        return "deploying"
    if phase == DeployPhase.UNDEPLOYING:
        return "undeploying"
    if phase == DeployPhase.DEPLOYED:
        return _OBSERVED_WORD[observed]
    # not deployed: anything still running is a leftover, which is an error worth showing
    return "not_deployed" if observed in (Observed.ABSENT, Observed.STOPPED) else "error"


@dataclass(frozen=True)
class DeployTimeouts:
    deploy_s: float
    undeploy_s: float
    lock_ttl_s: float
    poll_s: float = 0.05


def _ports_view(ports: Ports | None) -> PortsView | None:
    if ports is None:
        return None
    return PortsView(
        backend_port=ports.backend_port, websocket_port=ports.websocket_port, db_port=ports.db_port
    )


class DeploymentService:
    def __init__(
        self,
        *,
        registry: Registry,
        driver: RuntimeDriver,
        allocator: PortAllocator,
        secrets: SecretStore,
        timeouts: DeployTimeouts,
    ) -> None:
        self.registry = registry
        self.driver = driver
        self.allocator = allocator
        self.secrets = secrets
        self.timeouts = timeouts

    # -- locking ----------------------------------------------------------------------------

    @contextmanager
    def store_lock(self, store_id: str, *, wait_s: float) -> Iterator[str]:
        """Serialise deploys/undeploys of one store, across threads and control planes.

        A lease lock in the store's row: compare-and-set of `lock_token`; an expired lock
        (its holder crashed) may be taken over.
        """
        token = str(uuid.uuid4())
        deadline = time.monotonic() + wait_s
        while True:
            now = utcnow()
            with self.registry.transaction() as session:
                result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(Store)
                    .where(
                        Store.id == store_id,
                        or_(Store.lock_token.is_(None), Store.lock_expires_at < now),
                    )
                    .values(
                        lock_token=token,
                        lock_expires_at=now + timedelta(seconds=self.timeouts.lock_ttl_s),
                    )
                    .execution_options(synchronize_session=False)
                )
                taken = result.rowcount
                exists = taken == 1 or session.get(Store, store_id) is not None
            if not exists:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            if taken == 1:
                break
            if time.monotonic() >= deadline:
                raise BusyError(
                    f"another operation on store {store_id} is still in progress; try again",
                    store_id=store_id,
                )
            time.sleep(self.timeouts.poll_s)
        try:
            yield token
        finally:
            with self.registry.transaction() as session:
                session.execute(
                    update(Store)
                    .where(Store.id == store_id, Store.lock_token == token)
                    .values(lock_token=None, lock_expires_at=None)
                    .execution_options(synchronize_session=False)
                )

    def _load(self, store_id: str) -> Store:
        with self.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            session.expunge(store)
        return store

    def _set(self, store_id: str, **values: object) -> None:
        with self.registry.transaction() as session:
            session.execute(
                update(Store)
                .where(Store.id == store_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    # -- deploy -----------------------------------------------------------------------------

    def deploy(self, store_id: str) -> DeployResult:
        wait = self.timeouts.deploy_s + self.timeouts.undeploy_s
        with self.store_lock(store_id, wait_s=wait):
            store = self._load(store_id)
            if store.phase == DeployPhase.DEPLOYED:
                ports = self.allocator.ports_of(store_id)
                observed = self.driver.status(store_id).observed
                alive = observed not in (Observed.ABSENT, Observed.STOPPED)
                if ports and store.back_link and store.db_link and alive:
                    return DeployResult(
                        message=f"store {store_id} is already deployed",
                        store_id=store_id,
                        back_link=store.back_link,
                        db_link=store.db_link,
                        ports=PortsView.model_validate(ports, from_attributes=True),
                        status="already_deployed",
                    )
            if store.phase != DeployPhase.NOT_DEPLOYED:
                # A deploy or undeploy was cut short (or the stack vanished): start from clean.
                self.driver.remove(store_id, purge=False, timeout_s=self.timeouts.undeploy_s)
            return self._deploy_fresh(store)

    def _deploy_fresh(self, store: Store) -> DeployResult:
        store_id = store.id
        self._set(store_id, phase=DeployPhase.DEPLOYING, runtime=self.driver.name, last_error=None)
        try:
            ports = self.allocator.lease(store_id)
            secrets = self.secrets.ensure(store_id, self.driver.secret_names)
            spec = StackSpec(store_id=store_id, plan=store.plan, ports=ports, secrets=secrets)
            self.driver.apply(spec, timeout_s=self.timeouts.deploy_s)
            links = self.driver.links(spec)
        except BaseException as exc:
            self._roll_back(store_id, exc)
            raise
        self._set(
            store_id,
            phase=DeployPhase.DEPLOYED,
            back_link=links.back_link,
            db_link=links.db_link,
        )
        log.info("store %s deployed on ports %s", store_id, ports)
        return DeployResult(
            message=f"store {store_id} deployed",
            store_id=store_id,
            back_link=links.back_link,
            db_link=links.db_link,
            ports=PortsView.model_validate(ports, from_attributes=True),
            status="deployed",
        )

    def _roll_back(self, store_id: str, cause: BaseException) -> None:
        reason = cause.message if isinstance(cause, StorefleetError) else type(cause).__name__
        log.warning("deploy of store %s failed, rolling back: %s", store_id, reason)
        try:
            self.driver.remove(store_id, purge=False, timeout_s=self.timeouts.undeploy_s)
        finally:
            self.allocator.release(store_id)
            self._set(
                store_id,
                phase=DeployPhase.NOT_DEPLOYED,
                back_link=None,
                db_link=None,
                runtime=None,
                last_error=f"deploy failed: {reason}",
            )

    # -- undeploy ---------------------------------------------------------------------------

    def undeploy(self, store_id: str, *, purge: bool = False) -> UndeployResult:
        wait = self.timeouts.deploy_s + self.timeouts.undeploy_s
        with self.store_lock(store_id, wait_s=wait):
            self._undeploy_locked(store_id, purge=purge)
        kept = "data purged" if purge else "data kept"
        return UndeployResult(
            message=f"store {store_id} undeployed ({kept})", store_id=store_id, status="undeployed"
        )

    def delete(self, store_id: str, *, purge: bool = False) -> None:
        """Undeploy the store (keeping its data unless `purge`) and forget it, under one lock."""
        wait = self.timeouts.deploy_s + self.timeouts.undeploy_s
        with self.store_lock(store_id, wait_s=wait):
            self._undeploy_locked(store_id, purge=purge)
            with self.registry.transaction() as session:
                store = session.get(Store, store_id)
                if store is not None:
                    session.delete(store)
        log.info("store %s deleted (%s)", store_id, "data purged" if purge else "data kept")

    def _undeploy_locked(self, store_id: str, *, purge: bool) -> None:
        store = self._load(store_id)
        previous = store.phase
        self._set(store_id, phase=DeployPhase.UNDEPLOYING)
        try:
            self.driver.remove(store_id, purge=purge, timeout_s=self.timeouts.undeploy_s)
        except StorefleetError as exc:
            self._set(store_id, phase=previous, last_error=f"undeploy failed: {exc.message}")
            raise
        self.allocator.release(store_id)
        self._set(
            store_id,
            phase=DeployPhase.NOT_DEPLOYED,
            back_link=None,
            db_link=None,
            runtime=None,
            last_error=None,
        )
        log.info("store %s undeployed (%s)", store_id, "data purged" if purge else "data kept")

    def resume(self) -> list[str]:
        """Adopt the stacks of deployed stores after a start; restart those that are down.

        Returns the ids of stores that had to be started again.
        """
        with self.registry.transaction() as session:
            deployed = list(
                session.scalars(select(Store.id).where(Store.phase == DeployPhase.DEPLOYED))
            )
        seen = self.driver.fleet_status()
        restarted = []
        for store_id in deployed:
            stack = seen.get(store_id)
            if stack is not None and stack.observed not in (Observed.ABSENT, Observed.STOPPED):
                continue  # adopted as it is
            try:
                self.deploy(store_id)
                restarted.append(store_id)
            except StorefleetError as exc:
                log.error("store %s could not be started again: %s", store_id, exc.message)
        return restarted

    # -- observe ----------------------------------------------------------------------------

    def status(self, store_id: str) -> DeployStatus:
        store = self._load(store_id)
        stack = self.driver.status(store_id)
        ports = self.allocator.ports_of(store_id)
        paths = self.driver.paths(store_id)
        word = status_word(store.phase, stack.observed)
        last_error = store.last_error
        if word in ("error", "degraded") and stack.detail:
            last_error = stack.detail
        elif word == "error" and stack.observed == Observed.ABSENT:
            last_error = "the store's stack is missing from the runtime"
        return DeployStatus(
            store_id=store_id,
            status=word,
            backend_exists=stack.backend_exists,
            db_exists=stack.db_exists,
            containers_running=stack.containers_running,
            ports=_ports_view(ports),
            paths=PathsView(backend_path=paths.backend_path, db_path=paths.db_path),
            back_link=store.back_link,
            db_link=store.db_link,
            runtime=store.runtime or self.driver.name,
            services=[
                ServiceView(name=s.name, state=s.state, healthy=s.healthy) for s in stack.services
            ],
            last_error=last_error,
        )

    def fleet_words(self, phases: Mapping[str, str]) -> dict[str, StatusWord]:
        """Status words of many stores (id -> phase) from one pass over the runtime."""
        seen: Mapping[str, StackStatus] = self.driver.fleet_status()
        absent = StackStatus(Observed.ABSENT, False, False)
        return {
            sid: status_word(phase, seen.get(sid, absent).observed) for sid, phase in phases.items()
        }
