"""Operations: every mutating action is recorded in the registry before anything acts.

An operation holds its store's lease lock (the lock token is the operation id) while it runs.
`LeaseKeeper` extends the locks this control plane holds and carries cancel requests (made on any
control plane) to the running operation. If a control plane dies, its locks expire and the
reconciler finishes or rolls back what it left.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from storefleet.errors import ConflictError, NotFoundError, OperationCancelledError
from storefleet.registry.db import Registry
from storefleet.registry.models import OP_DONE, Operation, OpState, Store, utcnow
from storefleet.services.events import EventLog
from storefleet.services.metrics import Metrics
from storefleet.services.schemas import OperationView, StepView
from storefleet.shared import CANCEL_WAKE, Numbers, Waker

log = logging.getLogger(__name__)


FLEET = "fleet"  # the store id of fleet-wide operations


class OpKind(StrEnum):
    """What an operation does (stored as its value)."""

    DEPLOY = "deploy"
    UNDEPLOY = "undeploy"
    DELETE = "delete"
    REPAIR = "repair"
    RECOVER = "recover"
    STOP = "stop"
    START = "start"
    RESTART = "restart"
    UPGRADE = "upgrade"
    APPLY_PLAN = "apply_plan"
    BACKUP = "backup"
    RESTORE = "restore"
    FLEET_UPGRADE = "fleet_upgrade"
    POOL_FILL = "pool_fill"  # a warm-pool member made (its store id: the member's)
    POOL_DESTROY = "pool_destroy"
    MOVE = "move"  # a store to another node
    DRAIN = "drain"  # every store off a node (its store id: FLEET; the node in its params)


def _view(op: Operation) -> OperationView:
    return OperationView(
        id=op.id,
        store_id=op.store_id,
        kind=op.kind,
        state=op.state,
        params=json.loads(op.params),
        steps=[StepView.model_validate(s) for s in json.loads(op.steps)],
        result=json.loads(op.result) if op.result else None,
        error=op.error,
        cancel_requested=op.cancel_requested,
        created_at=op.created_at,
        started_at=op.started_at,
        finished_at=op.finished_at,
    )


@dataclass
class RunningOp:
    """What one running operation carries: its id, its store, its cancel flag and deadline."""

    id: str
    store_id: str
    kind: str
    log: OperationLog
    cancel: threading.Event = field(default_factory=threading.Event)

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def check(self) -> None:
        if self.cancel.is_set():
            raise OperationCancelledError(f"operation {self.id} was cancelled")

    @contextmanager
    def step(self, name: str, *, cancellable: bool = True) -> Iterator[None]:
        """Record a step: started, then ok or failed (with the reason). A cancellable step
        does not start once a cancel was requested."""
        if cancellable:
            self.check()
        index = self.log.step_started(self.id, name)
        try:
            yield
        except BaseException as exc:
            reason = getattr(exc, "message", None) or type(exc).__name__
            self.log.step_finished(self.id, index, "failed", reason)
            raise
        self.log.step_finished(self.id, index, "ok", None)
        self.log.fault_point(self.kind, name)


class OperationLog:
    """Operations in the registry. Each start, step and end is also an event (written in the
    same transaction) and each end is counted in the metrics."""

    def __init__(
        self,
        registry: Registry,
        owner: str,
        *,
        events: EventLog,
        metrics: Metrics,
        fault_after: str | None = None,
    ) -> None:
        self.registry = registry
        self.owner = owner
        self.events = events
        self.metrics = metrics
        # Test hook (a "failpoint"): `kind:step` makes this process SIGKILL itself right after
        # that step is recorded, to prove crash recovery. Unset in production.
        self.fault_after = fault_after

    def fault_point(self, kind: str, step: str) -> None:
        if self.fault_after and self.fault_after == f"{kind}:{step}":
            log.warning("fault injection: killing the control plane after %s:%s", kind, step)
            os.kill(os.getpid(), signal.SIGKILL)

    def create(
        self,
        store_id: str,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        session: Session | None = None,
        op_id: str | None = None,
    ) -> OperationView:
        """Record a pending operation (in the caller's transaction when `session` is given)."""
        op = Operation(
            id=op_id or str(uuid.uuid4()),
            store_id=store_id,
            kind=kind,
            state=OpState.PENDING,
            params=json.dumps(params or {}),
            steps="[]",
            cancel_requested=False,
            owner=self.owner,
        )
        if session is not None:
            session.add(op)
            session.flush()
            return _view(op)
        with self.registry.transaction() as own:
            own.add(op)
        return _view(op)

    def get(self, op_id: str) -> OperationView:
        with self.registry.transaction() as session:
            op = session.get(Operation, op_id)
            if op is None:
                raise NotFoundError(f"operation {op_id} does not exist", operation_id=op_id)
            return _view(op)

    def for_store(self, store_id: str, limit: int = 100) -> list[OperationView]:
        with self.registry.transaction() as session:
            rows = session.scalars(
                select(Operation)
                .where(Operation.store_id == store_id)
                .order_by(Operation.created_at.desc(), Operation.id)
                .limit(limit)
            )
            return [_view(op) for op in rows]

    def start(self, op_id: str) -> None:
        with self.registry.transaction() as session:
            op = session.get(Operation, op_id)
            if op is None:
                return
            op.state, op.started_at, op.owner = OpState.RUNNING, utcnow(), self.owner
            self.events.emit(
                session,
                "operation.started",
                store_id=op.store_id,
                op_id=op.id,
                data={"kind": op.kind, "params": json.loads(op.params)},
            )

    def finish(
        self, op_id: str, state: str, *, result: Any = None, error: str | None = None
    ) -> None:
        with self.registry.transaction() as session:
            op = session.get(Operation, op_id)
            if op is None:
                return
            op.state, op.finished_at, op.error = state, utcnow(), error
            op.result = None if result is None else json.dumps(result)
            duration = (op.finished_at - op.started_at).total_seconds() if op.started_at else None
            kind = op.kind
            self.events.emit(
                session,
                "operation.finished",
                store_id=op.store_id,
                op_id=op.id,
                data={"kind": kind, "state": state, "error": error, "duration_s": duration},
            )
        self.metrics.operation_ended(kind, state, duration)

    def _steps(self, op_id: str, change: Callable[[list[dict[str, Any]]], int]) -> int:
        """Change the operation's step list; the changed step becomes an `operation.step`."""
        with self.registry.transaction() as session:
            op = session.get(Operation, op_id)
            if op is None:
                return -1
            steps = json.loads(op.steps)
            index = change(steps)
            op.steps = json.dumps(steps)
            if 0 <= index < len(steps):
                step = steps[index]
                self.events.emit(
                    session,
                    "operation.step",
                    store_id=op.store_id,
                    op_id=op.id,
                    data={
                        "kind": op.kind,
                        "index": index,
                        "step": step["name"],
                        "state": step["state"],
                        "error": step.get("error"),
                    },
                )
            return index

    def step_started(self, op_id: str, name: str) -> int:
        def add(steps: list[dict[str, Any]]) -> int:
            steps.append({"name": name, "state": "running", "started_at": utcnow().isoformat()})
            return len(steps) - 1

        return self._steps(op_id, add)

    def step_finished(self, op_id: str, index: int, state: str, error: str | None) -> None:
        def end(steps: list[dict[str, Any]]) -> int:
            if 0 <= index < len(steps):
                steps[index].update(state=state, finished_at=utcnow().isoformat(), error=error)
            return index

        self._steps(op_id, end)

    def request_cancel(self, op_id: str) -> OperationView:
        with self.registry.transaction() as session:
            op = session.get(Operation, op_id)
            if op is None:
                raise NotFoundError(f"operation {op_id} does not exist", operation_id=op_id)
            if op.state in OP_DONE:
                raise ConflictError(
                    f"operation {op_id} has already ended ({op.state})", code="operation_ended"
                )
            op.cancel_requested = True
        return self.get(op_id)

    def interrupted(
        self, store_id: str, reason: str, exclude: str
    ) -> list[tuple[str, dict[str, Any], list[str]]]:
        """Mark the store's unfinished operations (their control plane died, so they hold no
        lock any more) as failed. Returns their (kind, params, names of the steps that ended
        ok), newest first."""
        with self.registry.transaction() as session:
            ops = list(
                session.scalars(
                    select(Operation)
                    .where(
                        Operation.store_id == store_id,
                        Operation.id != exclude,
                        Operation.state == OpState.RUNNING,
                    )
                    .order_by(Operation.created_at.desc())
                )
            )
            for op in ops:
                op.state, op.error, op.finished_at = OpState.FAILED, reason, utcnow()
                self.events.emit(
                    session,
                    "operation.finished",
                    store_id=op.store_id,
                    op_id=op.id,
                    data={"kind": op.kind, "state": op.state, "error": reason, "duration_s": None},
                )
            return [
                (
                    op.kind,
                    json.loads(op.params),
                    [x["name"] for x in json.loads(op.steps) if x.get("state") == "ok"],
                )
                for op in ops
            ]

    def fail_abandoned(self, older_than_s: float, fleet_older_than_s: float) -> int:
        """Pending operations older than any lock wait can last were abandoned by a dead
        control plane: mark them failed. So are fleet operations of another control plane
        whose last step started longer ago than any wave can last (they hold no store lock
        whose expiry would tell)."""
        fleet_cutoff = utcnow() - timedelta(seconds=fleet_older_than_s)
        with self.registry.transaction() as session:
            for op in session.scalars(
                select(Operation).where(
                    Operation.store_id == FLEET,
                    Operation.state == OpState.RUNNING,
                    Operation.owner != self.owner,
                )
            ):
                steps = json.loads(op.steps)
                last = datetime.fromisoformat(steps[-1]["started_at"]) if steps else op.started_at
                if last is None or last < fleet_cutoff:
                    op.state, op.finished_at = OpState.FAILED, utcnow()
                    op.error = "abandoned: its control plane stopped during the fleet upgrade"
                    self.events.emit(
                        session,
                        "operation.finished",
                        store_id=op.store_id,
                        op_id=op.id,
                        data={"kind": op.kind, "state": op.state, "error": op.error},
                    )
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self.registry.transaction() as session:
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Operation)
                .where(Operation.state == OpState.PENDING, Operation.created_at < cutoff)
                .values(
                    state=OpState.FAILED,
                    error="abandoned: its control plane stopped before it started",
                    finished_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)

    def delete_unstarted(self, op_id: str, *, even_if_started: bool = False) -> None:
        """Forget a reconciler operation that found nothing to do (or could not start)."""
        with self.registry.transaction() as session:
            op = session.get(Operation, op_id)
            if op is not None and (even_if_started or op.started_at is None):
                session.delete(op)


class LeaseKeeper:
    """Keeps the store locks of this process's running operations alive (renewed every
    ttl/6), and passes cancel requests from the registry to them. One thread per process of a
    control plane; a cancel asked in another process of it (sharing `shared`) wakes it at
    once, other control planes' cancels are seen at the next renewal."""

    def __init__(self, registry: Registry, ttl_s: float, shared: Numbers | None = None) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._held: dict[str, RunningOp] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = Waker(shared, CANCEL_WAKE)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set_here()

    def hold(self, op: RunningOp) -> None:
        with self._lock:
            self._held[op.id] = op

    def release(self, op_id: str) -> None:
        with self._lock:
            self._held.pop(op_id, None)

    def holds(self, op_id: str | None) -> bool:
        """True while operation `op_id` runs in this control plane (its lock is alive, whatever
        its expiry says: a heartbeat delayed by load must not hand the store to the reconciler)."""
        with self._lock:
            return op_id is not None and op_id in self._held

    def running_kinds(self) -> list[str]:
        """The kinds of the operations running in this control plane now."""
        with self._lock:
            return [op.kind for op in self._held.values()]

    def cancel_local(self, op_id: str) -> bool:
        """Cancel operation `op_id` at once when it runs in this process (True); otherwise
        wake the keepers of this control plane's other processes, which read the registry's
        cancel flag (False)."""
        with self._lock:
            op = self._held.get(op_id)
        if op is not None:
            op.cancel.set()
        else:
            self._wake.set()
        return op is not None

    def _loop(self) -> None:
        while True:
            self._wake.wait(max(0.2, self.ttl_s / 6))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.beat()
            except Exception:  # e.g. the registry is briefly away: log it, beat again
                log.exception("lease heartbeat failed")

    def _still_held(self, op_id: str) -> bool:
        with self._lock:
            return op_id in self._held

    def beat(self) -> None:
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        expires = utcnow() + timedelta(seconds=self.ttl_s)
        with self.registry.transaction() as session:
            for op in held:
                result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    update(Store)
                    .where(Store.id == op.store_id, Store.lock_token == op.id)
                    .values(lock_expires_at=expires)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 0 and self._still_held(op.id):
                    # (an operation that finished since the snapshot released its lock itself)
                    log.warning("operation %s lost the lock of store %s", op.id, op.store_id)
            wanted = set(
                session.scalars(
                    select(Operation.id).where(
                        Operation.id.in_([op.id for op in held]),
                        Operation.cancel_requested.is_(True),
                    )
                )
            )
        for op in held:
            if op.id in wanted:
                op.cancel.set()
