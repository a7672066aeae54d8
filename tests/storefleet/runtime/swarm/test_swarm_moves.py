"""Stores' data on the Swarm lab: backups and restores next to a database on any node, a store
moved to another node with its rows, a node drained of its stores."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    FAST_RECOVERY,
    BackLink,
    Server,
    add_order,
    back_of,
    orders,
    store_body,
    wait_for,
)
from helpers.swarm import NODES, docker, node_of
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


def test_backup_restore_move_and_drain_across_nodes(swarm_server: tuple[Server, str]) -> None:
    server, _label = swarm_server
    with server.client() as api:
        created = [
            api.post("/stores/", json=store_body(api, f"Mudanza {i}")).json() for i in range(2)
        ]
        ids = [c["store"]["id"] for c in created]
        keys = [c["api_key"] for c in created]
        a, b = ids
        add_order(back_of(created[0]), "kept-1")

        # a backup taken next to the database (wherever it runs), restored in place
        made = api.post(f"/stores/{a}/backups")
        assert made.status_code == 201, made.text
        assert made.json()["size_bytes"] > 0 and made.json()["format"] == "pg_dump-custom"
        add_order(back_of(created[0]), "after-backup")
        restored = api.post(f"/stores/{a}/backups/{made.json()['id']}/restore")
        assert restored.status_code == 200, restored.text
        assert orders(back_now(api, a, keys[0])) == ["kept-1"]
        add_order(back_now(api, a, keys[0]), "kept-2")

        # a move: the rows and the hostname follow; the old node keeps nothing of it
        here = node_of(status_of(api, a))
        there = next(n for n in sorted(NODES) if n != here)
        assert volumes_of(here, a)
        moved = api.post(f"/stores/{a}/move", json={"node": there})
        assert moved.status_code == 200, moved.text
        body = moved.json()
        assert (body["status"], body["from_node"], body["node"], body["notes"]) == (
            "moved",
            here,
            there,
            [],
        )
        status = status_of(api, a)
        assert (status["status"], node_of(status)) == ("running", there)
        assert orders(back_now(api, a, keys[0])) == ["kept-1", "kept-2"]
        assert volumes_of(here, a) == [] and volumes_of(there, a)
        reasons = [x["reason"] for x in api.get(f"/stores/{a}/backups").json()]
        assert "move" in reasons
        # the operation shows its steps in order
        ops = [o for o in api.get(f"/stores/{a}/operations").json() if o["kind"] == "move"]
        steps = [s["name"] for s in ops[0]["steps"]] if ops else []
        assert steps[:4] == ["secrets", "quiesce", "backup", f"relocate_to_{there}"], ops

        # its logs, read through the manager from the node its tasks ran on
        backend_logs = api.get(f"/stores/{a}/logs", params={"tail": 50})
        assert backend_logs.status_code == 200 and backend_logs.text.strip(), backend_logs.text
        db_logs = api.get(f"/stores/{a}/logs", params={"service": "db", "tail": 200})
        assert "ready to accept connections" in db_logs.text, db_logs.text[-500:]

        # moving where it is, or to no node: said clearly
        same = api.post(f"/stores/{a}/move", json={"node": there})
        assert same.json()["status"] == "already_there"
        nowhere = api.post(f"/stores/{a}/move", json={"node": "h9"})
        assert (nowhere.status_code, nowhere.json()["code"]) == (422, "no_node")
        assert api.post("/nodes/h9/drain").status_code == 404
        assert api.post(f"/stores/{a}/move", json={"node": "../x"}).status_code == 422

        # drain b's node: b moves away with its rows, the node takes no more stores
        add_order(back_of(created[1]), "b-row")
        drained = node_of(status_of(api, b))
        try:
            op = api.post(f"/nodes/{drained}/drain")
            assert op.status_code == 202, op.text
            op_id = op.json()["id"]
            ended = ("succeeded", "failed", "cancelled")
            wait_for(lambda: api.get(f"/operations/{op_id}").json()["state"] in ended, 240)
            done = api.get(f"/operations/{op_id}").json()
            assert done["state"] == "succeeded", done
            assert node_of(status_of(api, b)) != drained
            assert orders(back_now(api, b, keys[1])) == ["b-row"]
            nodes = {n["name"]: n for n in api.get("/nodes").json()}
            assert (nodes[drained]["availability"], nodes[drained]["stores"]) == ("drain", 0)
        finally:  # the lab as it was for the other tests
            node_id = _node_id(drained)
            docker("h0", "node", "update", "--availability", "active", node_id)
            subprocess.run(
                ["docker", "node", "update", "--label-rm", "io.storefleet.paused", node_id],
                capture_output=True,
                check=False,
            )
        for sid in ids:
            purged = api.delete(
                f"/stores/{sid}/deploy", params={"purge": "true", "final_backup": "false"}
            )
            assert purged.status_code == 200, purged.text


def test_a_move_cut_short_goes_back_where_the_data_is(
    start_server: Callable[..., Server],
    swarm_env: tuple[dict[str, str], str],
    tmp_path: Path,
) -> None:
    """The control plane dies right after the restore on the new node: once it is back, the
    move goes back to the node that holds the data, with its rows, and nothing of the store is
    left on the new node (a move cut short after its record is finished instead: see
    tests/storefleet/services/test_nodes.py)."""
    step = "restore"
    env, _label = swarm_env
    data_dir = tmp_path / "var"
    first = start_server(data_dir, STOREFLEET_FAULT_AFTER=f"move:{step}", **env, **FAST_RECOVERY)
    with first.client() as api:
        created = api.post("/stores/", json=store_body(api, "Caida en mudanza")).json()
        sid, key = created["store"]["id"], created["api_key"]
        add_order(back_of(created), "survives")
        here = node_of(status_of(api, sid))
        there = next(n for n in sorted(NODES) if n != here)
        with pytest.raises(httpx.HTTPError):
            api.post(f"/stores/{sid}/move", json={"node": there})
    assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL

    second = start_server(data_dir, **env, **FAST_RECOVERY)
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


def _node_id(name: str) -> str:
    label = '{{index .Spec.Labels "io.storefleet.node"}}'
    for line in docker("h0", "node", "ls", "-q").split():
        if docker("h0", "node", "inspect", line, "--format", label) == name:
            return line
    raise AssertionError(f"no node {name}")
