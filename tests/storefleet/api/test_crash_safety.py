"""Crash safety with real processes: kill the control plane after every step, restart it,
and check that it converges (one stack or none, no orphan process, no stray lease, data kept)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
    count_supervisors,
    next_port_range,
    orders,
    pg_database,
    store_body,
    wait_for,
)

FAST = FAST_RECOVERY


def _settled(api: httpx.Client, sid: str) -> dict[str, Any] | None:
    response = api.get(f"/stores/{sid}/deploy/status")
    if response.status_code == 404:
        return None
    status: dict[str, Any] = response.json()
    return status


DEPLOY_STEPS = ["intent", "lease_ports", "secrets", "apply", "record"]
UNDEPLOY_STEPS = ["intent", "remove_stack", "release_ports", "record"]


@pytest.mark.parametrize("step", DEPLOY_STEPS)
def test_killed_during_deploy_converges(
    start_server: Callable[..., Server], tmp_path: Path, step: str
) -> None:
    data_dir = tmp_path / "var"
    ports = next_port_range()
    first = start_server(
        data_dir, STOREFLEET_FAULT_AFTER=f"deploy:{step}", STOREFLEET_PORT_RANGE=ports, **FAST
    )
    with first.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Caida")).json()["store"]["id"]
        with pytest.raises(httpx.HTTPError):
            api.post(f"/stores/{sid}/deploy")
    assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL

    second = start_server(data_dir, STOREFLEET_PORT_RANGE=ports, **FAST)
    with second.client() as api:
        wait_for(lambda: _settled(api, sid)["status"] in ("running", "not_deployed"))  # type: ignore[index]
        status = _settled(api, sid)
        assert status is not None
        if step == "record":
            assert status["status"] == "running"  # it had finished: kept
        if status["status"] == "running":
            assert count_supervisors(data_dir) == 1 and len(set(status["ports"].values())) == 3
            assert httpx.get(status["back_link"] + "/health").status_code == 200
        else:
            assert count_supervisors(data_dir) == 0 and status["ports"] is None
            assert "interrupted" in status["last_error"]
            assert not (data_dir / "stores" / sid / "deploy").exists()
        # the cut-short operation is closed once its lock expired and a pass recovered it
        wait_for(lambda: api.get(f"/stores/{sid}/operations").json()[-1]["state"] != "running")
        ops = api.get(f"/stores/{sid}/operations").json()
        assert ops[-1]["kind"] == "deploy" and ops[-1]["state"] in ("failed", "succeeded")
        # and it deploys normally afterwards
        assert api.post(f"/stores/{sid}/deploy").json()["status"] in (
            "deployed",
            "already_deployed",
        )
        assert count_supervisors(data_dir) == 1


@pytest.mark.parametrize("step", UNDEPLOY_STEPS)
def test_killed_during_undeploy_converges(
    start_server: Callable[..., Server], tmp_path: Path, step: str
) -> None:
    data_dir = tmp_path / "var"
    ports = next_port_range()
    first = start_server(
        data_dir, STOREFLEET_FAULT_AFTER=f"undeploy:{step}", STOREFLEET_PORT_RANGE=ports, **FAST
    )
    with first.client() as api:
        created = api.post("/stores/", json=store_body(api, "Se Va")).json()
        sid, back = created["store"]["id"], back_of(created)
        add_order(back, "keep")
        with pytest.raises(httpx.HTTPError):
            api.delete(f"/stores/{sid}/deploy")
    assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL

    second = start_server(data_dir, STOREFLEET_PORT_RANGE=ports, **FAST)
    with second.client() as api:
        wait_for(lambda: _settled(api, sid)["status"] == "not_deployed")  # type: ignore[index]
        status = _settled(api, sid)
        assert status is not None and status["ports"] is None and status["db_exists"]
        assert count_supervisors(data_dir) == 0
        # the data survived: a redeploy shows the order
        again = api.post(f"/stores/{sid}/deploy").json()
        assert orders(BackLink(again["back_link"], back.key)) == ["keep"]


def test_killed_during_delete_finishes_the_delete(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    ports = next_port_range()
    first = start_server(
        data_dir, STOREFLEET_FAULT_AFTER="delete:remove_stack", STOREFLEET_PORT_RANGE=ports, **FAST
    )
    with first.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Borrada")).json()["store"]["id"]
        with pytest.raises(httpx.HTTPError):
            api.delete(f"/stores/{sid}")
    second = start_server(data_dir, STOREFLEET_PORT_RANGE=ports, **FAST)
    with second.client() as api:
        wait_for(lambda: api.get(f"/stores/{sid}").status_code == 404)
        assert count_supervisors(data_dir) == 0
        # its data is kept and reported, not removed (at the end of the pass that deleted it)
        wait_for(lambda: sid in api.get("/reconciler").json()["orphan_data"], 10)


def test_async_deploy_and_cancel_roll_back(start_server: Callable[..., Server]) -> None:
    # a "backend" that runs but never answers its health check: the deploy waits until cancelled
    server = start_server(
        STOREFLEET_PROCESS_BACKEND_MODULE="storefleet_backend.idle",
        STOREFLEET_DEPLOY_TIMEOUT_S="60",
    )
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Cancelada")).json()["store"][
            "id"
        ]
        accepted = api.post(f"/stores/{sid}/deploy", params={"wait": "false"})
        assert accepted.status_code == 202
        op = accepted.json()
        wait_for(lambda: count_supervisors(server.data_dir) == 1, 10)
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "deploying"
        cancel = api.post(f"/operations/{op['id']}/cancel")
        assert cancel.status_code == 202 and cancel.json()["cancel_requested"] is True
        wait_for(lambda: api.get(f"/operations/{op['id']}").json()["state"] == "cancelled", 10)
        done = api.get(f"/operations/{op['id']}").json()
        steps = {s["name"]: s["state"] for s in done["steps"]}
        assert steps["apply"] == "failed" and steps["undo_apply"] == "ok"
        assert steps["undo_lease_ports"] == "ok" and steps["undo_intent"] == "ok"
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "not_deployed" and status["ports"] is None
        assert count_supervisors(server.data_dir) == 0
        assert api.post(f"/operations/{op['id']}/cancel").status_code == 409
        assert api.get("/operations/7f0c2a8e-2d0b-4c55-9d8e-000000000000").status_code == 404

        # wait=false on undeploy too
        server_ok = api.post("/stores/?deploy=false", json=store_body(api, "Asincrona")).json()
        other = server_ok["store"]["id"]
        op2 = api.post(f"/stores/{other}/deploy", params={"wait": "false"}).json()
        assert op2["state"] in ("pending", "running")


def test_dead_supervisor_is_restarted_by_the_reconciler(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(**FAST)
    with server.client() as api:
        created = api.post("/stores/", json=store_body(api, "Resucita")).json()
        sid = created["store"]["id"]
    pid = int((server.data_dir / "stores" / sid / "deploy" / "supervisor.pid").read_text())
    import os

    os.killpg(pid, signal.SIGKILL)  # supervisor and backend gone
    with server.client() as api:
        wait_for(lambda: api.get(f"/stores/{sid}/deploy/status").json()["status"] != "running", 5)
        wait_for(lambda: api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running", 30)
        kinds = [o["kind"] for o in api.get(f"/stores/{sid}/operations").json()]
        assert "repair" in kinds
    assert httpx.get(created["deployment"]["back_link"] + "/health").status_code == 200


def test_two_control_planes_on_one_registry_deploy_twenty_stores(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    with pg_database() as url:
        data_dir = tmp_path / "shared"
        env = {"STOREFLEET_DATABASE_URL": url, "STOREFLEET_PORT_RANGE": next_port_range(90)}
        planes = [start_server(data_dir, **env), start_server(data_dir, **env)]
        barrier = threading.Barrier(20)

        def create(i: int) -> httpx.Response:
            with planes[i % 2].client() as api:
                body = store_body(api, f"Doble {i}")
                barrier.wait()
                return api.post("/stores/", json=body)

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(create, range(20)))
        assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
        ids = [r.json()["store"]["id"] for r in responses]
        # every store deployed once more from the other plane: still one stack each
        with ThreadPoolExecutor(20) as pool:
            again = list(
                pool.map(
                    lambda i: planes[(i + 1) % 2].client().post(f"/stores/{ids[i]}/deploy"),
                    range(20),
                )
            )
        assert all(r.json()["status"] == "already_deployed" for r in again)
        ports = [p for r in responses for p in r.json()["deployment"]["ports"].values()]
        assert len(set(ports)) == 60
        assert count_supervisors(data_dir) == 20
        for plane in planes:
            plane.stop()
