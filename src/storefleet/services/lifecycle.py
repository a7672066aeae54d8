"""Day-2 operations on a deployed store: stop, start, restart, upgrade (with automatic
rollback), new plan limits, and fleet upgrades in waves. Each is a recorded operation holding
the store's lock (see `deployments.py`); the runtime is called outside any transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from storefleet.config import VERSION_PATTERN
from storefleet.errors import ConflictError, InvalidInputError, RuntimeFailure, StorefleetError
from storefleet.registry.models import DeployPhase, Store, is_store
from storefleet.services.deployments import DeploymentService
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.runner import OperationRunner
from storefleet.services.schemas import WHOLE, OperationView
from storefleet.services.steps import Context, StepLists, Toolkit, reason_of, run_steps

log = logging.getLogger(__name__)


class ActionResult(BaseModel):
    message: str
    store_id: str
    status: str  # stopped | started | restarted | upgraded | already_* | plan_applied
    version: str | None = None


class UpgradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, description="One of GET /versions' available")


class FleetUpgradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, description="One of GET /versions' available")
    batch_size: Annotated[int, Field(ge=1, le=100), WHOLE] = 5
    max_failures: Annotated[int, Field(ge=0, le=1_000_000), WHOLE] = 0


class VersionsView(BaseModel):
    runtime: str
    default: str
    available: list[str]


class LifecycleService:
    def __init__(
        self,
        *,
        runner: OperationRunner,
        kit: Toolkit,
        steps: StepLists,
        deployments: DeploymentService,
    ) -> None:
        self.runner = runner
        self.kit = kit
        self.steps = steps
        self.deployments = deployments
        self.driver = kit.driver
        self.timeouts = runner.timeouts

    # -- helpers ----------------------------------------------------------------------------

    def _deployed(self, store: Store, action: str) -> None:
        if store.phase not in (DeployPhase.DEPLOYED, DeployPhase.STOPPED):
            raise ConflictError(
                f"store {store.id} is {store.phase}: deploy it before you {action} it",
                code="not_deployed",
                store_id=store.id,
            )

    def versions(self) -> VersionsView:
        return VersionsView(
            runtime=self.driver.name,
            default=self.driver.default_version(),
            available=self.driver.versions(),
        )

    def _known(self, version: str) -> None:
        available = self.driver.versions()
        if version not in available:
            raise InvalidInputError(
                f"version {version!r} is not available on the {self.driver.name} runtime; "
                f"available: {', '.join(available) or 'none'}",
                code="unknown_version",
            )

    # -- stop / start / restart -------------------------------------------------------------

    def _stop_body(self, run: RunningOp) -> ActionResult:
        store = self.kit.load(run.store_id)
        self._deployed(store, "stop")
        if store.phase == DeployPhase.STOPPED:
            return ActionResult(
                message=f"store {store.id} is already stopped",
                store_id=store.id,
                status="already_stopped",
            )
        run_steps(self.steps.stop, self.kit.context(run, store), failure="stop failed")
        return ActionResult(
            message=f"store {store.id} stopped (ports, links and data kept)",
            store_id=store.id,
            status="stopped",
        )

    def _start_body(self, run: RunningOp) -> ActionResult:
        store = self.kit.load(run.store_id)
        self._deployed(store, "start")
        if store.phase == DeployPhase.DEPLOYED:
            return ActionResult(
                message=f"store {store.id} is already running",
                store_id=store.id,
                status="already_running",
            )
        result = self.deployments.start_stopped(run, store)
        return ActionResult(message=result.message, store_id=store.id, status="started")

    def _restart_body(self, run: RunningOp) -> ActionResult:
        store = self.kit.load(run.store_id)
        self._deployed(store, "restart")
        ports = self.kit.ports_of(store.id)
        if ports is None:
            raise ConflictError(f"store {store.id} holds no ports", code="not_deployed")
        run_steps(self.steps.restart, self.kit.context(run, store), failure="restart failed")
        return ActionResult(
            message=f"store {store.id} restarted", store_id=store.id, status="restarted"
        )

    def stop(self, store_id: str, *, wait: bool = True) -> ActionResult | OperationView:
        return self.runner.operation(store_id, OpKind.STOP, self._stop_body, wait=wait)

    def start(self, store_id: str, *, wait: bool = True) -> ActionResult | OperationView:
        return self.runner.operation(store_id, OpKind.START, self._start_body, wait=wait)

    def restart(self, store_id: str, *, wait: bool = True) -> ActionResult | OperationView:
        return self.runner.operation(store_id, OpKind.RESTART, self._restart_body, wait=wait)

    # -- upgrade ----------------------------------------------------------------------------

    def _upgrade_body(self, version: str) -> Callable[[RunningOp], ActionResult]:
        def body(run: RunningOp) -> ActionResult:
            store = self.kit.load(run.store_id)
            if store.phase != DeployPhase.DEPLOYED:
                raise ConflictError(
                    f"store {store.id} is {store.phase}: only a deployed store is upgraded",
                    code="not_deployed",
                    store_id=store.id,
                )
            previous = store.version or self.driver.default_version()
            if previous == version:
                return ActionResult(
                    message=f"store {store.id} already runs version {version}",
                    store_id=store.id,
                    status="already_upgraded",
                    version=version,
                )

            def explain(ctx: Context, exc: BaseException) -> BaseException:
                return RuntimeFailure(
                    f"version {version} did not become healthy ({reason_of(exc)}); "
                    f"rolled back to {previous}",
                    store_id=store.id,
                )

            ctx = self.kit.context(run, store, version=version, previous_version=previous)
            ctx.need_ports()
            run_steps(self.steps.upgrade, ctx, failure="upgrade failed", explain=explain)
            log.info("store %s upgraded from %s to %s", store.id, previous, version)
            return ActionResult(
                message=f"store {store.id} upgraded from {previous} to {version}",
                store_id=store.id,
                status="upgraded",
                version=version,
            )

        return body

    def upgrade(
        self, store_id: str, version: str, *, wait: bool = True
    ) -> ActionResult | OperationView:
        self._known(version)
        store = self.kit.load(store_id)
        running = store.version or self.driver.default_version()
        if store.phase == DeployPhase.DEPLOYED and running == version:
            # a no-op is no operation (the answer is the same as the operation's would be)
            return ActionResult(
                message=f"store {store.id} already runs version {version}",
                store_id=store.id,
                status="already_upgraded",
                version=version,
            )
        body = self._upgrade_body(version)
        return self.runner.operation(
            store_id, OpKind.UPGRADE, body, {"version": version}, wait=wait
        )

    # -- plans ------------------------------------------------------------------------------

    def apply_plan(self, store_id: str, previous_plan: str) -> ActionResult:
        """The store's plan changed: give its running stack the new limits. If the stack does
        not come back healthy, the previous plan is restored (record and limits)."""

        def body(run: RunningOp) -> ActionResult:
            store = self.kit.load(store_id)
            ports = self.kit.ports_of(store_id)
            if store.phase != DeployPhase.DEPLOYED or ports is None:
                return ActionResult(
                    message=f"plan {store.plan} recorded; applied at the next start",
                    store_id=store_id,
                    status="plan_recorded",
                )

            def explain(ctx: Context, exc: BaseException) -> BaseException:
                return RuntimeFailure(
                    f"plan {store.plan} could not be applied ({reason_of(exc)}); "
                    f"plan {previous_plan} restored",
                    store_id=store_id,
                )

            ctx = self.kit.context(run, store, previous_plan=previous_plan)
            run_steps(self.steps.apply_plan, ctx, failure="plan change failed", explain=explain)
            return ActionResult(
                message=f"plan {store.plan} applied to store {store_id}",
                store_id=store_id,
                status="plan_applied",
            )

        result = self.runner.operation(
            store_id, OpKind.APPLY_PLAN, body, {"previous_plan": previous_plan}
        )
        assert isinstance(result, ActionResult)
        return result

    # -- fleet upgrade ----------------------------------------------------------------------

    def fleet_upgrade(self, request: FleetUpgradeRequest) -> OperationView:
        """Upgrade every deployed store in waves of `batch_size`; stop once more than
        `max_failures` stores failed (each failed store was rolled back). Runs in the
        background; its progress is the returned operation (one step per wave)."""
        self._known(request.version)

        def stopped(result: dict[str, Any]) -> None:
            result["stopped_early"] = True

        return self.runner.fleet_operation(
            OpKind.FLEET_UPGRADE,
            request.model_dump(),
            lambda run, result: self._fleet(run, request, result),
            stopped=stopped,
        )

    def _targets(self, version: str) -> list[str]:
        with self.kit.registry.transaction() as session:
            rows = session.execute(
                select(Store.id, Store.version)
                .where(Store.phase == DeployPhase.DEPLOYED, is_store())
                .order_by(Store.created_at, Store.id)
            ).all()
        default = self.driver.default_version()
        return [sid for sid, current in rows if (current or default) != version]

    def _fleet(self, run: RunningOp, request: FleetUpgradeRequest, result: dict[str, Any]) -> None:
        upgraded: list[str] = []
        failed: dict[str, str] = {}
        result.update(
            version=request.version, upgraded=upgraded, failed=failed, stopped_early=False
        )
        targets = self._targets(request.version)
        waves = [
            targets[i : i + request.batch_size] for i in range(0, len(targets), request.batch_size)
        ]
        for number, wave in enumerate(waves, 1):
            self.runner.cancel_requested(run.id)
            with (
                run.step(f"wave_{number}_of_{len(waves)}"),
                ThreadPoolExecutor(len(wave), thread_name_prefix="fleet-upgrade") as pool,
            ):
                outcomes = list(pool.map(lambda sid: self._one(sid, request.version), wave))
            for sid, error in zip(wave, outcomes, strict=True):
                if error is None:
                    upgraded.append(sid)
                else:
                    failed[sid] = error
            if len(failed) > request.max_failures:
                raise StorefleetError(
                    f"stopped after wave {number}: {len(failed)} store(s) failed, more than "
                    f"max_failures={request.max_failures}",
                    code="too_many_failures",
                )

    def _one(self, store_id: str, version: str) -> str | None:
        try:  # the version was checked once for the whole fleet
            body = self._upgrade_body(version)
            self.runner.operation(store_id, OpKind.UPGRADE, body, {"version": version})
        except StorefleetError as exc:
            return exc.message
        return None
