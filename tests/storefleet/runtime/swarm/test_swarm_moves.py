"""A move on the Swarm lab cut short by the control plane's death loses no data (the move itself,
backups, restores and a drain are in test_swarm_runtime.py)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    FAST_RECOVERY,
    BackLink,
    add_order,
    back_of,
    orders,
    store_body,
    wait_for,
)
from helpers.swarm import NODES, SwarmLab, docker, node_of
from storefleet.runtime.docker.stack import STORE_LABEL

pytestmark = pytest.mark.docker


def volumes_of(node: str, store_id: str) -> list[str]:
    return docker(node, "volume", "ls", "-q", "--filter", f"label={STORE_LABEL}={store_id}").split()


def back_now(api: httpx.Client, store_id: str, key: str) -> BackLink:
    """The store's back_link as recorded now (a move changes the node, so the address)."""
    return BackLink(api.get(f"/stores/{store_id}").json()["back_link"], key)


def status_of(api: httpx.Client, store_id: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/stores/{store_id}/deploy/status").json()
    return found


def test_a_move_cut_short_goes_back_where_the_data_is(swarm: SwarmLab, tmp_path: Path) -> None:
    """The control plane dies right after the restore on the new node: once it is back, the
    move goes back to the node that holds the data, with its rows, and nothing of the store is
    left on the new node (a move cut short after its record is finished instead: see
    tests/storefleet/services/test_nodes.py)."""
    step = "restore"
    data_dir = tmp_path / "var"
    first = swarm.start(data_dir, STOREFLEET_FAULT_AFTER=f"move:{step}", **FAST_RECOVERY)
    with first.client() as api:
        created = api.post("/stores/", json=store_body(api, "Caida en mudanza")).json()
        sid, key = created["store"]["id"], created["api_key"]
        add_order(back_of(created), "survives")
        here = node_of(status_of(api, sid))
        there = next(n for n in sorted(NODES) if n != here)
        with pytest.raises(httpx.HTTPError):
            api.post(f"/stores/{sid}/move", json={"node": there})
    assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL

    second = swarm.start(data_dir, **FAST_RECOVERY)
    with second.client() as api:

        def settled() -> bool:
            ops = api.get(f"/stores/{sid}/operations").json()
            recovered = any(o["kind"] == "recover" and o["state"] == "succeeded" for o in ops)
            return recovered and status_of(api, sid)["status"] == "running"

        wait_for(settled, 150)
        expected, left = here, there
        assert node_of(status_of(api, sid)) == expected
        assert orders(back_now(api, sid, key)) == ["survives"]
        wait_for(lambda: volumes_of(left, sid) == [], 60)
        purged = api.delete(
            f"/stores/{sid}/deploy", params={"purge": "true", "final_backup": "false"}
        )
        assert purged.status_code == 200, purged.text
