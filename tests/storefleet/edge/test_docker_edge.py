"""The edge on the Docker runtime: the `<prefix>-edge` container in front of routed stacks that
publish no host port (real engine, real Compose stacks, real TLS). Every Docker object carries
the test label and is removed afterwards."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from helpers import (
    TEST_LABEL,
    EdgeClient,
    Server,
    after_a_reconciler_pass,
    edge_env,
    store_body,
    wait_for,
    wait_for_status,
)

pytestmark = pytest.mark.docker

PREFIX = "sfe"


@pytest.fixture
def engine(docker_client: docker.DockerClient) -> docker.DockerClient:
    return docker_client


@pytest.fixture
def edged(engine: docker.DockerClient, start_server: Callable[..., Server]) -> Server:
    return start_server(
        **edge_env(
            STOREFLEET_RUNTIME="docker",
            STOREFLEET_EXTRA_LABELS=TEST_LABEL,
            STOREFLEET_PROJECT_PREFIX=PREFIX,
            STOREFLEET_DEPLOY_TIMEOUT_S="90",
            STOREFLEET_RECONCILE_INTERVAL_S="3",
            # one port triple: routed stores lease none, so it limits nothing
            STOREFLEET_PORT_RANGE="20990-20992",
        )
    )


def _published(engine: docker.DockerClient) -> dict[str, Any]:
    """Host ports published by any container of this test (none expected)."""
    found: dict[str, Any] = {}
    for container in engine.containers.list(all=True, filters={"label": TEST_LABEL}):
        bindings = container.attrs["HostConfig"].get("PortBindings") or {}
        if any(bindings.values()):
            found[str(container.name)] = bindings
    return found


def test_routed_stacks_publish_nothing_and_answer_at_their_hostnames(
    edged: Server, engine: docker.DockerClient, tmp_path: Path
) -> None:
    with edged.client() as api:
        with ThreadPoolExecutor(3) as pool:
            made = list(
                pool.map(
                    lambda n: api.post("/stores/", json=store_body(api, n)),
                    ["Docker Uno", "Docker Dos", "Docker Tres"],
                )
            )
        assert all(r.status_code == 201 for r in made), [r.text for r in made]
        created = [r.json() for r in made]
        # 400 more registered (a stack each would need ~20 GiB here): hostnames for all
        with ThreadPoolExecutor(8) as pool:
            more = list(
                pool.map(
                    lambda i: api.post(
                        "/stores/?deploy=false", json=store_body(api, f"Registrada {i}")
                    ),
                    range(400),
                )
            )
        assert all(r.status_code == 201 for r in more)
        listed = api.get("/stores/").json()
    hosts = [s["hostname"] for s in listed]
    assert len(listed) == 403 and len(set(hosts)) == 403
    edge = EdgeClient(edged, tmp_path)
    for body in created:
        deployment = body["deployment"]
        assert deployment["back_link"].startswith("https://docker-")
        # the stack's internal ports (it publishes none)
        assert deployment["ports"] == {
            "backend_port": 8000,
            "websocket_port": 8001,
            "db_port": 5432,
        }
        assert edge.get(body["store"]["hostname"]).json()["store_id"] == body["store"]["id"]
    assert _published(engine) == {}
    # the edge is a container of its own in the host's network; databases are on no network
    # the edge can reach, and each backend has only its own socket folder of the edge's
    proxy = engine.containers.get(f"{PREFIX}-edge")
    assert proxy.attrs["HostConfig"]["NetworkMode"] == "host"
    for body in created:
        sid = body["store"]["id"]
        for container in engine.containers.list(filters={"label": f"io.storefleet.store_id={sid}"}):
            mounts = [m["Source"] for m in container.attrs["Mounts"] if m["Type"] == "bind"]
            edge_mounts = [m for m in mounts if "/edge/" in m]
            service = container.labels["com.docker.compose.service"]
            assert edge_mounts == (
                [f"{edged.data_dir}/edge/s/{sid}"] if service == "backend" else []
            )
    # orders stay in their own store
    one, two = created[0], created[1]
    key_one, key_two = {"X-Api-Key": one["api_key"]}, {"X-Api-Key": two["api_key"]}
    order = {"amount": 7, "currency": "EUR", "reference": "uno"}
    host_one, host_two = one["store"]["hostname"], two["store"]["hostname"]
    assert (
        edge.request("POST", host_one, "/api/v1/orders", json=order, headers=key_one).status_code
        == 201
    )
    assert [
        o["reference"] for o in edge.get(host_one, "/api/v1/orders", headers=key_one).json()
    ] == ["uno"]
    assert edge.get(host_two, "/api/v1/orders", headers=key_two).json() == []
    with edge.websocket(host_one, one["api_key"]) as ws:
        assert json.loads(ws.recv(10))["type"] == "hello"


def test_a_killed_edge_container_is_brought_back(
    edged: Server, engine: docker.DockerClient, tmp_path: Path
) -> None:
    with edged.client() as api:
        created = api.post("/stores/", json=store_body(api, "Docker Resiste")).json()
        sid, host = created["store"]["id"], created["store"]["hostname"]
        edge = EdgeClient(edged, tmp_path)
        assert edge.get(host).status_code == 200
        after_a_reconciler_pass(api)  # the next one is an interval away: time to see it down
        engine.containers.get(f"{PREFIX}-edge").kill()
        seen = wait_for_status(api, sid, "degraded", timeout_s=10)
        assert "edge is not running" in seen["last_error"]
        wait_for(lambda: edge.get(host).status_code == 200, timeout_s=30)
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        assert api.get("/reconciler").json()["edge_restarts"] >= 1
        # undeployed: no route, and its socket folder is gone with its stack
        assert api.delete(f"/stores/{sid}/deploy").status_code == 200
        assert edge.get(host).status_code == 404
        assert not (edged.data_dir / "edge" / "s" / sid).exists()
    assert httpx.get(edged.url + "/api/v1/edge/ask", params={"domain": host}).status_code == 404
