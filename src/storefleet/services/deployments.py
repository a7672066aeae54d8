"""Deploy, undeploy and delete a store, each as a recorded operation built from a step list.

A deploy: record the operation -> lock the store (the lock token is the operation id) -> the
deploy list (`services/steps.py`: intent, lease ports, secrets, apply until healthy, record).
A failure or a cancel undoes what the deploy did (stack, leases, phase) and leaves the store
`not_deployed` with `last_error`. Registry work happens in short transactions; the driver is
only called outside them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from storefleet.errors import OperationCancelledError, StorefleetError
from storefleet.registry.models import DeployPhase, Store
from storefleet.runtime.base import Links, Observed, Ports
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.runner import OperationRunner
from storefleet.services.schemas import DeployResult, OperationView, UndeployResult
from storefleet.services.status import ports_view
from storefleet.services.steps import Context, StepLists, Toolkit, run_steps

log = logging.getLogger(__name__)


def _result(
    store_id: str,
    message: str,
    links: Links,
    ports: Ports,
    status: Literal["deployed", "already_deployed"],
    hostname: str | None = None,
) -> DeployResult:
    return DeployResult(
        message=message,
        store_id=store_id,
        back_link=links.back_link,
        db_link=links.db_link,
        ports=ports_view(ports),
        status=status,
        hostname=hostname,
    )


class DeploymentService:
    def __init__(
        self,
        *,
        runner: OperationRunner,
        kit: Toolkit,
        steps: StepLists,
        final_backup: Callable[[str], object] | None = None,
    ) -> None:
        self.runner = runner
        self.kit = kit
        self.steps = steps
        # Takes the final backup of a store about to be purged (the backup service's).
        self.final_backup = final_backup

    # -- deploy -----------------------------------------------------------------------------

    def deploy(self, store_id: str) -> DeployResult:
        store = self.kit.load(store_id)
        done = self._already_deployed(store, self.kit.ports_of(store.id))
        if done is not None:  # a no-op is no operation (nor a deploy in the metrics)
            return done
        op = self.runner.ops.create(store_id, OpKind.DEPLOY)
        return self.runner.execute(op.id, store_id, OpKind.DEPLOY, self._deploy_body)

    def deploy_async(self, store_id: str) -> OperationView:
        self.kit.load(store_id)
        op = self.runner.ops.create(store_id, OpKind.DEPLOY)
        self.runner.submit(
            lambda: self.runner.execute(op.id, store_id, OpKind.DEPLOY, self._deploy_body)
        )
        return op

    def deploy_claimed(self, op_id: str, store_id: str) -> DeployResult:
        """Run the deploy operation `op_id` of a store that claimed a warm-pool member (the
        claim wrote it, with the store's lock): the member thaws, is routed and recorded. A
        member that does not become healthy is removed and the store is deployed cold, in the
        same operation: the pool never makes a signup fail."""
        return self.runner.execute(op_id, store_id, OpKind.DEPLOY, self._claim_body)

    def _claim_body(self, run: RunningOp) -> DeployResult:
        store = self.kit.load(run.store_id)
        ctx = self.kit.context(run, store)
        try:
            run_steps(self.steps.claim, ctx, failure="warm claim failed")
        except OperationCancelledError:
            raise
        except StorefleetError as exc:
            log.warning(
                "store %s: its warm-pool member failed (%s); deploying it cold",
                store.id,
                exc.message,
            )
            self.runner.ops.metrics.pool_claim(store.plan, "failed")
            return self._deploy_body(run)
        self.runner.ops.metrics.pool_claim(store.plan, "warm")
        ports, links = ctx.need_ports(), ctx.links
        assert links is not None
        log.info("store %s deployed from the warm pool", store.id)
        return _result(
            store.id, f"store {store.id} deployed", links, ports, "deployed", ctx.hostname
        )

    def _already_deployed(self, store: Store, ports: Ports | None) -> DeployResult | None:
        """The answer to a deploy of a store (holding `ports`) that is deployed and alive, else
        None."""
        if store.phase != DeployPhase.DEPLOYED or not (store.back_link and store.db_link):
            return None
        observed = self.kit.driver.status(store.id).observed
        if not ports or observed in (Observed.ABSENT, Observed.STOPPED):
            return None
        recorded = Links(store.back_link, store.db_link)
        message = f"store {store.id} is already deployed"
        return _result(
            store.id, message, recorded, ports, "already_deployed", self._hostname(store.id)
        )

    def _hostname(self, store_id: str) -> str | None:
        """The hostname the edge serves the store at (None with the edge off)."""
        routing = self.kit.routing
        return routing.hosts_of(store_id)[0] if routing is not None else None

    def _deploy_body(self, run: RunningOp) -> DeployResult:
        store = self.kit.load(run.store_id)
        ctx = self.kit.context(run, store)  # the store's leases, read once
        done = self._already_deployed(store, ctx.ports)  # deployed meanwhile (a concurrent deploy)
        if done is not None:
            return done
        if store.phase == DeployPhase.STOPPED and ctx.ports:
            return self._start(ctx)
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
        return _result(
            store.id, f"store {store.id} deployed", links, ports, "deployed", ctx.hostname
        )

    def start_stopped(self, run: RunningOp, store: Store) -> DeployResult:
        """Start a stopped store on the ports and with the data it kept."""
        return self._start(self.kit.context(run, store))

    def _start(self, ctx: Context) -> DeployResult:
        store = ctx.store
        run_steps(self.steps.start, ctx, failure="start failed")
        assert ctx.links is not None
        links, ports = ctx.links, ctx.need_ports()
        message = f"store {store.id} started"
        return _result(store.id, message, links, ports, "deployed", ctx.hostname)

    # -- undeploy and delete ----------------------------------------------------------------

    def undeploy(
        self, store_id: str, *, purge: bool = False, final_backup: bool = True
    ) -> UndeployResult:
        op = self._record(store_id, OpKind.UNDEPLOY, purge, final_backup)
        return self._run_undeploy(op.id, store_id, purge=purge, forget=False, backup=final_backup)

    def undeploy_async(
        self, store_id: str, *, purge: bool = False, final_backup: bool = True
    ) -> OperationView:
        op = self._record(store_id, OpKind.UNDEPLOY, purge, final_backup)
        self.runner.submit(
            lambda: self._run_undeploy(
                op.id, store_id, purge=purge, forget=False, backup=final_backup
            )
        )
        return op

    def delete(self, store_id: str, *, purge: bool = False, final_backup: bool = True) -> None:
        """Undeploy the store (keeping its data unless `purge`) and forget it, as one operation.
        A purge first takes a final backup (unless `final_backup` is false)."""
        op = self._record(store_id, OpKind.DELETE, purge, final_backup)
        self._run_undeploy(op.id, store_id, purge=purge, forget=True, backup=final_backup)

    def _record(
        self, store_id: str, kind: OpKind, purge: bool, final_backup: bool
    ) -> OperationView:
        self.kit.load(store_id)
        params = {"purge": purge, "final_backup": purge and final_backup}
        return self.runner.ops.create(store_id, kind, params)

    def _run_undeploy(
        self, op_id: str, store_id: str, *, purge: bool, forget: bool, backup: bool = True
    ) -> UndeployResult:
        def body(run: RunningOp) -> UndeployResult:
            ctx = self.kit.context(
                run,
                self.kit.load(store_id),
                purge=purge,
                forget=forget,
                final_backup=backup,
                final_backup_hook=self.final_backup,
            )
            run_steps(self.steps.undeploy, ctx, failure="undeploy failed")
            kept = "data purged" if purge else "data kept"
            log.info("store %s %s (%s)", store_id, "deleted" if forget else "undeployed", kept)
            return UndeployResult(
                message=f"store {store_id} undeployed ({kept})",
                store_id=store_id,
                status="undeployed",
            )

        kind = OpKind.DELETE if forget else OpKind.UNDEPLOY
        return self.runner.execute(op_id, store_id, kind, body)
