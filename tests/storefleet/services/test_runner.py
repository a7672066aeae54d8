"""The operation runner: one operation per store at a time, and one hook for what ended."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from helpers import new_store
from storefleet.errors import BusyError
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.runner import Changes, DeployTimeouts
from storefleet.services.wiring import Services


def test_subscribers_hear_each_change_even_when_one_fails() -> None:
    heard: list[tuple[str, str]] = []
    changes = Changes()

    def broken(_store_id: str, _kind: str) -> None:
        raise RuntimeError("a subscriber's bug")

    changes.subscribe(broken)
    changes.subscribe(lambda store_id, kind: heard.append((store_id, kind)))
    changes.emit("s1", "deploy")
    assert heard == [("s1", "deploy")]


def test_one_operation_per_store_and_the_reconciler_never_waits(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services, "Ocupada")
    heard: list[tuple[str, str]] = []
    services.runner.changes.subscribe(lambda store_id, kind: heard.append((store_id, kind)))

    def inner(_run: RunningOp) -> str | None:
        # while this operation holds the store, another cannot start
        with pytest.raises(BusyError):
            services.runner.operation(sid, OpKind.BACKUP, lambda _r: None, wait=True)
        # and a reconciler action gives up at once, leaving no operation behind
        before = len(services.ops.for_store(sid))
        assert services.runner.unless_busy(sid, OpKind.REPAIR, lambda _r: "x") is None
        assert len(services.ops.for_store(sid)) == before
        return "done"

    # a short wait for the lock (as long as a deploy and an undeploy last)
    services.runner.timeouts = DeployTimeouts(
        deploy_s=0.1, undeploy_s=0.1, lock_ttl_s=30, poll_s=0.01
    )
    assert services.runner.operation(sid, OpKind.RESTART, inner) == "done"
    assert heard[-1] == (sid, OpKind.RESTART)
    kinds = [(op.kind, op.state) for op in services.ops.for_store(sid)]
    assert ("restart", "succeeded") in kinds and ("backup", "failed") in kinds
