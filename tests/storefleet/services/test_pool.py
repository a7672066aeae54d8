"""The warm pool with real control planes and real store processes (the process runtime):
it fills, signups claim members (never one member twice), a claimed store is the store it
should be, an empty pool means a cold deploy, crashes converge, old members are recycled."""

from __future__ import annotations

import os
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
    cli,
    count_supervisors,
    next_port_range,
    orders,
    pg_database,
    store_body,
    wait_for,
)

FAST = FAST_RECOVERY


def _pool(api: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = api.get("/pool").json()
    return answer


def _ready(api: httpx.Client, plan: str = "basic") -> int:
    return int(_pool(api)["members"].get(plan, {}).get("ready", 0))


def _warm(api: httpx.Client, sid: str) -> bool:
    """Whether the store's deploy claimed a warm-pool member (its operation says so)."""
    ops = api.get(f"/stores/{sid}/operations").json()
    deploy = next(op for op in ops if op["kind"] == "deploy")
    return bool(deploy["params"].get("warm"))


def _member_ids(data_dir: Path, sids: set[str]) -> set[str]:
    """Stack folders under `data_dir` that no store owns (warm-pool members)."""
    stores = data_dir / "stores"
    found = {p.name for p in stores.iterdir() if p.is_dir()} if stores.is_dir() else set()
    return found - sids


def test_pool_fills_and_signups_claim_members_never_twice(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    server = start_server(
        data_dir,
        STOREFLEET_WARM_POOL="10",
        STOREFLEET_POOL_REFILL_PARALLEL="4",
        STOREFLEET_PORT_RANGE=next_port_range(120),  # 20 stores and 10 members again
    )
    with server.client() as api:
        # full, and no fill still finishing (its lock released)
        wait_for(lambda: _ready(api) == 10 and _pool(api)["refilling"] == 0, timeout_s=90)
        view = _pool(api)
        assert view["enabled"] and view["targets"] == {"basic": 10}
        assert view["refilled"] >= 10 and view["claims"] == 0
        # members are invisible as stores, yet each is a paused stack of its own
        assert api.get("/stores/").json() == []
        members = _member_ids(data_dir, set())
        assert len(members) == 10 and count_supervisors(data_dir) == 10
        for member in members:  # not a store: no API reaches it
            assert api.get(f"/stores/{member}").status_code == 404
            assert api.get(f"/stores/{member}/api-key").status_code == 404
            assert api.post(f"/stores/{member}/deploy").status_code == 404

        def signup(i: int) -> dict[str, Any]:
            answer = api.post("/stores/", json=store_body(api, f"Tienda {i}"))
            assert answer.status_code == 201, answer.text
            created: dict[str, Any] = answer.json()
            return created

        with ThreadPoolExecutor(20) as workers:
            created = list(workers.map(signup, range(20)))
        sids = {c["store"]["id"] for c in created}
        assert len(sids) == 20
        warm = {sid for sid in sids if _warm(api, sid)}
        # the pool held 10: no more than 10 were warm (refills may have added one or two)
        assert 10 <= len(warm) <= 12, len(warm)
        assert warm <= members  # a claimed store's id is its member's
        # 20 distinct healthy stacks on distinct ports, each answering with its own identity
        links = {c["deployment"]["back_link"] for c in created}
        assert len(links) == 20
        for c in created:
            assert c["deployment"]["status"] == "deployed"
            assert set(c["deployment"]) >= {"back_link", "db_link", "ports", "status"}
            health = httpx.get(c["deployment"]["back_link"] + "/health").json()
            assert health["store_id"] == c["store"]["id"]
        # each store holds only its own data: a claimed member's database has no order
        for c in created:
            back = back_of(c)
            assert orders(back) == []
            add_order(back, f"order-{c['store']['id'][:8]}")
        for c in created:
            assert orders(back_of(c)) == [f"order-{c['store']['id'][:8]}"]
        keys = {c["api_key"] for c in created}
        assert len(keys) == 20  # every store's secrets are its own
        view = _pool(api)
        assert view["claims"] == len(warm) and view["misses"] == 20 - len(warm)
        # and the pool fills again
        wait_for(lambda: _ready(api) == 10, timeout_s=90)
        metrics = httpx.get(server.url + "/metrics", headers=api.headers).text
        assert 'storefleet_pool_members{plan="basic",state="ready"} 10.0' in metrics
        assert 'storefleet_pool_claims_total{outcome="warm",plan="basic"}' in metrics
    shown = _cli(server, "pool", "status")
    assert shown.splitlines()[:2] == ["plan\ttarget\tready\tfilling\tstale", "basic\t10\t10\t0\t0"]
    assert f"{len(warm)} claimed, {20 - len(warm)} missed" in shown


def test_two_control_planes_share_one_pool_and_never_claim_one_member_twice(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    with pg_database() as url:
        data_dir = tmp_path / "shared"
        env = {
            "STOREFLEET_DATABASE_URL": url,
            "STOREFLEET_PORT_RANGE": next_port_range(90),
            "STOREFLEET_WARM_POOL": "6",
            "STOREFLEET_POOL_REFILL_PARALLEL": "3",
        }
        planes = [start_server(data_dir, **env), start_server(data_dir, **env)]
        with planes[0].client() as api:
            # both planes fill one pool: it holds its target, not twice it
            wait_for(lambda: _ready(api) == 6, timeout_s=90)
            members = _member_ids(data_dir, set())
            assert len(members) == 6 and count_supervisors(data_dir) == 6
        barrier = threading.Barrier(12)

        def signup(i: int) -> dict[str, Any]:
            with planes[i % 2].client() as api:
                body = store_body(api, f"Doble {i}")
                barrier.wait()
                answer = api.post("/stores/", json=body)
                assert answer.status_code == 201, answer.text
                created: dict[str, Any] = answer.json()
                return created

        with ThreadPoolExecutor(12) as workers:
            created = list(workers.map(signup, range(12)))
        sids = [c["store"]["id"] for c in created]
        assert len(set(sids)) == 12
        with planes[1].client() as api:
            warm = [sid for sid in sids if _warm(api, sid)]
        assert set(warm) <= members and len(warm) == len(set(warm)) >= 6
        for c in created:  # one stack per store, answering as that store
            health = httpx.get(c["deployment"]["back_link"] + "/health").json()
            assert health["store_id"] == c["store"]["id"]
        for plane in planes:
            plane.stop()


def _cli(server: Server, *args: str) -> str:
    done = cli(server, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_empty_pool_means_a_cold_deploy_and_other_plans_too(server: Server) -> None:
    assert "no warm pool" in _cli(server, "pool", "status")
    with server.client() as api:
        assert _pool(api)["enabled"] is False
        created = api.post("/stores/", json=store_body(api, "Fria", plan="premium")).json()
        assert created["deployment"]["status"] == "deployed"
        assert not _warm(api, created["store"]["id"])


def test_a_claimed_store_undeploys_redeploys_and_keeps_its_data(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    server = start_server(data_dir, STOREFLEET_WARM_POOL="basic=1,premium=1", **FAST)
    with server.client() as api:
        wait_for(lambda: _ready(api) == 1 and _ready(api, "premium") == 1, timeout_s=60)
        created = api.post("/stores/", json=store_body(api, "Caliente", plan="premium")).json()
        sid, back = created["store"]["id"], back_of(created)
        assert _warm(api, sid)
        assert api.get(f"/stores/{sid}").json()["plan"] == "premium"
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "running"
        add_order(back, "kept")
        assert api.delete(f"/stores/{sid}/deploy").json()["status"] == "undeployed"
        again = api.post(f"/stores/{sid}/deploy").json()
        assert orders(BackLink(again["back_link"], back.key)) == ["kept"]
        # a duplicate name is a 409 and gives no member away
        wait_for(lambda: _ready(api, "premium") == 1, timeout_s=60)
        dup = api.post("/stores/", json=store_body(api, "caliente", plan="premium"))
        assert dup.status_code == 409
        assert _ready(api, "premium") == 1


def test_a_member_that_is_not_healthy_is_destroyed_not_handed_out(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    server = start_server(data_dir, STOREFLEET_WARM_POOL="1", **FAST)
    with server.client() as api:
        wait_for(lambda: _ready(api) == 1, timeout_s=60)
        (member,) = _member_ids(data_dir, set())
        pid = int((data_dir / "stores" / member / "deploy" / "supervisor.pid").read_text())
        os.killpg(pid, signal.SIGKILL)  # the member dies while paused
        wait_for(lambda: member not in _member_ids(data_dir, set()), timeout_s=30)
        wait_for(lambda: _pool(api)["destroyed"] >= 1, timeout_s=30)
        wait_for(lambda: _ready(api) == 1, timeout_s=60)  # and a new one takes its place
        created = api.post("/stores/", json=store_body(api, "Sana")).json()
        assert created["deployment"]["status"] == "deployed"
        assert httpx.get(created["deployment"]["back_link"] + "/health").status_code == 200


CLAIM_STEPS = ["claim", "secrets", "resume", "record"]


@pytest.mark.parametrize("step", CLAIM_STEPS)
def test_killed_during_a_claim_converges(
    start_server: Callable[..., Server], tmp_path: Path, step: str
) -> None:
    data_dir = tmp_path / "var"
    ports = next_port_range()
    first = start_server(
        data_dir,
        STOREFLEET_WARM_POOL="1",
        STOREFLEET_FAULT_AFTER=f"deploy:{step}",
        STOREFLEET_PORT_RANGE=ports,
        **FAST,
    )
    with first.client() as api:
        wait_for(lambda: _ready(api) == 1, timeout_s=60)
        (member,) = _member_ids(data_dir, set())
        with pytest.raises(httpx.HTTPError):
            api.post("/stores/", json=store_body(api, "Corte"))
    assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL

    second = start_server(data_dir, STOREFLEET_PORT_RANGE=ports, **FAST)
    with second.client() as api:
        stores = api.get("/stores/").json()
        assert [s["id"] for s in stores] == [member]  # the member became the store
        sid = member

        def settled() -> bool:
            word = api.get(f"/stores/{sid}/deploy/status").json()["status"]
            return word in ("running", "not_deployed")

        wait_for(settled, timeout_s=30)
        # a member the killed plane had begun to make is destroyed (this plane wants none)
        wait_for(lambda: not _member_ids(data_dir, {sid}) and not _pool(api)["members"])
        status = api.get(f"/stores/{sid}/deploy/status").json()
        # a claim cut short is finished (the member thaws) or rolled back: never half
        if status["status"] == "running":
            assert count_supervisors(data_dir) == 1
            assert httpx.get(status["back_link"] + "/health").json()["store_id"] == sid
        else:
            assert count_supervisors(data_dir) == 0 and status["ports"] is None
        ops = api.get(f"/stores/{sid}/operations").json()
        assert all(op["state"] != "running" for op in ops)
        # and it deploys normally afterwards, with no pool at all
        answer = api.post(f"/stores/{sid}/deploy").json()
        assert answer["status"] in ("deployed", "already_deployed")
        assert count_supervisors(data_dir) == 1


FILL_STEPS = ["lease_ports", "secrets", "apply", "pause", "record"]


@pytest.mark.parametrize("step", FILL_STEPS)
def test_killed_during_a_refill_converges(
    start_server: Callable[..., Server], tmp_path: Path, step: str
) -> None:
    data_dir = tmp_path / "var"
    ports = next_port_range()
    try:
        first = start_server(
            data_dir,
            STOREFLEET_WARM_POOL="1",
            STOREFLEET_FAULT_AFTER=f"pool_fill:{step}",
            STOREFLEET_PORT_RANGE=ports,
            **FAST,
        )
        assert first.proc is not None and first.proc.wait(60) == -signal.SIGKILL
    except RuntimeError:  # the fill began (and killed it) before it answered its first request
        pass
    logs = "".join(p.read_text() for p in data_dir.glob("server-*.log"))
    assert f"fault injection: killing the control plane after pool_fill:{step}" in logs

    second = start_server(data_dir, STOREFLEET_WARM_POOL="1", STOREFLEET_PORT_RANGE=ports, **FAST)
    with second.client() as api:
        # the member cut short is destroyed (it had finished: kept), the pool holds one
        def settled() -> bool:
            members = _pool(api)["members"].get("basic", {})
            return bool(members == {"ready": 1})

        wait_for(settled, timeout_s=60)
        assert _pool(api)["destroyed"] == (0 if step == "record" else 1)
        assert len(_member_ids(data_dir, set())) == 1 and count_supervisors(data_dir) == 1
        assert api.get("/stores/").json() == []


def test_members_of_an_old_default_version_are_recycled(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    ports = next_port_range()
    old = start_server(data_dir, STOREFLEET_WARM_POOL="2", STOREFLEET_PORT_RANGE=ports, **FAST)
    with old.client() as api:
        wait_for(lambda: _ready(api) == 2, timeout_s=60)
        before = _member_ids(data_dir, set())
    old.stop()
    new = start_server(
        data_dir,
        STOREFLEET_WARM_POOL="2",
        STOREFLEET_PORT_RANGE=ports,
        STOREFLEET_PROCESS_DEFAULT_VERSION="0.2.0",
        STOREFLEET_PROCESS_VERSIONS='{"0.1.0": "storefleet_backend"}',
        STOREFLEET_PROCESS_BACKEND_MODULE="storefleet_backend",
        **FAST,
    )
    with new.client() as api:
        wait_for(lambda: _pool(api)["recycled"] == 2, timeout_s=60)
        wait_for(lambda: _ready(api) == 2, timeout_s=60)
        after = _member_ids(data_dir, set())
        assert before.isdisjoint(after) and count_supervisors(data_dir) == 2
        assert _pool(api)["version"] == "0.2.0"
        created = api.post("/stores/", json=store_body(api, "Nueva")).json()
        sid = created["store"]["id"]
        assert _warm(api, sid) and api.get(f"/stores/{sid}").json()["status"] == "running"
        health = httpx.get(created["deployment"]["back_link"] + "/health").json()
        assert health["version"] == "0.2.0"
