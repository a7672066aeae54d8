"""What a store's status is: the registry's intent (its phase) checked against what the
runtime shows now; fleet views from one pass over the runtime; resource usage."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select

from storefleet.errors import ConflictError, NotFoundError, RuntimeFailure
from storefleet.registry.models import DeployPhase, Store
from storefleet.runtime.base import Observed, Ports, RuntimeDriver, StackStatus
from storefleet.services.observe import Observations
from storefleet.services.ports import PortAllocator
from storefleet.services.schemas import (
    DeployStatus,
    PathsView,
    PortsView,
    ServiceView,
    StatusWord,
    UsageView,
)
from storefleet.services.steps import Toolkit
from storefleet.services.usage import UsageMeter

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
    if phase == DeployPhase.STOPPED:  # stopped on purpose; anything running is shown as it is
        return (
            "stopped"
            if observed in (Observed.ABSENT, Observed.STOPPED)
            else _OBSERVED_WORD[observed]
        )
    # not deployed: anything still running is a leftover, which is an error worth showing
    return "not_deployed" if observed in (Observed.ABSENT, Observed.STOPPED) else "error"


def ports_view(ports: Ports) -> PortsView:
    return PortsView(
        backend_port=ports.backend_port, websocket_port=ports.websocket_port, db_port=ports.db_port
    )


class StatusService:
    def __init__(self, kit: Toolkit, *, max_age_s: float) -> None:
        self.kit = kit
        self.driver: RuntimeDriver = kit.driver
        self.allocator: PortAllocator = kit.allocator
        self.observations = Observations(self._observe_now, max_age_s)
        usage = kit.caps.usage
        self.meter = UsageMeter(usage) if usage is not None else None

    def forget(self, store_id: str, _kind: str = "") -> None:
        """An operation changed the store: its next status is observed afresh."""
        self.observations.forget(store_id)

    def _observe_now(self, store_id: str) -> StackStatus:
        """What the runtime shows; when the runtime itself cannot be reached, say so."""
        try:
            return self.driver.status(store_id)
        except RuntimeFailure as exc:
            return StackStatus(Observed.ERROR, False, False, (), exc.message)

    def observe(self, store_id: str) -> StackStatus:
        return self.observations.get(store_id)

    def status(self, store_id: str) -> DeployStatus:
        with self.kit.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            session.expunge(store)
            ports = self.allocator.ports_in(session, store_id)
        stack = self.observe(store_id)
        paths = self.driver.paths(store_id)
        word = status_word(store.phase, stack.observed)
        last_error = store.last_error
        if word in ("error", "degraded", "not_deployed") and stack.detail:
            last_error = stack.detail
        elif word == "error" and stack.observed == Observed.ABSENT:
            last_error = "the store's stack is missing from the runtime"
        return DeployStatus(
            store_id=store_id,
            status=word,
            backend_exists=stack.backend_exists,
            db_exists=stack.db_exists,
            containers_running=stack.all_running,
            services_running=stack.containers_running,
            ports=ports_view(ports) if ports else None,
            paths=PathsView(backend_path=paths.backend_path, db_path=paths.db_path),
            back_link=store.back_link,
            db_link=store.db_link,
            runtime=store.runtime or self.driver.name,
            services=[
                ServiceView(name=s.name, state=s.state, healthy=s.healthy) for s in stack.services
            ],
            last_error=last_error,
            version=store.version,
            usage=self._recent_usage(store_id, stack),
        )

    def _recent_usage(self, store_id: str, stack: StackStatus) -> UsageView | None:
        if stack.observed in (Observed.ABSENT, Observed.STOPPED) or self.meter is None:
            return None
        try:
            return self.meter.recent(store_id)
        except RuntimeFailure:
            return None

    def usage(self, store_id: str) -> UsageView:
        """A fresh reading of the store's resource usage (CPU, memory, disk)."""
        self.kit.load(store_id)
        self.kit.caps.need_usage()
        assert self.meter is not None
        view = self.meter.measure(store_id)
        if view is None:
            raise ConflictError(
                f"store {store_id} is not running: nothing to measure", code="not_running"
            )
        return view

    def word_of(self, store: Store) -> StatusWord:
        """The status word of a store already read from the registry."""
        return status_word(store.phase, self.observe(store.id).observed)

    def counts(self) -> dict[str, int]:
        """How many stores show each status word (one registry read, one runtime pass)."""
        with self.kit.registry.transaction() as session:
            phases = {sid: phase for sid, phase in session.execute(select(Store.id, Store.phase))}
        counts: dict[str, int] = {}
        for word in self.fleet_words(phases).values():
            counts[word] = counts.get(word, 0) + 1
        return counts

    def fleet_words(self, phases: Mapping[str, str]) -> dict[str, StatusWord]:
        """Status words of many stores (id -> phase) from one pass over the runtime."""
        seen: Mapping[str, StackStatus]
        try:
            seen, missing = self.driver.fleet_status(), Observed.ABSENT
        except RuntimeFailure:  # the runtime cannot be reached: say so for every store
            seen, missing = {}, Observed.ERROR
        return {
            sid: status_word(phase, seen[sid].observed if sid in seen else missing)
            for sid, phase in phases.items()
        }
