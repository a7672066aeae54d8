"""Deploy, undeploy and observe one store's stack, each as a recorded operation.

A deploy: record the operation -> lock the store (the lock token is the operation id) ->
intent (phase `deploying`) -> lease ports -> secrets -> the driver applies the stack and waits
until healthy -> record links (phase `deployed`). Any failure or a cancel removes what this
deploy created (stack, files, leases) and leaves the store `not_deployed` with `last_error`.
Registry work happens in short transactions; the driver is only called outside them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import CursorResult, or_, select, update

from storefleet.errors import (
    BusyError,
    ConflictError,
    NotFoundError,
    OperationCancelledError,
    RuntimeFailure,
    StorefleetError,
)
from storefleet.logs import bound
from storefleet.registry.db import Registry
from storefleet.registry.models import DeployPhase, OpState, Store, utcnow
from storefleet.runtime.base import (
    Limits,
    Links,
    Observed,
    Ports,
    RuntimeDriver,
    StackSpec,
    StackStatus,
)
from storefleet.services.observe import Observations
from storefleet.services.operations import LeaseKeeper, OperationLog, OpKind, RunningOp
from storefleet.services.ports import PortAllocator
from storefleet.services.schemas import (
    DeployResult,
    DeployStatus,
    OperationView,
    PathsView,
    PortsView,
    ServiceView,
    StatusWord,
    UndeployResult,
    UsageView,
)
from storefleet.services.secrets import SecretStore
from storefleet.services.steps import Context, StepLists, Toolkit, run_steps, undo_steps
from storefleet.services.usage import UsageMeter

log = logging.getLogger(__name__)
T = TypeVar("T")
# Operations that change a deployed stack in place: cut short, the stack is re-applied.
DAY2_KINDS = (
    OpKind.STOP,
    OpKind.START,
    OpKind.RESTART,
    OpKind.UPGRADE,
    OpKind.APPLY_PLAN,
    OpKind.RESTORE,
)

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


@dataclass(frozen=True)
class DeployTimeouts:
    deploy_s: float
    undeploy_s: float
    lock_ttl_s: float
    poll_s: float = 0.05
    status_max_age_s: float = 0.5


def _ports_view(ports: Ports) -> PortsView:
    return PortsView(
        backend_port=ports.backend_port, websocket_port=ports.websocket_port, db_port=ports.db_port
    )


def _result(
    store_id: str,
    message: str,
    links: Links,
    ports: Ports,
    status: Literal["deployed", "already_deployed"],
) -> DeployResult:
    return DeployResult(
        message=message,
        store_id=store_id,
        back_link=links.back_link,
        db_link=links.db_link,
        ports=_ports_view(ports),
        status=status,
    )


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, StorefleetError) else type(exc).__name__


class DeploymentService:
    def __init__(
        self,
        *,
        registry: Registry,
        driver: RuntimeDriver,
        allocator: PortAllocator,
        secrets: SecretStore,
        timeouts: DeployTimeouts,
        ops: OperationLog,
        keeper: LeaseKeeper,
        plan_limits: Mapping[str, Limits] | None = None,
        steps: StepLists | None = None,
    ) -> None:
        self.registry = registry
        self.plan_limits = dict(plan_limits or {})
        # Takes the final backup of a store about to be purged (set by the backup service).
        self.final_backup: Callable[[str], object] | None = None
        self.driver = driver
        self.allocator = allocator
        self.secrets = secrets
        self.timeouts = timeouts
        self.ops = ops
        self.keeper = keeper
        self.on_change: Callable[[], None] = lambda: None
        self.kit = Toolkit(
            registry=registry,
            driver=driver,
            allocator=allocator,
            secrets=secrets,
            deploy_s=timeouts.deploy_s,
            undeploy_s=timeouts.undeploy_s,
            plan_limits=self.plan_limits,
        )
        self.steps = steps or StepLists.default()
        self.observations = Observations(self._observe_now, timeouts.status_max_age_s)
        self.meter = UsageMeter(driver)
        self._background = ThreadPoolExecutor(32, thread_name_prefix="operation")

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=False)

    # -- locking ----------------------------------------------------------------------------

    def _try_lock(self, store_id: str, token: str) -> tuple[bool, bool]:
        """(taken, exists). Compare-and-set of the store's lock; a locked row being written by
        another transaction is skipped, not waited for (`FOR UPDATE SKIP LOCKED`)."""
        now = utcnow()
        free = (
            select(Store.id)
            .where(
                Store.id == store_id,
                or_(Store.lock_token.is_(None), Store.lock_expires_at < now),
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
        except BusyError:
            if not started and wait_s == 0:
                raise  # a reconciler action that did not get the store: the caller forgets it
            self.ops.finish(op_id, OpState.FAILED, error="busy: another operation held the store")
            raise
        except OperationCancelledError as exc:
            self.ops.finish(op_id, OpState.CANCELLED, error=exc.message)
            raise
        except BaseException as exc:
            self.ops.finish(op_id, OpState.FAILED, error=_reason(exc))
            raise
        finally:
            self.observations.forget(store_id)
            self.on_change()
        dumped = result.model_dump(mode="json") if hasattr(result, "model_dump") else None
        self.ops.finish(op_id, OpState.SUCCEEDED, result=dumped)
        return result

    def submit(self, fn: Callable[[], object]) -> None:
        def quietly() -> None:
            try:
                fn()
            except StorefleetError as exc:
                log.info("background operation ended: %s", exc.message)
            except Exception:  # a bug: log it with its traceback, keep the worker pool alive
                log.exception("background operation failed")

        self._background.submit(quietly)

    # -- registry helpers -------------------------------------------------------------------

    def load(self, store_id: str) -> Store:
        with self.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            session.expunge(store)
        return store

    def _load_with_ports(self, store_id: str) -> tuple[Store, Ports | None]:
        """The store and its leased ports, read in one short transaction."""
        with self.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None:
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            session.expunge(store)
            ports = self.allocator.ports_in(session, store_id)
        return store, ports

    def set_fields(self, store_id: str, **values: object) -> None:
        self.kit.set_fields(store_id, **values)

    def spec(
        self, store: Store, ports: Ports, *, version: str | None = None, plan: str | None = None
    ) -> StackSpec:
        """The stack of `store` (its recorded version and plan unless others are given)."""
        return self.kit.spec(store, ports, version=version, plan=plan)

    def context(self, run: RunningOp, store: Store, **values: Any) -> Context:
        """A fresh context for a step list: the store as read now, with its leased ports."""
        return Context(
            run=run, store=store, kit=self.kit, ports=self.allocator.ports_of(store.id), **values
        )

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
        the background (`wait=False`: the operation, which tells how it ends)."""
        self.load(store_id)
        op = self.ops.create(store_id, kind, params)
        if not wait:
            self.submit(lambda: self.execute(op.id, store_id, kind, body))
            return op
        return self.execute(op.id, store_id, kind, body)

    # -- deploy -----------------------------------------------------------------------------

    def deploy(self, store_id: str) -> DeployResult:
        store = self.load(store_id)
        done = self._already_deployed(store)
        if done is not None:  # a no-op is no operation (nor a deploy in the metrics)
            return done
        op = self.ops.create(store_id, OpKind.DEPLOY)
        return self._run_deploy(op.id, store_id)

    def _already_deployed(self, store: Store) -> DeployResult | None:
        """The answer to a deploy of a store that is deployed and alive, else None."""
        if store.phase != DeployPhase.DEPLOYED or not (store.back_link and store.db_link):
            return None
        ports = self.allocator.ports_of(store.id)
        observed = self.driver.status(store.id).observed
        if not ports or observed in (Observed.ABSENT, Observed.STOPPED):
            return None
        recorded = Links(store.back_link, store.db_link)
        message = f"store {store.id} is already deployed"
        return _result(store.id, message, recorded, ports, "already_deployed")

    def deploy_async(self, store_id: str) -> OperationView:
        self.load(store_id)
        op = self.ops.create(store_id, OpKind.DEPLOY)
        self.submit(lambda: self._run_deploy(op.id, store_id))
        return op

    def _run_deploy(self, op_id: str, store_id: str) -> DeployResult:
        wait = self.timeouts.deploy_s + self.timeouts.undeploy_s
        return self.execute(op_id, store_id, OpKind.DEPLOY, self._deploy_body, wait_s=wait)

    def _deploy_body(self, run: RunningOp) -> DeployResult:
        store = self.load(run.store_id)
        done = self._already_deployed(store)  # deployed meanwhile (by a concurrent deploy)
        if done is not None:
            return done
        if store.phase == DeployPhase.STOPPED and self.allocator.ports_of(store.id):
            return self.start_stopped(run, store)
        ctx = self.context(run, store)
        run_steps(self.steps.deploy, ctx, failure="deploy failed")
        ports, links = ctx.need_ports(), ctx.links
        assert links is not None
        log.info(
            "store %s deployed on ports %d/%d/%d (backend/websocket/db)",
            store.id,
            ports.backend_port,
            ports.websocket_port,
            ports.db_port,
        )
        return _result(store.id, f"store {store.id} deployed", links, ports, "deployed")

    def start_stopped(self, run: RunningOp, store: Store) -> DeployResult:
        """Start a stopped store on the ports and with the data it kept."""
        ctx = self.context(run, store)
        run_steps(self.steps.start, ctx, failure="start failed")
        assert ctx.links is not None
        links, ports = ctx.links, ctx.need_ports()
        return _result(store.id, f"store {store.id} started", links, ports, "deployed")

    def _roll_back(self, run: RunningOp, reason: str) -> None:
        """Undo an interrupted deploy: the undo of each step of the deploy list, last first."""
        log.warning("store %s: rolling back: %s", run.store_id, reason)
        ctx = self.context(run, self.load(run.store_id))
        undo_steps(self.steps.deploy, ctx)
        self.set_fields(run.store_id, last_error=reason)

    # -- undeploy and delete ----------------------------------------------------------------

    def undeploy(
        self, store_id: str, *, purge: bool = False, final_backup: bool = True
    ) -> UndeployResult:
        self.load(store_id)
        params = {"purge": purge, "final_backup": purge and final_backup}
        op = self.ops.create(store_id, OpKind.UNDEPLOY, params)
        return self._run_undeploy(op.id, store_id, purge=purge, forget=False, backup=final_backup)

    def undeploy_async(
        self, store_id: str, *, purge: bool = False, final_backup: bool = True
    ) -> OperationView:
        self.load(store_id)
        params = {"purge": purge, "final_backup": purge and final_backup}
        op = self.ops.create(store_id, OpKind.UNDEPLOY, params)
        self.submit(
            lambda: self._run_undeploy(
                op.id, store_id, purge=purge, forget=False, backup=final_backup
            )
        )
        return op

    def delete(self, store_id: str, *, purge: bool = False, final_backup: bool = True) -> None:
        """Undeploy the store (keeping its data unless `purge`) and forget it, as one operation.
        A purge first takes a final backup (unless `final_backup` is false)."""
        self.load(store_id)
        params = {"purge": purge, "final_backup": purge and final_backup}
        op = self.ops.create(store_id, OpKind.DELETE, params)
        self._run_undeploy(op.id, store_id, purge=purge, forget=True, backup=final_backup)

    def _run_undeploy(
        self, op_id: str, store_id: str, *, purge: bool, forget: bool, backup: bool = True
    ) -> UndeployResult:
        def body(run: RunningOp) -> UndeployResult:
            ctx = self.context(
                run,
                self.load(store_id),
                purge=purge,
                forget=forget,
                final_backup=backup,
                final_backup_hook=self.final_backup,
            )
            run_steps(self.steps.undeploy, ctx, failure="undeploy failed")
            kept = "data purged" if purge else "data kept"
            what = "deleted" if forget else "undeployed"
            log.info("store %s %s (%s)", store_id, what, kept)
            return UndeployResult(
                message=f"store {store_id} undeployed ({kept})",
                store_id=store_id,
                status="undeployed",
            )

        wait = self.timeouts.deploy_s + self.timeouts.undeploy_s
        kind = OpKind.DELETE if forget else OpKind.UNDEPLOY
        return self.execute(op_id, store_id, kind, body, wait_s=wait)

    def _finish_undeploy(self, run: RunningOp, *, purge: bool, forget: bool) -> None:
        ctx = self.context(run, self.load(run.store_id), purge=purge, forget=forget)
        run_steps(self.steps.finish_undeploy, ctx, failure="undeploy failed")

    # -- cancel -----------------------------------------------------------------------------

    def cancel(self, op_id: str) -> OperationView:
        view = self.ops.request_cancel(op_id)
        self.keeper.cancel_local(op_id)  # at once if it runs here; other planes see the flag
        return view

    # -- convergence (used by the reconciler) -----------------------------------------------

    def recover(self, store_id: str) -> str | None:
        """Finish or roll back what an operation cut short by a crash left. Returns what was
        done, or None when the store is busy (a live operation holds it) or needs nothing."""

        def body(run: RunningOp) -> str | None:
            store = self.load(store_id)
            cut = self.ops.interrupted(store_id, "interrupted: its control plane stopped", run.id)
            ctx = self.context(run, store)
            if store.phase == DeployPhase.DEPLOYING:
                if ctx.ports and self.driver.status(store_id).observed is Observed.RUNNING:
                    run_steps(self.steps.finish_deploy, ctx, failure="deploy failed")
                    return "finished an interrupted deploy"
                self._roll_back(run, "deploy interrupted (control plane stopped); rolled back")
                return "rolled back an interrupted deploy"
            if store.phase == DeployPhase.UNDEPLOYING:
                params = cut[0][1] if cut else {}
                forget = bool(cut) and cut[0][0] == OpKind.DELETE
                self._finish_undeploy(run, purge=bool(params.get("purge")), forget=forget)
                return "finished an interrupted " + ("delete" if forget else "undeploy")
            if cut:  # it had reached a stable phase before its control plane died
                kind = cut[0][0]
                if kind in DAY2_KINDS and store.phase == DeployPhase.DEPLOYED and ctx.ports:
                    # an upgrade, restart, restore... cut short: converge on what the registry
                    # records (its version and plan), whatever the runtime was left with
                    run_steps(self.steps.converge, ctx, failure=f"{kind} failed")
                    return f"re-applied the recorded stack after an interrupted {kind}"
                if kind in DAY2_KINDS and store.phase == DeployPhase.STOPPED:
                    run_steps(self.steps.converge_stopped, ctx, failure=f"{kind} failed")
                    return f"stopped the store again after an interrupted {kind}"
                return f"closed an interrupted {kind} (store found {store.phase})"
            return None

        return self._reconcile_op(store_id, OpKind.RECOVER, body)

    def repair(self, store_id: str) -> str | None:
        """Bring a deployed store's stack back (apply is idempotent); repair its links."""

        def body(run: RunningOp) -> str | None:
            store = self.load(store_id)
            if store.phase != DeployPhase.DEPLOYED:
                return None
            run_steps(self.steps.repair, self.context(run, store), failure="repair failed")
            return "started the stack again"

        return self._reconcile_op(store_id, OpKind.REPAIR, body)

    def release_leftovers(self, store_id: str) -> str | None:
        """A store that is not deployed holds leases or a running stack: release and remove."""

        def body(run: RunningOp) -> str | None:
            store = self.load(store_id)
            if store.phase != DeployPhase.NOT_DEPLOYED:
                return None
            run_steps(self.steps.release, self.context(run, store), failure="clean-up failed")
            return "removed the leftovers of a store that is not deployed"

        return self._reconcile_op(store_id, OpKind.RECOVER, body)

    def halt(self, store_id: str) -> str | None:
        """A store stopped on purpose whose stack runs again: stop it."""

        def body(run: RunningOp) -> str | None:
            store = self.load(store_id)
            if store.phase != DeployPhase.STOPPED:
                return None
            run_steps(self.steps.halt, self.context(run, store), failure="stop failed")
            return "stopped again a store that is stopped on purpose"

        return self._reconcile_op(store_id, OpKind.RECOVER, body)

    def _reconcile_op(
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

    # -- observe ----------------------------------------------------------------------------

    def _observe(self, store_id: str) -> StackStatus:
        return self.observations.get(store_id)

    def _observe_now(self, store_id: str) -> StackStatus:
        """What the runtime shows; when the runtime itself cannot be reached, say so."""
        try:
            return self.driver.status(store_id)
        except RuntimeFailure as exc:
            return StackStatus(Observed.ERROR, False, False, (), exc.message)

    def status(self, store_id: str) -> DeployStatus:
        store, ports = self._load_with_ports(store_id)
        stack = self._observe(store_id)
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
            ports=_ports_view(ports) if ports else None,
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
        if stack.observed in (Observed.ABSENT, Observed.STOPPED):
            return None
        try:
            return self.meter.recent(store_id)
        except RuntimeFailure:
            return None

    def usage(self, store_id: str) -> UsageView:
        """A fresh reading of the store's resource usage (CPU, memory, disk)."""
        self.load(store_id)
        view = self.meter.measure(store_id)
        if view is None:
            raise ConflictError(
                f"store {store_id} is not running: nothing to measure", code="not_running"
            )
        return view

    def word_of(self, store: Store) -> StatusWord:
        """The status word of a store already read from the registry."""
        return status_word(store.phase, self._observe(store.id).observed)

    def require_store(self, store_id: str) -> None:
        """NotFoundError unless the store exists (a registry read, no runtime call)."""
        self.load(store_id)

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
