"""What a store's status is: the registry's intent (its phase) checked against what the
runtime shows now; fleet views from one pass over the runtime; resource usage."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from sqlalchemy import select

from storefleet.errors import ConflictError, NotFoundError, RuntimeFailure
from storefleet.registry.models import DeployPhase, Store, is_store
from storefleet.runtime.base import Observed, Ports, RuntimeDriver, StackStatus
from storefleet.services.observe import Observations
from storefleet.services.ports import PortAllocator
from storefleet.services.recent import Recent
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
    Observed.PAUSED: "stopped",  # (only warm-pool members are paused; no store shows it)
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
        # answers kept for callers that keep asking are computed again ahead, here (two
        # threads: bounded whatever the number of stores polled; see services/recent.py)
        self.ahead = ThreadPoolExecutor(max_workers=2, thread_name_prefix="status-ahead")
        # whole answers, for callers polling one store
        self.answers: Recent[str, DeployStatus] = Recent(
            max_age_s, lambda: kit.registry.generation, ahead=self.ahead
        )
        usage = kit.caps.usage
        self.meter = UsageMeter(usage) if usage is not None else None
        self.routing = kit.routing
        self._edge_seen: tuple[float, bool] = (0.0, True)
        self._edge_lock = threading.Lock()

    def close(self) -> None:
        self.ahead.shutdown(wait=False, cancel_futures=True)
        if self.meter is not None:
            self.meter.close()

    def forget(self, store_id: str, _kind: str = "") -> None:
        """An operation changed the store: its next status is observed afresh."""
        self.observations.forget(store_id)
        self.answers.forget(store_id)

    def _observe_now(self, store_id: str) -> StackStatus:
        """What the runtime shows (and, with the edge on, whether the store's hostname answers
        through it); when the runtime itself cannot be reached, say so."""
        try:
            stack = self.driver.status(store_id)
        except RuntimeFailure as exc:
            return StackStatus(Observed.ERROR, False, False, (), exc.message)
        return self._through_edge(store_id, stack, deep=True)

    def edge_alive(self) -> bool:
        """Whether the edge runs (observed at most once a second)."""
        if self.routing is None or self.routing.edge is None:
            return True
        with self._edge_lock:
            at, alive = self._edge_seen
            if time.monotonic() - at > 1.0:
                alive = self.routing.edge.alive()
                self._edge_seen = (time.monotonic(), alive)
            return alive

    def _through_edge(
        self, store_id: str, stack: StackStatus, *, deep: bool, routed: bool = True
    ) -> StackStatus:
        """A store that runs but is not reached at its hostname is `degraded`, with why.
        `deep`: ask its hostname through the edge (TLS); else only the edge and the route."""
        if self.routing is None or self.routing.edge is None:
            return stack
        if stack.observed is not Observed.RUNNING:
            return stack
        why: str | None = None
        if not self.edge_alive():
            why = "the edge is not running: the store's hostname does not answer"
        elif deep:
            host = self.routing.hosts_of(store_id)[0]
            why = self.routing.edge.probe(host)
            if why is not None and not self.routing.edge.alive():
                why = "the edge is not running: the store's hostname does not answer"
            elif why is not None:
                why = f"the store runs but its route does not answer: {why}"
        elif not routed:
            why = "the store runs but the edge has no route to it"
        if why is None:
            return stack
        return replace(stack, observed=Observed.DEGRADED, detail=why)

    def observe(self, store_id: str) -> StackStatus:
        return self.observations.get(store_id)

    def recent(self, store_id: str) -> DeployStatus | None:
        """The store's status if one at most `max_age_s` old is at hand (no registry read, no
        runtime call: this never blocks), else None."""
        return self.answers.peek(store_id)

    def status(self, store_id: str) -> DeployStatus:
        """The store's status: the registry's intent checked against an observation of the
        runtime at most `max_age_s` old (shared with other callers; see services/recent.py)."""
        return self.answers.get(store_id, lambda: self._status_now(store_id))

    def _status_now(self, store_id: str) -> tuple[DeployStatus, float]:
        with self.kit.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None or store.pool is not None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            session.expunge(store)
            ports = self.allocator.ports_in(session, store_id)
        # at most half a window old: an answer computed ahead (services/recent.py) then lives
        # on for at least half a window more
        stack, observed_at = self.observations.observed(store_id, self.observations.max_age_s / 2)
        paths = self.driver.paths(store_id)
        word = status_word(store.phase, stack.observed)
        last_error = store.last_error
        if word in ("error", "degraded", "not_deployed") and stack.detail:
            last_error = stack.detail
        elif word == "error" and stack.observed == Observed.ABSENT:
            last_error = "the store's stack is missing from the runtime"
        answer = DeployStatus(
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
            node=self.kit.caps.nodes.placed_on(store_id) if self.kit.caps.nodes else None,
        )
        return answer, observed_at

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

    def usage_trend(self, store_id: str) -> list[UsageView]:
        """The store's usage over the last minutes, oldest first, with a reading at most the
        meter's `max_age_s` old at the end (empty: not running, or no usage on this runtime)."""
        if self.meter is None:
            return []
        with contextlib.suppress(RuntimeFailure):
            self.meter.recent(store_id)
        return self.meter.history(store_id)

    def word_of(self, store: Store) -> StatusWord:
        """The status word of a store already read from the registry."""
        return status_word(store.phase, self.observe(store.id).observed)

    def counts(self) -> dict[str, int]:
        """How many stores show each status word (one registry read, one runtime pass)."""
        with self.kit.registry.transaction() as session:
            phases = {
                sid: phase
                for sid, phase in session.connection().execute(
                    select(Store.id, Store.phase).where(is_store())
                )
            }
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
        if self.routing is not None:
            routed = self.routing.routed([sid for sid in phases if sid in seen])
            seen = {
                sid: self._through_edge(sid, stack, deep=False, routed=routed.get(sid, False))
                for sid, stack in seen.items()
                if sid in phases
            }
        return {
            sid: status_word(phase, seen[sid].observed if sid in seen else missing)
            for sid, phase in phases.items()
        }
