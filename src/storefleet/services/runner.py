"""The operation runner: a store's lock, running a body as a recorded operation, in the
background or not, and cancelling. Deployments, lifecycle, backups and the reconciler's actions
all run their work through it.

Whoever must hear that an operation on a store ended (the status cache, the reconciler)
subscribes to `Changes`, the one event hook between services.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import CursorResult, or_, select, update

from storefleet.errors import BusyError, NotFoundError, OperationCancelledError, StorefleetError
from storefleet.logs import bound
from storefleet.registry.db import Registry
from storefleet.registry.models import OpState, Store, utcnow
from storefleet.services.operations import FLEET, LeaseKeeper, OperationLog, RunningOp
from storefleet.services.schemas import OperationView
from storefleet.services.steps import reason_of

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DeployTimeouts:
    deploy_s: float
    undeploy_s: float
    lock_ttl_s: float
    poll_s: float = 0.05
    status_max_age_s: float = 0.5


class Changes:
    """An operation on a store ended: its subscribers are told the store id and the operation's
    kind (in the order they subscribed; a subscriber that fails is logged, the others hear)."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[str, str], None]] = []

    def subscribe(self, subscriber: Callable[[str, str], None]) -> None:
        self._subscribers.append(subscriber)

    def emit(self, store_id: str, kind: str) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(store_id, kind)
            except Exception:  # a subscriber's bug must not undo a finished operation
                log.exception("a change subscriber failed")


class OperationRunner:
    def __init__(
        self,
        *,
        registry: Registry,
        ops: OperationLog,
        keeper: LeaseKeeper,
        timeouts: DeployTimeouts,
        changes: Changes,
    ) -> None:
        self.registry = registry
        self.ops = ops
        self.keeper = keeper
        self.timeouts = timeouts
        self.changes = changes
        self._background = ThreadPoolExecutor(32, thread_name_prefix="operation")

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=False)

    # -- the store's lock -------------------------------------------------------------------

    def _try_lock(self, store_id: str, token: str) -> tuple[bool, bool]:
        """(taken, exists). Compare-and-set of the store's lock; a locked row being written by
        another transaction is skipped, not waited for (`FOR UPDATE SKIP LOCKED`). A lock the
        operation already holds (a warm-pool claim takes it in the claim's transaction) is
        taken again."""
        now = utcnow()
        free = (
            select(Store.id)
            .where(
                Store.id == store_id,
                or_(
                    Store.lock_token.is_(None),
                    Store.lock_expires_at < now,
                    Store.lock_token == token,
                ),
            )
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.registry.transaction() as session:
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Store)
                .where(Store.id == free)
                .values(
                    lock_token=token,
                    lock_expires_at=now + timedelta(seconds=self.timeouts.lock_ttl_s),
                )
                .execution_options(synchronize_session=False)
            )
            taken = result.rowcount == 1
            exists = taken or session.get(Store, store_id) is not None
        return taken, exists

    @contextmanager
    def _locked(self, store_id: str, token: str, *, wait_s: float) -> Iterator[None]:
        deadline = time.monotonic() + wait_s
        while True:
            taken, exists = self._try_lock(store_id, token)
            if not exists:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            if taken:
                break
            if time.monotonic() >= deadline:
                raise BusyError(
                    f"another operation on store {store_id} is still in progress; try again",
                    store_id=store_id,
                )
            time.sleep(self.timeouts.poll_s)
        try:
            yield
        finally:
            with self.registry.transaction() as session:
                session.execute(
                    update(Store)
                    .where(Store.id == store_id, Store.lock_token == token)
                    .values(lock_token=None, lock_expires_at=None)
                    .execution_options(synchronize_session=False)
                )

    # -- running ----------------------------------------------------------------------------

    def execute(
        self,
        op_id: str,
        store_id: str,
        kind: str,
        body: Callable[[RunningOp], T],
        *,
        wait_s: float | None = None,
    ) -> T:
        """Run `body` as operation `op_id`, holding the store's lock, recording how it ends.
        The lock is waited for `wait_s` (default: as long as a deploy and an undeploy last)."""
        if wait_s is None:
            wait_s = self.timeouts.deploy_s + self.timeouts.undeploy_s
        run = RunningOp(op_id, store_id, kind, self.ops)
        with bound(store_id=store_id, op_id=op_id):
            return self._execute_bound(run, body, wait_s=wait_s)

    def _execute_bound(self, run: RunningOp, body: Callable[[RunningOp], T], *, wait_s: float) -> T:
        op_id, store_id = run.id, run.store_id
        started = False
        try:
            with self._locked(store_id, op_id, wait_s=wait_s):
                self.keeper.hold(run)
                try:
                    self.ops.start(op_id)
                    started = True
                    result = body(run)
                finally:
                    self.keeper.release(op_id)
                    # before the end is recorded: whoever the end event wakes (a dashboard's
                    # badge) observes the store afresh, never an observation from before it
                    self.changes.emit(store_id, run.kind)
        except BusyError:
            if not started and wait_s == 0:
                raise  # a reconciler action that did not get the store: the caller forgets it
            self.ops.finish(op_id, OpState.FAILED, error="busy: another operation held the store")
            raise
        except OperationCancelledError as exc:
            self.ops.finish(op_id, OpState.CANCELLED, error=exc.message)
            raise
        except BaseException as exc:
            self.ops.finish(op_id, OpState.FAILED, error=reason_of(exc))
            raise
        dumped = result.model_dump(mode="json") if hasattr(result, "model_dump") else None
        self.ops.finish(op_id, OpState.SUCCEEDED, result=dumped)
        return result

    def submit(self, fn: Callable[[], object]) -> None:
        """Run `fn` in the background (an operation the caller does not wait for)."""

        def quietly() -> None:
            try:
                fn()
            except StorefleetError as exc:
                log.info("background operation ended: %s", exc.message)
            except Exception:  # a bug: log it with its traceback, keep the worker pool alive
                log.exception("background operation failed")

        self._background.submit(quietly)

    def fleet_operation(
        self,
        kind: str,
        params: dict[str, Any],
        work: Callable[[RunningOp, dict[str, Any]], None],
        *,
        stopped: Callable[[dict[str, Any]], None] = lambda _result: None,
    ) -> OperationView:
        """An operation over many stores (store id FLEET), run in the background: `work` fills
        its result as it goes and raises `StorefleetError` to stop (code `cancelled`: the
        operation is cancelled, else failed; `stopped` may then amend the result). The answer
        is the operation, which tells how it ends."""
        op = self.ops.create(FLEET, kind, params)

        def run() -> None:
            running = RunningOp(op.id, FLEET, kind, self.ops)
            self.ops.start(op.id)
            result: dict[str, Any] = {}
            try:
                work(running, result)
            except StorefleetError as exc:
                stopped(result)
                state = OpState.CANCELLED if exc.code == "cancelled" else OpState.FAILED
                self.ops.finish(op.id, state, result=result, error=exc.message)
                return
            except Exception as exc:  # a bug: record it, never leave the operation running
                self.ops.finish(
                    op.id, OpState.FAILED, result=result, error=f"{type(exc).__name__}: {exc}"
                )
                raise
            self.ops.finish(op.id, OpState.SUCCEEDED, result=result)

        self.submit(run)
        return op

    def cancel_requested(self, op_id: str) -> None:
        """Raise (code `cancelled`) when a cancel of the fleet operation was asked for."""
        if self.ops.get(op_id).cancel_requested:
            raise StorefleetError("cancelled", code="cancelled")

    def operation(
        self,
        store_id: str,
        kind: str,
        body: Callable[[RunningOp], T],
        params: dict[str, Any] | None = None,
        *,
        wait: bool = True,
    ) -> T | OperationView:
        """Record operation `kind` on the store and run `body` as it: now (its result), or in
        the background (`wait=False`: the operation, which tells how it ends). An unknown store
        is a NotFoundError before anything is recorded."""
        with self.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None or store.pool is not None:  # (a warm-pool member is no store)
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
        op = self.ops.create(store_id, kind, params)
        if not wait:
            self.submit(lambda: self.execute(op.id, store_id, kind, body))
            return op
        return self.execute(op.id, store_id, kind, body)

    def unless_busy(
        self, store_id: str, kind: str, body: Callable[[RunningOp], str | None]
    ) -> str | None:
        """Run a reconciler action as an operation, without waiting for the store's lock.
        An action that could not start, or found nothing to do, leaves no operation behind."""
        op_id = self.ops.create(store_id, kind).id
        try:
            done = self.execute(op_id, store_id, kind, body, wait_s=0)
        except BusyError:
            self.ops.delete_unstarted(op_id)  # someone else holds the store: not our turn
            return None
        if done is None:
            self.ops.delete_unstarted(op_id, even_if_started=True)
        return done

    def cancel(self, op_id: str) -> OperationView:
        view = self.ops.request_cancel(op_id)
        # at once if it runs in this process, else this plane's other processes look now;
        # other control planes see the flag at their next lock renewal
        self.keeper.cancel_local(op_id)
        return view
