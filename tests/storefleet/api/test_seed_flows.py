"""The seed's HTTP contract, end to end: real server, real store processes, real HTTP."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import Server, count_supervisors, pg_database, store_body


@pytest.mark.parametrize("registry", ["sqlite", "postgresql"])
def test_seed_curl_flows(
    start_server: Callable[..., Server], registry: str, tmp_path: Path
) -> None:
    if registry == "postgresql":
        with pg_database() as url:
            _seed_flows(start_server(tmp_path / "var", STOREFLEET_DATABASE_URL=url))
    else:
        _seed_flows(start_server(tmp_path / "var"))


def _seed_flows(server: Server) -> None:
    with server.client() as api:
        created = {}
        for plan, nombre in [
            ("basic", "Tienda Uno"),
            ("premium", "Café Ñandú"),
            ("enterprise", "商店"),
        ]:
            response = api.post("/stores/", json=store_body(api, nombre, plan))
            assert response.status_code == 201, response.text
            body = response.json()
            # the seed's fields, and the store's API key (shown here once)
            assert set(body) == {"message", "store", "deployment", "api_key"}
            store, deployment = body["store"], body["deployment"]
            assert store["nombre"] == nombre and store["plan"] == plan
            assert set(store) >= {
                "id",
                "nombre",
                "country_id",
                "tokens_disponibles",
                "plan",
                "created_at",
                "back_link",
                "db_link",
            }
            assert deployment["status"] == "deployed"
            assert store["back_link"] == deployment["back_link"]
            ports = deployment["ports"]
            assert ports["websocket_port"] == ports["backend_port"] + 1 == ports["db_port"] - 1
            assert httpx.get(deployment["back_link"] + "/docs").status_code == 200
            created[nombre] = store

        all_ports = set()
        for store in created.values():
            status = api.get(f"/stores/{store['id']}/deploy/status").json()
            assert status["status"] == "running"
            assert status["backend_exists"] and status["db_exists"]
            assert status["runtime"] == "process"
            assert status["containers_running"] is True and status["services_running"] == 2
            assert set(status["paths"]) == {"backend_path", "db_path"}
            assert status["last_error"] is None
            all_ports.update(status["ports"].values())
        assert len(all_ports) == 9

        duplicate = api.post("/stores/", json=store_body(api, "CAFE ñandu"))
        assert duplicate.status_code == 409
        assert "already exists" in duplicate.json()["detail"]

        listed = api.get("/stores/").json()
        assert {s["nombre"] for s in listed} == set(created)
        assert all(s["status"] in ("running", "degraded") for s in listed)

        # register only, then deploy, then deploy again
        registered = api.post("/stores/?deploy=false", json=store_body(api, "Sólo Registro"))
        assert registered.status_code == 201 and registered.json()["deployment"] is None
        sid = registered.json()["store"]["id"]
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "not_deployed"
        first = api.post(f"/stores/{sid}/deploy")
        assert first.status_code == 200 and first.json()["status"] == "deployed"
        assert set(first.json()) == {
            "message",
            "store_id",
            "back_link",
            "db_link",
            "ports",
            "status",
            "hostname",  # the seed's fields, and the hostname the edge serves it at (or null)
        }
        second = api.post(f"/stores/{sid}/deploy").json()
        assert second["status"] == "already_deployed"
        assert (second["back_link"], second["ports"]) == (
            first.json()["back_link"],
            first.json()["ports"],
        )

        # PATCH
        patched = api.patch(f"/stores/{sid}", json={"tokens_disponibles": 42, "plan": "premium"})
        assert patched.status_code == 200
        assert patched.json()["tokens_disponibles"] == 42 and patched.json()["plan"] == "premium"
        assert api.patch(f"/stores/{sid}", json={"nombre": "tienda uno"}).status_code == 409

        # undeploy: processes stopped, files removed, links cleared, data kept
        back_link = first.json()["back_link"]
        undeployed = api.delete(f"/stores/{sid}/deploy")
        assert undeployed.status_code == 200
        assert undeployed.json()["status"] == "undeployed"
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "not_deployed" and status["ports"] is None
        assert not status["backend_exists"] and status["db_exists"]
        store = api.get(f"/stores/{sid}").json()
        assert store["back_link"] is None and store["db_link"] is None
        with pytest.raises(httpx.HTTPError):
            httpx.get(back_link + "/health", timeout=1)

        # delete every store: deployed ones are undeployed first
        for store in [*created.values(), {"id": sid}]:
            assert api.delete(f"/stores/{store['id']}").status_code == 204
            assert api.get(f"/stores/{store['id']}").status_code == 404
        assert api.get("/stores/").json() == []
    assert count_supervisors(server.data_dir) == 0


def test_orders_are_isolated_and_pushed_over_the_websocket(server: Server) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with server.client() as api:
        created_a = api.post("/stores/", json=store_body(api, "Tienda A")).json()
        created_b = api.post("/stores/", json=store_body(api, "Tienda B")).json()
    a, b = created_a["deployment"], created_b["deployment"]
    key_a, key_b = {"X-Api-Key": created_a["api_key"]}, {"X-Api-Key": created_b["api_key"]}
    ws_url = f"ws://127.0.0.1:{a['ports']['websocket_port']}/ws"
    for refused in ({}, key_b, {**key_a, "Origin": "http://evil.localhost"}):
        with pytest.raises(InvalidStatus), connect(ws_url, additional_headers=refused):
            pass
    with connect(ws_url, open_timeout=10, additional_headers=key_a) as ws:
        assert json.loads(ws.recv(10))["type"] == "hello"
        order = {"amount": 1999, "currency": "EUR", "reference": "A-1"}
        created = httpx.post(a["back_link"] + "/api/v1/orders", json=order, headers=key_a)
        assert created.status_code == 201
        event = json.loads(ws.recv(10))
        assert event["type"] == "order.created" and event["order"]["id"] == created.json()["id"]
    listed = httpx.get(a["back_link"] + "/api/v1/orders", headers=key_a).json()
    assert [o["reference"] for o in listed] == ["A-1"]
    assert httpx.get(b["back_link"] + "/api/v1/orders", headers=key_b).json() == []
    # another store's key, or none, reads nothing
    assert httpx.get(a["back_link"] + "/api/v1/orders", headers=key_b).status_code == 401
    assert httpx.get(a["back_link"] + "/api/v1/orders").status_code == 401
    assert a["db_link"] != b["db_link"]


def test_twenty_parallel_deploys_of_one_store_give_one_stack(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Paralela")).json()["store"][
            "id"
        ]
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda _i: api.post(f"/stores/{sid}/deploy"), range(20)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    words = [r.json()["status"] for r in responses]
    assert words.count("deployed") == 1 and words.count("already_deployed") == 19
    assert len({r.json()["back_link"] for r in responses}) == 1
    assert count_supervisors(server.data_dir) == 1


def test_thirty_concurrent_creates_get_ninety_distinct_ports(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(STOREFLEET_PORT_RANGE="14000-14119")
    barrier = threading.Barrier(30)

    def create(i: int) -> httpx.Response:
        with server.client() as api:
            body = store_body(api, f"Concurrente {i}")
            barrier.wait()
            return api.post("/stores/", json=body)

    with ThreadPoolExecutor(30) as pool:
        responses = list(pool.map(create, range(30)))
    assert all(r.status_code == 201 for r in responses), [
        r.text for r in responses if r.status_code != 201
    ]
    ports = [p for r in responses for p in r.json()["deployment"]["ports"].values()]
    assert len(set(ports)) == 90
    assert count_supervisors(server.data_dir) == 30


def test_port_held_by_a_foreign_listener_is_skipped(start_server: Callable[..., Server]) -> None:
    foreign = socket.socket()
    foreign.bind(("127.0.0.1", 14500))
    foreign.listen()
    try:
        server = start_server(STOREFLEET_PORT_RANGE="14500-14511")
        with server.client() as api:
            deployment = api.post("/stores/", json=store_body(api, "Vecina")).json()["deployment"]
        assert deployment["ports"]["backend_port"] == 14503
    finally:
        foreign.close()


def test_exhausted_range_answers_503_naming_it(start_server: Callable[..., Server]) -> None:
    server = start_server(STOREFLEET_PORT_RANGE="14600-14602")
    with server.client() as api:
        assert api.post("/stores/", json=store_body(api, "Primera")).status_code == 201
        second = api.post("/stores/", json=store_body(api, "Segunda"))
        assert second.status_code == 503
        body = second.json()
        assert "14600-14602" in body["detail"] and body["code"] == "ports_exhausted"
        assert (
            api.get(f"/stores/{body['store_id']}/deploy/status").json()["status"] == "not_deployed"
        )


def test_backend_that_never_gets_healthy_rolls_back_completely(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(STOREFLEET_DEPLOY_TIMEOUT_S="0.05")
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Lenta")).json()["store"]["id"]
        response = api.post(f"/stores/{sid}/deploy")
        assert response.status_code == 504
        assert "not healthy within" in response.json()["detail"]
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "not_deployed"
        assert status["ports"] is None and not status["backend_exists"]
        assert "not healthy within" in status["last_error"]
        assert api.get(f"/stores/{sid}").json()["back_link"] is None
    assert count_supervisors(server.data_dir) == 0
    assert not (server.data_dir / "stores" / sid / "deploy").exists()


def test_errors_are_clear_json(server: Server) -> None:
    with server.client() as api:
        missing = api.get("/stores/7f0c2a8e-2d0b-4c55-9d8e-000000000000")
        assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
        assert api.get("/stores/not-a-uuid").status_code == 422
        assert api.post("/stores/not-a-uuid/deploy").status_code == 422
        unknown = api.post("/stores/", json={**store_body(api, "X"), "country_id": "nope"})
        assert unknown.status_code == 422 and "not a known country" in unknown.json()["detail"]
        for bad in (
            {"tokens_disponibles": -1},
            {"tokens_disponibles": 10**9 + 1},
            {"tokens_disponibles": "12"},
            {"plan": "gold"},
            {"nombre": ""},
            {"extra": 1},
        ):
            response = api.post("/stores/", json={**store_body(api, "Y"), **bad})
            assert response.status_code == 422, bad
            assert response.json()["detail"].startswith("invalid request:")
        broken = api.post(
            "/stores/", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        huge = api.post(
            "/stores/", content=b"x" * 200_000, headers={"content-type": "application/json"}
        )
        assert huge.status_code == 413
        assert api.get("/stores/").json() == []


def test_store_processes_outlive_the_control_plane_and_are_adopted(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    first = start_server(data_dir)
    with first.client() as api:
        created = api.post("/stores/", json=store_body(api, "Duradera")).json()
        deployment = created["deployment"]
        sid = api.get("/stores/").json()[0]["id"]
    key = {"X-Api-Key": created["api_key"]}
    httpx.post(
        deployment["back_link"] + "/api/v1/orders",
        json={"amount": 5, "currency": "MXN", "reference": "kept"},
        headers=key,
    ).raise_for_status()
    first.stop()
    assert httpx.get(deployment["back_link"] + "/health").status_code == 200
    second = start_server(data_dir, STOREFLEET_PORT_RANGE=first.env["STOREFLEET_PORT_RANGE"])
    with second.client() as api:
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        assert api.post(f"/stores/{sid}/deploy").json()["status"] == "already_deployed"
    assert count_supervisors(data_dir) == 1

    # undeploy keeps the data; a redeploy finds it again; purge removes it
    with second.client() as api:
        api.delete(f"/stores/{sid}/deploy").raise_for_status()
        again = api.post(f"/stores/{sid}/deploy").json()
        orders = httpx.get(again["back_link"] + "/api/v1/orders", headers=key).json()
        assert [o["reference"] for o in orders] == ["kept"]
        api.delete(f"/stores/{sid}/deploy", params={"purge": "true"}).raise_for_status()
        assert api.get(f"/stores/{sid}/deploy/status").json()["db_exists"] is False


def test_the_list_and_a_status_are_shared_yet_show_every_change_at_once(server: Server) -> None:
    """Answers polled together are computed once per window (services/recent.py), but a change
    made through the control plane shows in the very next answer: a new store, a rename, a
    deploy, an undeploy."""
    with server.client() as api:
        first = api.post("/stores/?deploy=false", json=store_body(api, "Ventana 1")).json()
        sid = first["store"]["id"]
        listed = api.get("/stores/")
        assert listed.headers["content-type"] == "application/json"
        assert [s["nombre"] for s in listed.json()] == ["Ventana 1"]
        assert listed.headers["x-total-count"] == "1"
        assert api.get("/stores/").json() == listed.json()  # the same answer, shared

        api.post("/stores/?deploy=false", json=store_body(api, "Ventana 2")).raise_for_status()
        assert [s["nombre"] for s in api.get("/stores/").json()] == ["Ventana 1", "Ventana 2"]
        page = api.get("/stores/", params={"limit": 1, "offset": 1})
        assert [s["nombre"] for s in page.json()] == ["Ventana 2"]
        assert page.headers["x-total-count"] == "2"

        api.patch(f"/stores/{sid}", json={"nombre": "Ventana uno"}).raise_for_status()
        assert api.get("/stores/").json()[0]["nombre"] == "Ventana uno"

        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "not_deployed"
        api.post(f"/stores/{sid}/deploy").raise_for_status()
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        assert api.get("/stores/").json()[0]["status"] == "running"
        api.delete(f"/stores/{sid}/deploy").raise_for_status()
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "not_deployed"
        assert api.get("/stores/").json()[0]["status"] == "not_deployed"
