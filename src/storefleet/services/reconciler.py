"""The reconciler: level-triggered convergence of the registry's intent and the runtime.

Every pass starts from scratch: it reads every store's phase and lock from the registry, observes
the whole fleet from the runtime in one call, and plans per store:
- `deploying` / `undeploying` with no live lock: an operation was cut short by a crash ->
  finish it or roll it back (`DeploymentService.recover`);
- `deployed` and the runtime shows the stack gone or stopped for good -> start it again
  (`repair`), with a per-store back-off (10 s doubling to 5 min by default);
- `not_deployed` but leases or a live stack remain -> release and remove them;
- `stopped` (on purpose) but something of the stack runs -> stop it again;
- the edge (when on) not running -> started again with its configuration; its route table
  made what the registry says (deployed stores routed, every other route removed);
- warm-pool members: one whose fill was cut short, one that is not paused (gone, running,
  broken) and one of an old default version -> destroyed (`WarmPool.destroy`);
- runtime stacks of this fleet that no store owns (orphans) -> removed, data kept;
  data (volumes, database files) that no store owns -> only reported, never removed.
Each action takes the store's lock without waiting, so control planes sharing a registry never
act on one store at once. No registry transaction is open while the runtime is called.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import CursorResult, select, update

from storefleet.backoff import Backoff
from storefleet.errors import StorefleetError, TemporaryFailure
from storefleet.registry.db import Registry
from storefleet.registry.models import DeployPhase, PoolState, PortLease, Store, utcnow
from storefleet.runtime.base import Capabilities, Observed, RuntimeDriver, StackStatus
from storefleet.services.auth import AuditLog
from storefleet.services.convergence import Convergence
from storefleet.services.hostnames import Hostnames
from storefleet.services.operations import OpKind
from storefleet.services.pool import WarmPool
from storefleet.services.runner import OperationRunner
from storefleet.services.status import status_word
from storefleet.shared import RECONCILER_WAKE, Numbers, Waker

log = logging.getLogger(__name__)


class ReconcileAction(BaseModel):
    store_id: str
    action: str
    at: datetime


class ReconcilerReport(BaseModel):
    passes: int
    last_pass_at: datetime | None
    last_pass_ms: float | None
    last_error: str | None
    recent_actions: list[ReconcileAction]
    orphan_stacks_removed: list[str]
    orphan_data: list[str]
    edge_restarts: int = 0  # times the reconciler found the edge gone and started it again
    edge_error: str | None = None  # why the edge could not be started, at the last pass


@dataclass(frozen=True)
class _Row:
    id: str
    phase: str
    locked: bool
    stale_lock: bool  # a lock whose operation's control plane died
    lock_token: str | None
    has_leases: bool
    has_links: bool
    observed_status: str | None = None
    pool: str | None = None  # a warm-pool member's state (None: a store)
    version: str | None = None
    plan: str = ""


class Need(StrEnum):
    """What the reconciler finds a store needs (its actions)."""

    RECOVER = "recover"  # an operation was cut short: finish or roll it back
    REPAIR = "repair"  # deployed, but its stack is missing or broken
    HALT = "halt"  # stopped on purpose, yet running
    RELEASE = "release"  # not deployed, yet holding leases or a stack
    DESTROY = "destroy"  # a warm-pool member that must not be handed out
    RECYCLE = "recycle"  # a warm-pool member of an old default version


@dataclass
class _Backoff:
    failures: int = 0
    next_at: float = 0.0


@dataclass
class Reconciler:
    registry: Registry
    driver: RuntimeDriver
    runner: OperationRunner
    convergence: Convergence
    caps: Capabilities
    interval_s: float = 10.0
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 300.0
    event_retention_s: float = 7 * 24 * 3600.0
    # the audit log: its counted unauthenticated requests are written and old entries pruned
    audit: AuditLog | None = None
    # the edge's routes (None: the edge is off)
    routing: Hostnames | None = None
    # the warm pool (None: none)
    pool: WarmPool | None = None
    # shared with this control plane's other processes (None: this one alone): `wake` wakes
    # the reconciler wherever it runs, and each pass writes its report to `report_path`,
    # which `report` reads in the processes where the reconciler does not run
    shared: Numbers | None = None
    report_path: Path | None = None
    _edge_restarts: int = 0
    _edge_error: str | None = None
    _wake: Waker = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _backoff: dict[str, _Backoff] = field(default_factory=dict)
    _actions: list[ReconcileAction] = field(default_factory=list)
    _orphans_removed: list[str] = field(default_factory=list)
    _orphan_data: list[str] = field(default_factory=list)
    _passes: int = 0
    _last_pass_at: datetime | None = None
    _last_pass_ms: float | None = None
    _last_error: str | None = None
    _pass_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._wake = Waker(self.shared, RECONCILER_WAKE)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set_here()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                self.runner.ops.metrics.reconcile_failed()
                log.exception("reconcile pass failed")
                self._share_report()
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def report(self) -> ReconcilerReport:
        """What the reconciler did: this process's passes, or where it runs in another
        process of this control plane, that process's report of its last pass."""
        if self._thread is None and self._passes == 0 and self.report_path is not None:
            with contextlib.suppress(OSError, ValueError):
                return ReconcilerReport.model_validate_json(self.report_path.read_bytes())
        return self._report()

    def _share_report(self) -> None:
        if self.report_path is None:
            return
        try:
            tmp = self.report_path.with_name(f".{self.report_path.name}.{os.getpid()}")
            tmp.write_bytes(self._report().model_dump_json().encode())
            tmp.replace(self.report_path)
        except OSError:
            log.warning("could not write the reconciler's report", exc_info=True)

    def _report(self) -> ReconcilerReport:
        return ReconcilerReport(
            passes=self._passes,
            last_pass_at=self._last_pass_at,
            last_pass_ms=self._last_pass_ms,
            last_error=self._last_error,
            recent_actions=list(self._actions[-50:]),
            orphan_stacks_removed=list(self._orphans_removed[-50:]),
            orphan_data=list(self._orphan_data),
            edge_restarts=self._edge_restarts,
            edge_error=self._edge_error,
        )

    # -- one pass ---------------------------------------------------------------------------

    def _rows(self) -> list[_Row]:
        now = utcnow()
        with self.registry.transaction() as session:
            leased = set(session.scalars(select(PortLease.store_id).distinct()))
            # columns through Core, not ORM objects: at 10,000 stores those were most of a pass
            stores = session.connection().execute(
                select(
                    Store.id,
                    Store.phase,
                    Store.lock_token,
                    Store.lock_expires_at,
                    Store.back_link,
                    Store.db_link,
                    Store.observed_status,
                    Store.pool,
                    Store.version,
                    Store.plan,
                ).order_by(Store.created_at, Store.id)
            )
            return [
                _Row(
                    id=sid,
                    phase=phase,
                    locked=lock is not None and expires is not None and expires >= now,
                    stale_lock=lock is not None and (expires is None or expires < now),
                    lock_token=lock,
                    has_leases=sid in leased,
                    has_links=bool(back_link and db_link),
                    observed_status=seen,
                    pool=pool,
                    version=version,
                    plan=plan,
                )
                # (unpacked: each attribute of a Row costs a lookup)
                for sid, phase, lock, expires, back_link, db_link, seen, pool, version, plan in (
                    stores
                )
            ]

    def plan(self, row: _Row, stack: StackStatus | None) -> Need | None:
        """What one store needs, from its row and what the runtime shows (None: nothing)."""
        if row.locked or self.runner.keeper.holds(row.lock_token):
            return None  # a live operation owns it
        if row.stale_lock or row.phase in (DeployPhase.DEPLOYING, DeployPhase.UNDEPLOYING):
            return Need.RECOVER
        if row.phase == DeployPhase.DEPLOYED:
            if stack is None or stack.observed is Observed.ABSENT:
                return Need.REPAIR
            if stack.repairable or not row.has_links:
                return Need.REPAIR
            return None
        alive = stack is not None and stack.observed not in (Observed.ABSENT,)
        if row.phase == DeployPhase.STOPPED:  # stopped on purpose: keep it so
            running = alive and stack is not None and stack.observed is not Observed.STOPPED
            return Need.HALT if running else None
        if row.has_leases or alive:
            return Need.RELEASE
        return None

    def plan_member(
        self, row: _Row, stack: StackStatus | None, version: str, surplus: set[str]
    ) -> Need | None:
        """What a warm-pool member needs: ready members stay paused at the default version,
        as many as the pool's target; anything else is destroyed (never handed out)."""
        if row.locked or self.runner.keeper.holds(row.lock_token):
            return None  # being filled, claimed or destroyed
        if row.pool != PoolState.READY:
            return Need.DESTROY  # its fill was cut short
        if stack is None or stack.observed is not Observed.PAUSED:
            return Need.DESTROY
        if row.version != version or row.id in surplus:
            return Need.RECYCLE
        return None

    def _surplus(self, rows: list[_Row], version: str) -> set[str]:
        """Ready members beyond their plan's target (the newest first go)."""
        targets = self.pool.settings.targets if self.pool is not None else {}
        by_plan: dict[str, list[_Row]] = {}
        for row in rows:
            if row.pool == PoolState.READY and row.version == version:
                by_plan.setdefault(row.plan, []).append(row)
        return {
            row.id for plan, members in by_plan.items() for row in members[targets.get(plan, 0) :]
        }

    def run_once(self) -> list[ReconcileAction]:
        with self._pass_lock:
            started = time.monotonic()
            rows = self._rows()
            self._tend_edge(rows)
            fleet: Mapping[str, StackStatus] = self.driver.fleet_status()
            actions: list[ReconcileAction] = []
            default = self.driver.default_version()
            surplus = self._surplus(rows, default)
            for row in rows:
                if row.pool is not None:
                    need = self.plan_member(row, fleet.get(row.id), default, surplus)
                    done = self._tend_member(row, need, fleet.get(row.id), default)
                    if done:
                        actions.append(ReconcileAction(store_id=row.id, action=done, at=utcnow()))
                    continue
                need = self.plan(row, fleet.get(row.id))
                if need is None:
                    if row.phase == DeployPhase.DEPLOYED:
                        self._backoff.pop(row.id, None)
                    continue
                done = self._act(row.id, need)
                if done:
                    actions.append(ReconcileAction(store_id=row.id, action=done, at=utcnow()))
            if self._passes % 100 == 0:
                self.runner.ops.events.prune(self.event_retention_s)
                if self.audit is not None:
                    self.audit.prune()
            if self.audit is not None:
                self.audit.flush()
            t = self.runner.timeouts
            self.runner.ops.fail_abandoned(
                older_than_s=t.deploy_s + t.undeploy_s + t.lock_ttl_s + 60,
                # one wave: waiting for a store's lock, the new version, the rollback
                fleet_older_than_s=3 * t.deploy_s + 2 * t.undeploy_s + t.lock_ttl_s + 60,
            )
            known = {r.id for r in rows}
            for orphan in sorted(set(fleet) - known):
                if self._still_orphan(orphan):
                    self.driver.remove(
                        orphan, purge=False, timeout_s=self.runner.timeouts.undeploy_s
                    )
                    self._orphans_removed.append(orphan)
                    text = "removed an orphan stack (no store owns it; its data is kept)"
                    actions.append(ReconcileAction(store_id=orphan, action=text, at=utcnow()))
            orphans = self.caps.orphans
            if orphans is not None:  # processes whose store folder is gone (process runtime)
                for store_id, what in orphans.end_orphan_processes():
                    text = f"ended {what}: its store folder is gone"
                    actions.append(ReconcileAction(store_id=store_id, action=text, at=utcnow()))
            with self.registry.transaction() as session:
                now_known = set(session.scalars(select(Store.id)))  # after this pass's deletes
            data = self.caps.data
            self._orphan_data = sorted(data.data_owners() - now_known) if data else []
            self._record_statuses(rows, fleet)
            events = self.runner.ops.events
            for action in actions:
                log.info(
                    "reconciler: store %s: %s",
                    action.store_id,
                    action.action,
                    extra={"store_id": action.store_id},
                )
                events.publish(
                    "reconciler.action", store_id=action.store_id, data={"action": action.action}
                )
            self.runner.ops.metrics.reconcile_pass(
                time.monotonic() - started,
                actions=len(actions),
                failed_actions=sum(1 for a in actions if " failed: " in a.action),
            )
            self._actions = (self._actions + actions)[-200:]
            self._passes += 1
            self._last_pass_at = utcnow()
            self._last_pass_ms = (time.monotonic() - started) * 1000
            self._last_error = None
            self._share_report()
            return actions

    def _tend_edge(self, rows: list[_Row]) -> None:
        """The edge runs with its configuration, and routes exactly the deployed stores (a
        store an operation holds is left to it)."""
        if self.routing is None or self.routing.edge is None:
            return
        edge = self.routing.edge
        try:
            was_alive = self._passes == 0 or edge.alive()
            if edge.ensure() and was_alive is False:
                self._edge_restarts += 1
                log.warning("reconciler: the edge was not running; started it again")
            self._edge_error = None
        except StorefleetError as exc:
            self._edge_error = exc.message
            log.warning("reconciler: the edge could not be started: %s", exc.message)
        busy = [r.id for r in rows if r.locked or self.runner.keeper.holds(r.lock_token)]
        self.routing.sync(busy)

    def _record_statuses(self, rows: list[_Row], fleet: Mapping[str, StackStatus]) -> None:
        """Compare each store's status word with the last one seen; a change is written with
        a compare-and-set (one event per change, whatever the number of control planes)."""
        changes = []
        for row in rows:
            if row.pool is not None:  # warm-pool members have no status of a store
                continue
            stack = fleet.get(row.id)
            word = status_word(row.phase, stack.observed if stack else Observed.ABSENT)
            if word != row.observed_status:
                changes.append((row, word, stack.detail if stack else None))
        if not changes:
            return
        events = self.runner.ops.events
        with self.registry.transaction() as session:
            for row, word, detail in changes:
                result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(Store)
                    .where(
                        Store.id == row.id,
                        Store.observed_status.is_not_distinct_from(row.observed_status),
                    )
                    .values(observed_status=word)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1 and row.observed_status is not None:
                    events.emit(
                        session,
                        "store.status",
                        store_id=row.id,
                        data={"from": row.observed_status, "to": word, "detail": detail},
                    )

    def _tend_member(
        self, row: _Row, need: Need | None, stack: StackStatus | None, default: str
    ) -> str | None:
        if need is None or self.pool is None:
            return None
        if need is Need.RECYCLE and row.version == default:
            why = "recycled (beyond the pool's target)"
        elif need is Need.RECYCLE:
            why = f"recycled (made for version {row.version}, the default is now {default})"
        elif row.pool != PoolState.READY:
            why = "its fill was cut short"
        else:
            seen = stack.observed.value if stack is not None else "absent"
            why = f"found {seen}, not paused"
        try:
            return self.pool.destroy(row.id, why, recycled=need is Need.RECYCLE)
        except StorefleetError as exc:
            log.warning("reconciler: warm-pool member %s: destroy failed: %s", row.id, exc.message)
            return f"destroying a warm-pool member failed: {exc.message}"

    def _still_orphan(self, store_id: str) -> bool:
        with self.registry.transaction() as session:
            return session.get(Store, store_id) is None

    def forgive(self, store_id: str, kind: str) -> None:
        """An operation changed the store: a repair given up on may work now (the reconciler's
        own repairs and recoveries do not count)."""
        if kind not in (OpKind.REPAIR, OpKind.RECOVER):
            self._backoff.pop(store_id, None)

    def _act(self, store_id: str, need: Need) -> str | None:
        try:
            if need is Need.RECOVER:
                return self.convergence.recover(store_id)
            if need is Need.RELEASE:
                return self.convergence.release_leftovers(store_id)
            if need is Need.HALT:
                return self.convergence.halt(store_id)
            backoff = self._backoff.setdefault(store_id, _Backoff())
            if time.monotonic() < backoff.next_at:
                return None
            try:
                done = self.convergence.repair(store_id)
            except StorefleetError as exc:
                backoff.failures += 1
                if not exc.retryable:  # retrying cannot mend it: say so once, then wait
                    backoff.next_at = float("inf")
                    log.warning(
                        "reconciler: store %s: %s failed for good: %s", store_id, need, exc.message
                    )
                    return f"{need} failed, not retried until the store changes: {exc.message}"
                delay = Backoff(self.backoff_initial_s, self.backoff_max_s).delay(backoff.failures)
                if isinstance(exc, TemporaryFailure):
                    delay = max(delay, exc.delay_s)
                backoff.next_at = time.monotonic() + delay
                raise
            backoff.failures = 0
            return done
        except StorefleetError as exc:
            log.warning("reconciler: store %s: %s failed: %s", store_id, need, exc.message)
            return f"{need} failed: {exc.message}"
