"""The warm pool on the Docker runtime (real engine, Compose stacks, PostgreSQL, the edge):
members are paused containers; a signup claims one and the store answers at its hostname over
TLS and writes orders; signups beyond the pool deploy cold. Every Docker object carries the
test label and is removed afterwards."""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from helpers import (
    FAST_RECOVERY,
    TEST_LABEL,
    EdgeClient,
    Server,
    assert_docs_offline,
    back_of,
    edge_env,
    orders,
    store_body,
    wait_for,
)

pytestmark = pytest.mark.docker

STORE_LABEL = "io.storefleet.store_id"


def _pool(api: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = api.get("/pool").json()
    return answer


def _ready(api: httpx.Client) -> int:
    return int(_pool(api)["members"].get("basic", {}).get("ready", 0))


def _states(engine: docker.DockerClient, store_id: str) -> set[str]:
    containers = engine.containers.list(all=True, filters={"label": f"{STORE_LABEL}={store_id}"})
    return {str(c.status) for c in containers}


def _warm(api: httpx.Client, sid: str) -> bool:
    ops = api.get(f"/stores/{sid}/operations").json()
    return bool(next(op for op in ops if op["kind"] == "deploy")["params"].get("warm"))


def _docker_env(prefix: str, **extra: str) -> dict[str, str]:
    return {
        "STOREFLEET_RUNTIME": "docker",
        "STOREFLEET_EXTRA_LABELS": TEST_LABEL,
        "STOREFLEET_PROJECT_PREFIX": prefix,
        "STOREFLEET_DEPLOY_TIMEOUT_S": "90",
        "STOREFLEET_RECONCILE_INTERVAL_S": "2",
        **extra,
    }


def test_docker_members_are_paused_and_claimed_stores_answer_at_their_hostnames(
    docker_client: docker.DockerClient, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(
        **edge_env(
            **_docker_env("sfp", STOREFLEET_WARM_POOL="3", STOREFLEET_POOL_REFILL_PARALLEL="3")
        )
    )
    with server.client() as api:
        wait_for(lambda: _ready(api) == 3, timeout_s=180)
        members = {
            str(c.labels[STORE_LABEL])
            for c in docker_client.containers.list(all=True, filters={"label": TEST_LABEL})
            if STORE_LABEL in c.labels
        }
        assert len(members) == 3
        for member in members:  # a member: its own app and PostgreSQL, frozen
            assert _states(docker_client, member) == {"paused"}
        assert api.get("/stores/").json() == []

        with ThreadPoolExecutor(5) as workers:
            made = list(
                workers.map(
                    lambda i: api.post("/stores/", json=store_body(api, f"Caliente {i}")),
                    range(5),
                )
            )
        assert all(r.status_code == 201 for r in made), [r.text for r in made]
        created = [r.json() for r in made]
        sids = {c["store"]["id"] for c in created}
        warm = {sid for sid in sids if _warm(api, sid)}
        assert len(warm) == 3 and warm == members  # the pool's three, then two cold
        edge = EdgeClient(server, tmp_path)  # (its CA exists once a store was routed)
        for c in created:
            sid, host = c["store"]["id"], c["deployment"]["hostname"]
            assert c["deployment"]["status"] == "deployed"
            assert c["deployment"]["back_link"] == f"https://{host}:{edge.https_port}"
            assert _states(docker_client, sid) == {"running"}
            health = edge.get(host).json()
            assert health["store_id"] == sid
            key = {"X-Api-Key": c["api_key"]}
            assert edge.get(host, "/api/v1/orders", headers=key).json() == []
            order = {"amount": 7, "currency": "EUR", "reference": f"r-{sid[:6]}"}
            answer = edge.request("POST", host, "/api/v1/orders", headers=key, json=order)
            assert answer.status_code == 201, answer.text
            assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        for c in created:  # each database holds its own order only
            host, key = c["deployment"]["hostname"], {"X-Api-Key": c["api_key"]}
            refs = [o["reference"] for o in edge.get(host, "/api/v1/orders", headers=key).json()]
            assert refs == [f"r-{c['store']['id'][:6]}"]
        view = _pool(api)
        assert view["claims"] == 3 and view["misses"] == 2
        # a store's API docs load with no internet (Swagger UI from its own backend)
        host = created[0]["deployment"]["hostname"]
        assert_docs_offline(lambda path: edge.get(host, path))
        # it refills
        wait_for(lambda: _ready(api) == 3, timeout_s=180)


def test_docker_claim_without_the_edge_answers_at_its_ports(
    docker_client: docker.DockerClient, start_server: Callable[..., Server]
) -> None:
    server = start_server(**_docker_env("sfq", STOREFLEET_EDGE="none", STOREFLEET_WARM_POOL="1"))
    with server.client() as api:
        wait_for(lambda: _ready(api) == 1, timeout_s=180)
        created = api.post("/stores/", json=store_body(api, "Puerto")).json()
        sid = created["store"]["id"]
        assert _warm(api, sid)
        back = back_of(created)
        assert httpx.get(back + "/health").json()["store_id"] == sid
        assert orders(back) == []
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "running" and status["ports"] is not None
        # undeploying the store removes its stack; the pool's next member is untouched
        wait_for(lambda: _ready(api) == 1, timeout_s=180)
        assert api.delete(f"/stores/{sid}/deploy?purge=true").status_code == 200
        assert _states(docker_client, sid) == set()
        assert _ready(api) == 1


def test_docker_claim_cut_short_is_finished_by_the_next_control_plane(
    docker_client: docker.DockerClient, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    env = edge_env(**_docker_env("sfr", **FAST_RECOVERY))
    first = start_server(
        data_dir, STOREFLEET_WARM_POOL="1", STOREFLEET_FAULT_AFTER="deploy:claim", **env
    )
    with first.client() as api:
        wait_for(lambda: _ready(api) == 1, timeout_s=180)
        with pytest.raises(httpx.HTTPError):
            api.post("/stores/", json=store_body(api, "Cortada"))
    assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL

    second = start_server(data_dir, **env)  # (no pool: it only finishes what was cut short)
    with second.client() as api:
        (store,) = api.get("/stores/").json()
        sid = store["id"]
        # the member was still paused: it thaws, is routed and recorded
        wait_for(
            lambda: api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running",
            timeout_s=60,
        )
        assert _states(docker_client, sid) == {"running"}
        actions = api.get("/reconciler").json()["recent_actions"]
        assert any(
            a["store_id"] == sid and a["action"] == "finished an interrupted warm-pool claim"
            for a in actions
        )
        hostname = api.get(f"/stores/{sid}").json()["hostname"]
        assert EdgeClient(second, tmp_path).get(hostname).json()["store_id"] == sid
