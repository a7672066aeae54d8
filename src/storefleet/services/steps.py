"""Operations as data: each operation kind is an ordered list of named steps (a saga).

A step is a small object: `run(ctx)` does one thing; a step that creates or changes something
also has `undo(ctx)`, which puts it back. `run_steps` executes a list: it records each step in the
operation (started, then ok or failed), honours cancel requests between steps and the fault
points of the crash tests, and when a step fails it runs the `undo` of that step and of every
step completed before it, in reverse order (each recorded as its own step), then records why on
the store (`last_error`) and raises the original error.

An `undo` must be safe to run when its `run` failed part-way (an apply that died half-way leaves
half a stack: its undo removes whatever is there). The lists themselves are in `StepLists`:
adding a step (routing, placement on a node, claiming a warm stack) means writing it once here
and naming it in the lists that need it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import delete, update

from storefleet.errors import NotFoundError, RuntimeFailure, StorefleetError, UnsupportedError
from storefleet.registry.db import Registry
from storefleet.registry.models import ApiToken, DeployPhase, PoolState, Store, utcnow
from storefleet.runtime.base import (
    Capabilities,
    Limits,
    Links,
    Pausing,
    Ports,
    RuntimeDriver,
    StackSpec,
)
from storefleet.services.hostnames import Hostnames
from storefleet.services.operations import RunningOp
from storefleet.services.ports import PortAllocator
from storefleet.services.secrets import SecretStore

log = logging.getLogger(__name__)


def reason_of(exc: BaseException) -> str:
    return exc.message if isinstance(exc, StorefleetError) else type(exc).__name__


@dataclass(frozen=True)
class Toolkit:
    """What steps act with: the registry, the runtime driver, port leases, secrets, deadlines."""

    registry: Registry
    driver: RuntimeDriver
    allocator: PortAllocator
    secrets: SecretStore
    caps: Capabilities  # what the driver can do beyond the core (found once, at wiring)
    deploy_s: float
    undeploy_s: float
    plan_limits: Mapping[str, Limits] = field(default_factory=dict)
    # The edge's routes (None: the edge is off and stores are reached at their ports).
    routing: Hostnames | None = None
    route_timeout_s: float = 10.0

    def await_route(
        self, store_id: str, hostname: str | None = None, cancelled: Callable[[], bool] = bool
    ) -> None:
        """With the edge on: until the store's hostname answers over TLS through the edge (the
        edge started again first if it is gone), or `RuntimeFailure` after `route_timeout_s`.
        A stack started again (a restore, a move) is reached through the edge only once the
        edge's network knows its new task: returning before would hand out a 502."""
        routing = self.routing
        if routing is None or routing.edge is None:
            return
        edge = routing.edge
        host = hostname or routing.hosts_of(store_id)[0]
        deadline = time.monotonic() + self.route_timeout_s
        restarted = False
        while (why := edge.probe(host)) is not None:
            if not restarted and not edge.alive():
                edge.ensure()
                restarted = True
                continue
            if time.monotonic() > deadline or cancelled():
                raise RuntimeFailure(f"the store runs but its route does not answer: {why}")
            time.sleep(0.05)

    @property
    def unpublished(self) -> bool:
        """Routed stacks publish no host port (the edge is on and the runtime can do that)."""
        return self.routing is not None and self.caps.unpublished is not None

    def ports_of(self, store_id: str) -> Ports | None:
        """The store's leased ports; for a stack routed without ports, its internal ones."""
        leased = self.allocator.ports_of(store_id)
        if leased is None and self.unpublished:
            assert self.caps.unpublished is not None
            return self.caps.unpublished.internal_ports()
        return leased

    def remove_sockets(self, store_id: str) -> None:
        """The store's socket folder at the edge, once its stack is gone."""
        if self.routing is not None and self.routing.edge is not None:
            self.routing.edge.routes.remove_socket_dir(store_id)

    def load(self, store_id: str, *, member: bool = False) -> Store:
        """The store as the registry has it now (NotFoundError if there is none; a warm-pool
        member is no store: found only with `member`)."""
        with self.registry.transaction() as session:
            store = session.get(Store, store_id)
            if store is None or (store.pool is not None and not member):
                raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
            session.expunge(store)
        return store

    @property
    def pausing(self) -> Pausing:
        if self.caps.pausing is None:
            raise UnsupportedError(f"the {self.caps.runtime} runtime cannot pause a stack")
        return self.caps.pausing

    def context(self, run: RunningOp, store: Store, **values: Any) -> Context:
        """A fresh context for a step list: the store as read now, with its leased ports."""
        return Context(run=run, store=store, kit=self, ports=self.ports_of(store.id), **values)

    def set_fields(self, store_id: str, **values: object) -> None:
        with self.registry.transaction() as session:
            session.execute(
                update(Store)
                .where(Store.id == store_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def spec(
        self, store: Store, ports: Ports, *, version: str | None = None, plan: str | None = None
    ) -> StackSpec:
        """The stack of `store` (its recorded version and plan unless others are given)."""
        secrets = self.secrets.ensure(store.id, self.driver.secret_names)
        plan = plan or store.plan
        routing = self.routing
        edge = routing.edge if routing is not None else None
        return StackSpec(
            store_id=store.id,
            plan=plan,
            ports=ports,
            secrets=secrets,
            version=version or store.version or self.driver.default_version(),
            limits=self.plan_limits.get(plan),
            socket_dir=edge.routes.socket_dir(store.id) if edge is not None else None,
            hostnames=(
                tuple(routing.hosts_of(store.id))
                if routing is not None and edge is not None
                else ()
            ),
        )


@dataclass
class Context:
    """One operation's state as its steps pass it along."""

    run: RunningOp
    store: Store
    kit: Toolkit
    ports: Ports | None = None  # the store's leased ports (read when the operation starts)
    spec: StackSpec | None = None
    links: Links | None = None
    version: str | None = None  # the version to run (an upgrade's target)
    previous_version: str | None = None
    purge: bool = False
    forget: bool = False
    final_backup: bool = True
    previous_phase: str | None = None
    previous_plan: str | None = None
    hostname: str | None = None  # the store's hostname once the `route` step published it
    final_backup_hook: Callable[[str], object] | None = None
    node: str | None = None  # a move's target node
    from_node: str | None = None  # the node a move left (its data stays until the end)
    backup_hook: Callable[[str], Path] | None = None  # a move's backup: its file
    backup_path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what a step could not do (not fatal)

    @property
    def store_id(self) -> str:
        return self.store.id

    def need_spec(self) -> StackSpec:
        if self.spec is None:
            raise RuntimeError("a step needs the stack spec: put `secrets` before it")
        return self.spec

    def need_ports(self) -> Ports:
        if self.ports is None:
            raise RuntimeError("a step needs the store's ports: put `lease_ports` before it")
        return self.ports


class Step:
    """One named step. `reversible` steps have an `undo`."""

    name: ClassVar[str] = "step"
    cancellable: ClassVar[bool] = True  # a cancel requested before it starts stops the list
    reversible: bool = False

    @property
    def label(self) -> str:
        return self.name

    def label_in(self, ctx: Context) -> str:
        """The name recorded for this step in this operation (a few say which version)."""
        return self.label

    def undo_label_in(self, ctx: Context) -> str:
        return f"undo_{self.label_in(ctx)}"

    def applies(self, ctx: Context) -> bool:
        """False: the step is skipped (and not recorded) for this store."""
        return True

    def run(self, ctx: Context) -> None:
        raise NotImplementedError

    def undo(self, ctx: Context) -> None:
        raise NotImplementedError


Explain = Callable[[Context, BaseException], BaseException]


def run_steps(
    steps: Sequence[Step], ctx: Context, *, failure: str, explain: Explain | None = None
) -> None:
    """Run `steps` in order; on a failure undo what was done (see the module's docstring),
    record `"<failure>: <reason>"` as the store's last error and raise the error (or what
    `explain` makes of it: e.g. "... rolled back to 0.1.0")."""
    done: list[Step] = []
    for step in steps:
        if not step.applies(ctx):
            continue
        try:
            with ctx.run.step(step.label_in(ctx), cancellable=step.cancellable):
                step.run(ctx)
        except BaseException as exc:
            undo_steps([*done, step], ctx)
            error = explain(ctx, exc) if explain is not None else exc
            ctx.kit.set_fields(ctx.store_id, last_error=f"{failure}: {reason_of(error)}")
            if error is exc:
                raise
            raise error from exc
        done.append(step)


def undo_steps(done: Sequence[Step], ctx: Context) -> None:
    """The undo of each reversible step of `done`, last first. An undo that fails is recorded
    as failed and the others still run."""
    for step in reversed(done):
        if not step.reversible:
            continue
        label = step.undo_label_in(ctx)
        try:
            with ctx.run.step(label, cancellable=False):
                step.undo(ctx)
        except StorefleetError as exc:  # recorded by the step; the remaining undos go on
            log.warning("store %s: %s failed: %s", ctx.store_id, label, reason_of(exc))


# -- the steps ----------------------------------------------------------------------------


class CleanUp(Step):
    """A stack that vanished, or one an interrupted operation left: remove it first."""

    name = "clean_up"

    def applies(self, ctx: Context) -> bool:
        return ctx.store.phase != DeployPhase.NOT_DEPLOYED

    def run(self, ctx: Context) -> None:
        ctx.kit.driver.remove(ctx.store_id, purge=False, timeout_s=ctx.kit.undeploy_s)


class Intent(Step):
    """Record what is about to happen (phase `deploying`), before anything acts."""

    name = "intent"
    reversible = True

    def run(self, ctx: Context) -> None:
        ctx.kit.set_fields(
            ctx.store_id,
            phase=DeployPhase.DEPLOYING,
            runtime=ctx.kit.driver.name,
            last_error=None,
        )

    def undo(self, ctx: Context) -> None:
        not_deployed(ctx)


def not_deployed(ctx: Context, **more: object) -> None:
    """The store is recorded as not deployed (undeployed, or a deploy or a claim undone)."""
    ctx.kit.set_fields(
        ctx.store_id,
        phase=DeployPhase.NOT_DEPLOYED,
        back_link=None,
        db_link=None,
        runtime=None,
        **more,
    )


class LeasePorts(Step):
    """The store's address: its port triple (its own if it holds one)."""

    name = "lease_ports"
    reversible = True

    def applies(self, ctx: Context) -> bool:
        if ctx.kit.unpublished:  # routed without host ports: nothing to lease
            return False
        return ctx.ports is None or ctx.store.phase != DeployPhase.DEPLOYED

    def run(self, ctx: Context) -> None:
        ctx.ports = ctx.kit.allocator.lease(ctx.store_id)

    def undo(self, ctx: Context) -> None:
        ctx.kit.allocator.release(ctx.store_id)
        ctx.ports = None


class Secrets(Step):
    """The store's secrets (made once, kept encrypted) and the stack spec they complete."""

    name = "secrets"

    def run(self, ctx: Context) -> None:
        ctx.spec = ctx.kit.spec(ctx.store, ctx.need_ports(), version=ctx.version)


class ApplyStack(Step):
    """The driver applies the stack and waits until it is healthy. Its undo, per list: remove
    the stack (a deploy), stop it (a start), or none (a repair or restart keeps what runs)."""

    def __init__(self, label: str = "apply", *, undo_by: str | None = "remove") -> None:
        self._label = label
        self.undo_by = undo_by
        self.reversible = undo_by is not None

    @property
    def label(self) -> str:
        return self._label

    def run(self, ctx: Context) -> None:
        ctx.kit.driver.apply(
            ctx.need_spec(), timeout_s=ctx.kit.deploy_s, should_stop=ctx.run.cancelled
        )

    def undo(self, ctx: Context) -> None:
        if self.undo_by == "remove":
            ctx.kit.driver.remove(ctx.store_id, purge=False, timeout_s=ctx.kit.undeploy_s)
        elif self.undo_by == "purge":  # a warm-pool member: nothing of it is kept
            ctx.kit.driver.remove(ctx.store_id, purge=True, timeout_s=ctx.kit.undeploy_s)
            ctx.kit.remove_sockets(ctx.store_id)
        elif self.undo_by == "stop":
            ctx.kit.driver.stop(ctx.store_id, timeout_s=ctx.kit.undeploy_s)


class StopStack(Step):
    name = "stop"

    def __init__(self, label: str = "stop") -> None:
        self._label = label

    @property
    def label(self) -> str:
        return self._label

    def run(self, ctx: Context) -> None:
        ctx.kit.driver.stop(ctx.store_id, timeout_s=ctx.kit.undeploy_s)


class Route(Step):
    """The edge routes the store's hostname and custom domains to it, and the hostname answers
    over TLS through the edge (started again first if it is gone); undone, the routes go."""

    name = "route"
    reversible = True

    def applies(self, ctx: Context) -> bool:
        return ctx.kit.routing is not None

    def run(self, ctx: Context) -> None:
        routing = ctx.kit.routing
        assert routing is not None and routing.edge is not None
        hosts = routing.publish(ctx.store_id)
        ctx.hostname = hosts[0]
        ctx.kit.await_route(ctx.store_id, ctx.hostname, ctx.run.cancelled)

    def undo(self, ctx: Context) -> None:
        if ctx.kit.routing is not None:  # (a rollback runs every undo of its list)
            ctx.kit.routing.unpublish(ctx.store_id)


class Unroute(Step):
    """The edge stops routing to the store (its hostname stays reserved for it); undone, the
    routes are back."""

    name = "unroute"
    reversible = True

    def applies(self, ctx: Context) -> bool:
        return ctx.kit.routing is not None

    def run(self, ctx: Context) -> None:
        assert ctx.kit.routing is not None
        ctx.kit.routing.unpublish(ctx.store_id)

    def undo(self, ctx: Context) -> None:
        if ctx.kit.routing is not None:
            ctx.kit.routing.publish(ctx.store_id)


class Record(Step):
    """The store is deployed: its links, version and phase, recorded (with the edge on, the
    back_link is the store's HTTPS hostname)."""

    name = "record"

    def run(self, ctx: Context) -> None:
        spec = ctx.need_spec()
        ctx.links = ctx.kit.driver.links(spec)
        routing = ctx.kit.routing
        if routing is not None and routing.edge is not None:
            host = ctx.hostname or routing.hosts_of(ctx.store_id)[0]
            ctx.links = Links(routing.edge.settings.url_of(host), ctx.links.db_link)
        ctx.kit.set_fields(
            ctx.store_id,
            phase=DeployPhase.DEPLOYED,
            back_link=ctx.links.back_link,
            db_link=ctx.links.db_link,
            version=spec.version,
            last_error=None,
        )


class RecordStopped(Step):
    name = "record"

    def run(self, ctx: Context) -> None:
        ctx.kit.set_fields(ctx.store_id, phase=DeployPhase.STOPPED)


class ApplyVersion(Step):
    """An upgrade: the stack at the target version; undone, at the version it ran."""

    name = "apply_version"
    reversible = True

    def label_in(self, ctx: Context) -> str:
        return f"apply_{ctx.version}"

    def undo_label_in(self, ctx: Context) -> str:
        return f"roll_back_to_{ctx.previous_version}"

    def run(self, ctx: Context) -> None:
        ctx.spec = ctx.kit.spec(ctx.store, ctx.need_ports(), version=ctx.version)
        ctx.kit.driver.apply(ctx.spec, timeout_s=ctx.kit.deploy_s, should_stop=ctx.run.cancelled)

    def undo(self, ctx: Context) -> None:
        previous = ctx.kit.spec(ctx.store, ctx.need_ports(), version=ctx.previous_version)
        ctx.kit.driver.apply(previous, timeout_s=ctx.kit.deploy_s)


class RecordVersion(Step):
    name = "record"

    def run(self, ctx: Context) -> None:
        ctx.kit.set_fields(ctx.store_id, version=ctx.version, last_error=None)


class ApplyLimits(Step):
    """A plan change: the running stack gets the new plan's limits; undone, the previous plan
    is recorded and applied again."""

    name = "apply_limits"
    reversible = True

    def undo_label_in(self, ctx: Context) -> str:
        return "roll_back_plan"

    def run(self, ctx: Context) -> None:
        ctx.spec = ctx.kit.spec(ctx.store, ctx.need_ports())
        ctx.kit.driver.apply(ctx.spec, timeout_s=ctx.kit.deploy_s, should_stop=ctx.run.cancelled)

    def undo(self, ctx: Context) -> None:
        ctx.kit.set_fields(ctx.store_id, plan=ctx.previous_plan)
        previous = ctx.kit.spec(ctx.store, ctx.need_ports(), plan=ctx.previous_plan)
        ctx.kit.driver.apply(previous, timeout_s=ctx.kit.deploy_s)


class RemoveLeftovers(Step):
    """A store that is not deployed but holds a stack or leases: remove and release them."""

    name = "remove_leftovers"

    def run(self, ctx: Context) -> None:
        ctx.kit.driver.remove(ctx.store_id, purge=False, timeout_s=ctx.kit.undeploy_s)
        ctx.kit.remove_sockets(ctx.store_id)
        ctx.kit.allocator.release(ctx.store_id)


class FinalBackup(Step):
    """Before a purge: a last backup of the store's data (nothing is removed if it fails)."""

    name = "final_backup"

    def applies(self, ctx: Context) -> bool:
        return ctx.purge and ctx.final_backup and ctx.final_backup_hook is not None

    def run(self, ctx: Context) -> None:
        assert ctx.final_backup_hook is not None
        ctx.final_backup_hook(ctx.store_id)


class UndeployIntent(Step):
    """Record the undeploy (phase `undeploying`); undone, the store is as it was."""

    name = "intent"
    reversible = True

    def run(self, ctx: Context) -> None:
        ctx.previous_phase = ctx.store.phase
        ctx.kit.set_fields(ctx.store_id, phase=DeployPhase.UNDEPLOYING)

    def undo(self, ctx: Context) -> None:
        if ctx.previous_phase is not None:
            ctx.kit.set_fields(ctx.store_id, phase=ctx.previous_phase)


class RemoveStack(Step):
    name = "remove_stack"

    def run(self, ctx: Context) -> None:
        ctx.kit.driver.remove(ctx.store_id, purge=ctx.purge, timeout_s=ctx.kit.undeploy_s)
        ctx.kit.remove_sockets(ctx.store_id)


class ReleasePorts(Step):
    name = "release_ports"
    cancellable = False

    def run(self, ctx: Context) -> None:
        ctx.kit.allocator.release(ctx.store_id)


class RecordUndeployed(Step):
    """The store is not deployed (or, for a delete, forgotten with its store tokens)."""

    name = "record"
    cancellable = False

    def run(self, ctx: Context) -> None:
        if not ctx.forget:
            not_deployed(ctx, last_error=None)
            return
        with ctx.kit.registry.transaction() as session:
            session.execute(delete(Store).where(Store.id == ctx.store_id))
            # its store tokens go with it (they would still read its events)
            session.execute(
                update(ApiToken)
                .where(ApiToken.store_id == ctx.store_id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )


# -- a move between nodes (services/nodes.py) ----------------------------------------------


class Quiesce(Step):
    """The backend stops (no more writes); undone, the stack runs again where it is pinned."""

    name = "quiesce"
    reversible = True

    def run(self, ctx: Context) -> None:
        ctx.kit.caps.need_relocation().quiesce(ctx.store_id, timeout_s=ctx.kit.undeploy_s)

    def undo(self, ctx: Context) -> None:
        ctx.kit.driver.apply(ctx.need_spec(), timeout_s=ctx.kit.deploy_s)


class MoveBackup(Step):
    """A backup of the quiesced database (kept in the store's backups, reason `move`)."""

    name = "backup"

    def run(self, ctx: Context) -> None:
        assert ctx.backup_hook is not None
        ctx.backup_path = ctx.backup_hook(ctx.store_id)


class Relocate(Step):
    """The services leave the old node (its data stays there) and the store is pinned to the
    new one; undone, it is pinned back."""

    name = "relocate"
    reversible = True

    def label_in(self, ctx: Context) -> str:
        return f"relocate_to_{ctx.node}"

    def run(self, ctx: Context) -> None:
        assert ctx.node is not None
        relocation = ctx.kit.caps.need_relocation()
        ctx.from_node = relocation.relocate(ctx.store_id, ctx.node, timeout_s=ctx.kit.undeploy_s)

    def undo(self, ctx: Context) -> None:
        if ctx.from_node is not None:
            ctx.kit.caps.need_relocation().pin(ctx.store_id, ctx.from_node)


class RestoreData(Step):
    """The move's backup restored into the new node's database."""

    name = "restore"

    def run(self, ctx: Context) -> None:
        assert ctx.backup_path is not None
        ctx.kit.caps.need_backups().restore(
            ctx.store_id, ctx.backup_path, timeout_s=ctx.kit.deploy_s
        )


class DropOldData(Step):
    """The store runs healthy on its new node: its data on the old node goes. A failure here
    fails nothing (the store has moved); it is told in the operation's result."""

    name = "drop_old_data"
    cancellable = False

    def run(self, ctx: Context) -> None:
        assert ctx.from_node is not None
        try:
            ctx.kit.caps.need_relocation().drop_data(
                ctx.store_id, ctx.from_node, timeout_s=ctx.kit.undeploy_s
            )
        except StorefleetError as exc:
            ctx.notes.append(f"its old data on {ctx.from_node} is still there: {exc.message}")


class MoveBack(Step):
    """A move cut short before the store was recorded on its new node: whatever runs on the
    new node goes (with its data: only a copy was there), and the store is pinned back to the
    node that holds its data."""

    name = "move_back"
    cancellable = False

    def run(self, ctx: Context) -> None:
        assert ctx.from_node is not None
        relocation = ctx.kit.caps.need_relocation()
        nodes = ctx.kit.caps.need_nodes()
        if nodes.placed_on(ctx.store_id) != ctx.from_node:
            ctx.kit.driver.remove(ctx.store_id, purge=True, timeout_s=ctx.kit.undeploy_s)
        relocation.pin(ctx.store_id, ctx.from_node)


# -- the warm pool's steps (services/pool.py) ----------------------------------------------


class Pause(Step):
    """A new warm-pool member, healthy, is frozen until a store claims it."""

    name = "pause"

    def run(self, ctx: Context) -> None:
        ctx.kit.pausing.pause(ctx.store_id)


class RecordMember(Step):
    """The member is ready to be claimed: its version and links recorded, `pool` = ready."""

    name = "record"

    def run(self, ctx: Context) -> None:
        spec = ctx.need_spec()
        links = ctx.kit.driver.links(spec)
        ctx.kit.set_fields(
            ctx.store_id,
            pool=PoolState.READY,
            phase=DeployPhase.DEPLOYED,
            back_link=links.back_link,
            db_link=links.db_link,
            version=spec.version,
        )


class ClaimMember(Step):
    """The registry gave this store a ready member (the claim's compare-and-set, done before
    the operation started: `WarmPool.take`). Undone, the member's stack is removed and its
    leases released: the store is registered, not deployed (a cold deploy follows)."""

    name = "claim"
    cancellable = False
    reversible = True

    def run(self, ctx: Context) -> None:
        if ctx.store.pool is not None or ctx.store.phase != DeployPhase.DEPLOYING:
            raise RuntimeFailure(f"store {ctx.store_id} holds no claimed member")

    def undo(self, ctx: Context) -> None:
        ctx.kit.driver.remove(ctx.store_id, purge=False, timeout_s=ctx.kit.undeploy_s)
        ctx.kit.remove_sockets(ctx.store_id)
        ctx.kit.allocator.release(ctx.store_id)
        ctx.ports = None
        not_deployed(ctx)


class Resume(Step):
    """The claimed member thaws and its backend answers its health check (or the claim fails
    and is undone: a member that is not healthy is never handed out)."""

    name = "resume"

    def run(self, ctx: Context) -> None:
        ctx.kit.pausing.resume(ctx.need_spec(), timeout_s=min(ctx.kit.deploy_s, 10.0))


class DestroyMember(Step):
    """A member that is not ready to be handed out, or of an old version: its stack, data,
    sockets, leases and row, gone."""

    name = "destroy"
    cancellable = False

    def run(self, ctx: Context) -> None:
        ctx.kit.driver.remove(ctx.store_id, purge=True, timeout_s=ctx.kit.undeploy_s)
        ctx.kit.remove_sockets(ctx.store_id)
        ctx.kit.allocator.release(ctx.store_id)
        with ctx.kit.registry.transaction() as session:
            session.execute(delete(Store).where(Store.id == ctx.store_id, Store.pool.is_not(None)))


@dataclass
class StepLists:
    """The step list of each operation kind (docs/architecture.md shows them as a table)."""

    deploy: list[Step]
    start: list[Step]
    stop: list[Step]
    restart: list[Step]
    upgrade: list[Step]
    apply_plan: list[Step]
    undeploy: list[Step]
    # the reconciler's actions
    repair: list[Step]
    finish_deploy: list[Step]  # a deploy cut short whose stack is healthy
    finish_undeploy: list[Step]  # an undeploy or delete cut short
    converge: list[Step]  # a day-2 operation cut short: the recorded stack again
    converge_stopped: list[Step]
    release: list[Step]  # leftovers of a store that is not deployed
    halt: list[Step]  # a store stopped on purpose that runs again
    # the warm pool
    pool_fill: list[Step]  # a new member: deployed, healthy, paused
    claim: list[Step]  # a store signing up takes a member
    finish_claim: list[Step]  # a claim cut short while the member was still paused
    pool_destroy: list[Step]  # a member that must not be handed out
    # between nodes
    move: list[Step]
    move_back: list[Step]  # a move cut short before its record: back where the data is
    finish_move: list[Step]  # a move cut short after its record: the old data goes

    @classmethod
    def default(cls) -> StepLists:
        return cls(
            deploy=[
                CleanUp(),
                Intent(),
                LeasePorts(),
                Secrets(),
                ApplyStack(),
                Route(),
                Record(),
            ],
            start=[Secrets(), ApplyStack("start", undo_by="stop"), Route(), Record()],
            stop=[StopStack(), RecordStopped()],
            restart=[StopStack(), Secrets(), ApplyStack("start", undo_by=None), Route(), Record()],
            upgrade=[ApplyVersion(), RecordVersion()],
            apply_plan=[ApplyLimits()],
            undeploy=[
                FinalBackup(),
                UndeployIntent(),
                Unroute(),
                RemoveStack(),
                ReleasePorts(),
                RecordUndeployed(),
            ],
            repair=[LeasePorts(), Secrets(), ApplyStack(undo_by=None), Route(), Record()],
            # (adopt: the stack as applied, healthy and at its plan's limits, which a deploy
            # cut short after its stack answered may not have set yet)
            finish_deploy=[Secrets(), ApplyStack("adopt", undo_by=None), Route(), Record()],
            finish_undeploy=[Unroute(), RemoveStack(), ReleasePorts(), RecordUndeployed()],
            converge=[Secrets(), ApplyStack("converge", undo_by=None)],
            converge_stopped=[StopStack("converge")],
            release=[RemoveLeftovers()],
            halt=[StopStack()],
            pool_fill=[
                LeasePorts(),
                Secrets(),
                ApplyStack(undo_by="purge"),
                Pause(),
                RecordMember(),
            ],
            claim=[ClaimMember(), Secrets(), Resume(), Route(), Record()],
            finish_claim=[Secrets(), Resume(), Route(), Record()],
            pool_destroy=[DestroyMember()],
            move=[
                Secrets(),
                Quiesce(),
                MoveBackup(),
                Relocate(),
                ApplyStack("apply_on_new_node", undo_by="purge"),
                RestoreData(),
                ApplyStack("start", undo_by=None),
                Route(),
                Record(),
                DropOldData(),
            ],
            move_back=[MoveBack(), Secrets(), ApplyStack("converge", undo_by=None)],
            finish_move=[DropOldData()],
        )

    def table(self) -> dict[str, list[str]]:
        """Each list's step labels, for the docs and their test."""
        return {
            kind: [step.label for step in steps]
            for kind, steps in vars(self).items()
            if isinstance(steps, list)
        }
