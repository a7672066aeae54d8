"""The reconciler's actions: each brings one store back to what the registry records, as an
operation that runs only if the store is free (`OperationRunner.unless_busy`), built from the
same step lists as the operations people start (`services/steps.py`)."""

from __future__ import annotations

import logging

from storefleet.errors import StorefleetError
from storefleet.registry.models import DeployPhase
from storefleet.runtime.base import Observed
from storefleet.services.operations import OperationLog, OpKind, RunningOp
from storefleet.services.runner import OperationRunner
from storefleet.services.steps import StepLists, Toolkit, run_steps, undo_steps

log = logging.getLogger(__name__)

# Operations that change a deployed stack in place: cut short, the stack is re-applied.
DAY2_KINDS = (
    OpKind.STOP,
    OpKind.START,
    OpKind.RESTART,
    OpKind.UPGRADE,
    OpKind.APPLY_PLAN,
    OpKind.RESTORE,
)


class Convergence:
    def __init__(
        self, *, runner: OperationRunner, kit: Toolkit, steps: StepLists, ops: OperationLog
    ) -> None:
        self.runner = runner
        self.kit = kit
        self.steps = steps
        self.ops = ops

    def recover(self, store_id: str) -> str | None:
        """Finish or roll back what an operation cut short by a crash left. Returns what was
        done, or None when the store is busy (a live operation holds it) or needs nothing."""

        def body(run: RunningOp) -> str | None:
            store = self.kit.load(store_id)
            cut = self.ops.interrupted(store_id, "interrupted: its control plane stopped", run.id)
            ctx = self.kit.context(run, store)
            if store.phase == DeployPhase.DEPLOYING:
                observed = self.kit.driver.status(store_id).observed
                if ctx.ports and observed is Observed.RUNNING:
                    run_steps(self.steps.finish_deploy, ctx, failure="deploy failed")
                    return "finished an interrupted deploy"
                if ctx.ports and observed is Observed.PAUSED and self.kit.caps.pausing:
                    try:  # a warm-pool claim cut short before its member thawed
                        run_steps(self.steps.finish_claim, ctx, failure="warm claim failed")
                        return "finished an interrupted warm-pool claim"
                    except StorefleetError as exc:
                        log.warning("store %s: finishing its claim failed: %s", store_id, exc)
                reason = "deploy interrupted (control plane stopped); rolled back"
                log.warning("store %s: rolling back: %s", store_id, reason)
                undo_steps(self.steps.deploy, ctx)
                self.kit.set_fields(store_id, last_error=reason)
                return "rolled back an interrupted deploy"
            if store.phase == DeployPhase.UNDEPLOYING:
                params = cut[0][1] if cut else {}
                ctx.forget = bool(cut) and cut[0][0] == OpKind.DELETE
                ctx.purge = bool(params.get("purge"))
                run_steps(self.steps.finish_undeploy, ctx, failure="undeploy failed")
                return "finished an interrupted " + ("delete" if ctx.forget else "undeploy")
            if cut and cut[0][0] == OpKind.MOVE and store.phase == DeployPhase.DEPLOYED:
                kind, params, done = cut[0]
                ctx.from_node, ctx.node = params.get("from"), params.get("node")
                if ctx.from_node is None:
                    return "closed an interrupted move that had not started"
                if "record" in done:  # it runs healthy on its new node, recorded there
                    run_steps(self.steps.finish_move, ctx, failure="move failed")
                    return f"finished an interrupted move to {ctx.node}"
                run_steps(self.steps.move_back, ctx, failure="move failed")
                self.kit.set_fields(
                    store_id, last_error=f"move to {ctx.node} interrupted; back on {ctx.from_node}"
                )
                return f"moved back to {ctx.from_node} after an interrupted move"
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

        return self.runner.unless_busy(store_id, OpKind.RECOVER, body)

    def repair(self, store_id: str) -> str | None:
        """Bring a deployed store's stack back (apply is idempotent); repair its links."""

        def body(run: RunningOp) -> str | None:
            store = self.kit.load(store_id)
            if store.phase != DeployPhase.DEPLOYED:
                return None
            run_steps(self.steps.repair, self.kit.context(run, store), failure="repair failed")
            return "started the stack again"

        return self.runner.unless_busy(store_id, OpKind.REPAIR, body)

    def release_leftovers(self, store_id: str) -> str | None:
        """A store that is not deployed holds leases or a running stack: release and remove."""

        def body(run: RunningOp) -> str | None:
            store = self.kit.load(store_id)
            if store.phase != DeployPhase.NOT_DEPLOYED:
                return None
            ctx = self.kit.context(run, store)
            run_steps(self.steps.release, ctx, failure="clean-up failed")
            return "removed the leftovers of a store that is not deployed"

        return self.runner.unless_busy(store_id, OpKind.RECOVER, body)

    def halt(self, store_id: str) -> str | None:
        """A store stopped on purpose whose stack runs again: stop it."""

        def body(run: RunningOp) -> str | None:
            store = self.kit.load(store_id)
            if store.phase != DeployPhase.STOPPED:
                return None
            run_steps(self.steps.halt, self.kit.context(run, store), failure="stop failed")
            return "stopped again a store that is stopped on purpose"

        return self.runner.unless_busy(store_id, OpKind.RECOVER, body)
