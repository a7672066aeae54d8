"""The warm pool: stacks made ahead of any signup, healthy and paused, that `POST /stores/`
claims so that a store is live within a fraction of a second.

A member is a `stores` row with `pool` set (`filling`, then `ready`), invisible to every store
API. Its stack is made under the member's id (its own ports or socket folder, secrets, database
initialised and migrated), health-checked by `apply`, then paused (`runtime/base.py: Pausing`).
Its id *becomes the id of the store that claims it*, so nothing in the runtime is renamed and
the backend already runs with its store's identity (`STORE_ID`, its own API key file): a claim
changes registry fields only, then thaws the stack without a restart.

- **Claim** (`take`, inside the registration's transaction): a compare-and-set of one ready
  member of the store's plan and the default version (`pool = ready` and no live lock ->
  `pool = NULL`, phase `deploying`, the store's lock = the operation's id, the operation row),
  so two control planes can never claim one member. The deploy operation then runs the `claim`
  step list (resume until healthy, route, record); if that fails, its undos remove the member's
  stack and the same operation deploys the store cold. No member: a cold deploy.
- **Refill** (one thread per control plane, `parallel` fills at most, none started while a
  regular operation runs here): a `filling` row is written with its `pool_fill` operation and
  lock before anything acts; a fill beyond the plan's target (two planes filling at once) is
  dropped at once. A fill that fails is undone (stack and data purged) and its row deleted.
- **Crash safety** (the reconciler, `Reconciler.plan_member`): a `filling` member whose
  operation died, a `ready` member that is not paused (gone, running, broken) and a member of
  an old default version are destroyed; a claim cut short is finished (`finish_claim`) or rolled
  back like any interrupted deploy.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from storefleet.backoff import Backoff
from storefleet.errors import NotFoundError, StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import DeployPhase, Operation, PoolState, Store, utcnow
from storefleet.services.metrics import Metrics
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.runner import OperationRunner
from storefleet.services.steps import StepLists, Toolkit, run_steps
from storefleet.shared import POOL_WAKE, Numbers, Waker

log = logging.getLogger(__name__)

POOL_KINDS = (OpKind.POOL_FILL, OpKind.POOL_DESTROY)
# after failed fills (a full port range, a broken image): 1 s, doubling, at most a minute
FILL_BACKOFF = Backoff(1.0, 60.0)
CLAIM_CANDIDATES = 64  # members a claim tries at most (losing them all: a cold deploy)


def _counts_toward_target(version: str) -> ColumnElement[bool]:
    """A member that counts towards its plan's target: being filled, or ready at `version`."""
    return or_(
        Store.pool == PoolState.FILLING,
        (Store.pool == PoolState.READY) & (Store.version == version),
    )


class PoolView(BaseModel):
    enabled: bool
    targets: dict[str, int]  # members wanted per plan
    version: str  # the default version: members are made at it, claimed only at it
    members: dict[str, dict[str, int]]  # plan -> state (filling, ready, stale) -> count
    claims: int  # signups that got a member (this control plane, since it started)
    misses: int  # signups that found none and deployed cold
    failed_claims: int  # members that were not healthy when claimed (then: a cold deploy)
    refilling: int  # fills running now on this control plane
    refilled: int  # members made
    refill_failures: int
    destroyed: int  # members destroyed by the reconciler (broken, cut short, recycled)
    recycled: int  # of which: made for an older default version
    refill_parallel: int


@dataclass(frozen=True)
class PoolSettings:
    targets: Mapping[str, int]
    parallel: int = 2
    interval_s: float = 1.0


class WarmPool:
    def __init__(
        self,
        *,
        registry: Registry,
        runner: OperationRunner,
        kit: Toolkit,
        steps: StepLists,
        settings: PoolSettings,
        metrics: Metrics,
        lock_ttl_s: float,
        shared: Numbers | None = None,
    ) -> None:
        self.registry = registry
        self.runner = runner
        self.kit = kit
        self.steps = steps
        self.settings = settings
        self.metrics = metrics
        self.lock_ttl_s = lock_ttl_s
        self._fills = ThreadPoolExecutor(settings.parallel, thread_name_prefix="pool-fill")
        self._inflight = 0
        self._guard = threading.Lock()
        # a claim in another process of this control plane wakes the refills too
        self._wake = Waker(shared, POOL_WAKE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # fills that failed in a row, and when the next may start (the port range may be full)
        self._failures = 0
        self._next_at = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.settings.targets)

    # -- claiming -----------------------------------------------------------------------------

    def take(self, session: Session, plan: str, version: str, op_id: str) -> str | None:
        """Inside the caller's transaction: claim a ready member of `plan` at `version` for
        the deploy operation `op_id` (written here, with the store's lock held by it). Returns
        the member's id, which is now the store's, or None when none is free."""
        if self.settings.targets.get(plan, 0) <= 0:
            return None
        now = utcnow()
        free_lock = or_(Store.lock_token.is_(None), Store.lock_expires_at < now)
        # Concurrent signups each try the free members in an order of their own, so that they
        # do not all race for the oldest; a lost compare-and-set moves to the next (with
        # PostgreSQL, an update of a row another claim is writing waits for it to commit, then
        # finds it taken).
        candidates = list(
            session.scalars(
                select(Store.id)
                .where(
                    Store.pool == PoolState.READY,
                    Store.plan == plan,
                    Store.version == version,
                    free_lock,
                )
                .limit(CLAIM_CANDIDATES)
            )
        )
        random.shuffle(candidates)
        for candidate in candidates:
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(Store)
                .where(Store.id == candidate, Store.pool == PoolState.READY, free_lock)
                .values(
                    pool=None,
                    phase=DeployPhase.DEPLOYING,
                    back_link=None,  # (the member's; the claim's `record` writes the store's)
                    db_link=None,
                    lock_token=op_id,
                    lock_expires_at=now + timedelta(seconds=self.lock_ttl_s),
                    last_error=None,
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                self.runner.ops.create(
                    candidate, OpKind.DEPLOY, {"warm": True}, session=session, op_id=op_id
                )
                return candidate
        return None

    # -- refilling ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="warm-pool", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set_here()
        self._fills.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refill_once()
            except Exception:  # e.g. the registry briefly away: log it, try at the next tick
                log.exception("warm pool refill failed")
            self._wake.wait(self.settings.interval_s)
            self._wake.clear()

    def _regular_work(self) -> bool:
        """A regular operation runs on this control plane (fills wait for it)."""
        return any(kind not in POOL_KINDS for kind in self.runner.keeper.running_kinds())

    def refill_once(self) -> int:
        """Start the fills the pool lacks (within `parallel`); returns how many started."""
        if not self.enabled or self._stop.is_set():
            return 0
        if time.monotonic() < self._next_at:
            return 0
        version = self.kit.driver.default_version()
        have = self._counts(version)
        started = 0
        for plan, target in self.settings.targets.items():
            missing = target - have.get(plan, 0)
            while missing > 0:
                with self._guard:
                    if self._inflight >= self.settings.parallel:
                        return started
                if self._regular_work():
                    return started
                member = self._begin_fill(plan, version, target)
                if member is None:
                    break
                with self._guard:
                    self._inflight += 1
                    self.metrics.pool_refilling = self._inflight
                try:
                    self._fills.submit(self._fill, *member)
                except RuntimeError:  # stopping: the reconciler destroys the unfilled member
                    return started
                missing -= 1
                started += 1
        return started

    def _counts(self, version: str) -> dict[str, int]:
        """Members per plan that count towards the target (filling, or ready at `version`)."""
        with self.registry.transaction() as session:
            rows = session.execute(
                select(Store.plan, func.count())
                .where(_counts_toward_target(version))
                .group_by(Store.plan)
            )
            return {plan: int(count) for plan, count in rows}

    def _begin_fill(self, plan: str, version: str, target: int) -> tuple[str, str] | None:
        """Write a `filling` member with its operation (holding its lock) before anything
        acts; drop it at once if the plan has its target without it (another control plane
        filled meanwhile). Returns (member id, operation id)."""
        member_id, op_id = str(uuid.uuid4()), str(uuid.uuid4())
        now = utcnow()
        with self.registry.transaction() as session:
            session.add(
                Store(
                    id=member_id,
                    nombre="",
                    # never a real name's key: those hold no control character
                    nombre_key=f"\x01pool {member_id}",
                    country_id="",
                    tokens_disponibles=0,
                    plan=plan,
                    pool=PoolState.FILLING,
                    phase=DeployPhase.DEPLOYING,
                    runtime=self.kit.driver.name,
                    version=version,
                    created_at=now,
                    lock_token=op_id,
                    lock_expires_at=now + timedelta(seconds=self.lock_ttl_s),
                )
            )
            session.flush()
            self.runner.ops.create(
                member_id,
                OpKind.POOL_FILL,
                {"plan": plan, "version": version},
                session=session,
                op_id=op_id,
            )
        with self.registry.transaction() as session:
            ranked = list(
                session.scalars(
                    select(Store.id)
                    .where(
                        Store.plan == plan,
                        _counts_toward_target(version),
                    )
                    .order_by(Store.created_at, Store.id)
                )
            )
            if member_id in ranked and ranked.index(member_id) < target:
                return member_id, op_id
            session.execute(delete(Store).where(Store.id == member_id))
            session.execute(delete(Operation).where(Operation.id == op_id))
        return None

    def _fill(self, member_id: str, op_id: str) -> None:
        def body(run: RunningOp) -> None:
            ctx = self.kit.context(run, self.kit.load(member_id, member=True))
            try:
                run_steps(self.steps.pool_fill, ctx, failure="warm-pool fill failed")
            except BaseException:
                # its undos removed the stack and released its leases; the row goes too, while
                # the fill still holds it (the reconciler never sees it half made)
                self._forget(member_id)
                raise

        try:
            self.runner.execute(op_id, member_id, OpKind.POOL_FILL, body, wait_s=5.0)
            self.metrics.pool_refill("ready")
            self._failures = 0
            log.info("warm pool: member %s ready", member_id)
        except StorefleetError as exc:
            self._failed(member_id)
            log.warning(
                "warm pool: a fill failed (next in %.0f s): %s",
                self._next_at - time.monotonic(),
                exc.message,
            )
        except Exception:  # a bug: logged with its traceback (a fill thread's future is never
            self._failed(member_id)  # read, so nothing else would show it), the pool goes on
            log.exception("warm pool: a fill failed")
        finally:
            with self._guard:
                self._inflight -= 1
                self.metrics.pool_refilling = self._inflight
            self._wake.set_here()

    def _failed(self, member_id: str) -> None:
        self._forget(member_id)
        self.metrics.pool_refill("failed")
        with self._guard:
            self._failures += 1
            self._next_at = time.monotonic() + FILL_BACKOFF.delay(self._failures)

    def _forget(self, member_id: str) -> None:
        with self.registry.transaction() as session:
            session.execute(delete(Store).where(Store.id == member_id, Store.pool.is_not(None)))

    # -- the reconciler's action ----------------------------------------------------------------

    def destroy(self, member_id: str, why: str, *, recycled: bool = False) -> str | None:
        """Destroy a member that must not be handed out (if no operation holds it and it is
        still a member); returns what was done, or None."""

        def body(run: RunningOp) -> str | None:
            try:
                member = self.kit.load(member_id, member=True)
            except NotFoundError:  # gone meanwhile (its fill failed and removed it)
                return None
            if member.pool is None:  # claimed meanwhile: it is a store now
                return None
            ctx = self.kit.context(run, member)
            run_steps(self.steps.pool_destroy, ctx, failure="warm-pool destroy failed")
            return f"destroyed a warm-pool member: {why}"

        done = self.runner.unless_busy(member_id, OpKind.POOL_DESTROY, body)
        if done is not None:
            self.metrics.pool_refill("recycled" if recycled else "destroyed")
            self.wake()
        return done

    # -- the view -----------------------------------------------------------------------------

    def members(self) -> dict[str, dict[str, int]]:
        version = self.kit.driver.default_version()
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        with self.registry.transaction() as session:
            rows = session.execute(
                select(Store.plan, Store.pool, Store.version, func.count())
                .where(Store.pool.is_not(None))
                .group_by(Store.plan, Store.pool, Store.version)
            )
            for plan, state, made_at, count in rows:
                key = "stale" if state == PoolState.READY and made_at != version else str(state)
                counts[plan][key] = counts[plan].get(key, 0) + int(count)
        return dict(counts)

    def view(self) -> PoolView:
        m = self.metrics
        return PoolView(
            enabled=self.enabled,
            targets=dict(self.settings.targets),
            version=self.kit.driver.default_version(),
            members=self.members(),
            claims=m.pool_count("claim", "warm"),
            misses=m.pool_count("claim", "miss"),
            failed_claims=m.pool_count("claim", "failed"),
            refilling=self.metrics.pool_refilling,  # where the pool refills
            refilled=m.pool_count("refill", "ready"),
            refill_failures=m.pool_count("refill", "failed"),
            destroyed=m.pool_count("refill", "destroyed") + m.pool_count("refill", "recycled"),
            recycled=m.pool_count("refill", "recycled"),
            refill_parallel=self.settings.parallel,
        )
