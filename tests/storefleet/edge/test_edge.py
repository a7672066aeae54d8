"""The edge end to end on the process runtime: a real control plane, a real Caddy, real store
backends, real TLS (certificates checked against the CA the control plane serves) and real
websockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import (
    EdgeClient,
    Server,
    after_a_reconciler_pass,
    edge_env,
    store_body,
    wait_for,
    wait_for_status,
)


@pytest.fixture
def edged(start_server: Callable[..., Server]) -> Server:
    return start_server(**edge_env(STOREFLEET_RECONCILE_INTERVAL_S="3"))


def _create(api: httpx.Client, nombre: str, *, deploy: bool = True) -> dict[str, Any]:
    response = api.post(f"/stores/?deploy={str(deploy).lower()}", json=store_body(api, nombre))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_two_stores_by_hostname_over_verified_https(edged: Server, tmp_path: Path) -> None:
    with edged.client() as api:
        a = _create(api, "Café Ñandú")
        b = _create(api, "Tienda B")
    edge = EdgeClient(edged, tmp_path)
    host_a, host_b = a["store"]["hostname"], b["store"]["hostname"]
    assert host_a == "cafe-nandu.stores.localhost" and host_b == "tienda-b.stores.localhost"
    # the seed's answer keeps its fields; back_link is the store's HTTPS address
    assert a["deployment"]["back_link"] == f"https://{host_a}:{edge.https_port}"
    assert a["deployment"]["hostname"] == host_a
    assert a["store"]["back_link"] == a["deployment"]["back_link"]
    for created in (a, b):
        health = edge.get(created["store"]["hostname"])
        assert health.status_code == 200, health.text
        assert health.json()["store_id"] == created["store"]["id"]
    key_a, key_b = {"X-Api-Key": a["api_key"]}, {"X-Api-Key": b["api_key"]}
    order = {"amount": 1999, "currency": "EUR", "reference": "A-1"}
    made = edge.request("POST", host_a, "/api/v1/orders", json=order, headers=key_a)
    assert made.status_code == 201, made.text
    listed = edge.get(host_a, "/api/v1/orders", headers=key_a).json()
    assert [o["reference"] for o in listed] == ["A-1"]
    assert edge.get(host_b, "/api/v1/orders", headers=key_b).json() == []
    assert edge.get(host_b, "/api/v1/orders", headers=key_a).status_code == 401
    # plain HTTP is redirected to HTTPS, path and query kept
    moved = edge.plain("/api/v1/orders?x=1", f"{host_a}:{edge.http_port}")
    assert moved.status_code == 308
    assert moved.headers["location"] == f"https://{host_a}:{edge.https_port}/api/v1/orders?x=1"


def test_hostile_host_headers_are_never_proxied(edged: Server, tmp_path: Path) -> None:
    with edged.client() as api:
        a = _create(api, "Tienda Hostil")
    edge = EdgeClient(edged, tmp_path)
    host = a["store"]["hostname"]
    hostile = [
        f"127.0.0.1:{edged.port}",  # the control plane itself
        "localhost",
        "127.0.0.1",
        "[::1]",
        "",  # an empty Host
        "db",  # a database's service name
        "nope.stores.localhost",  # no such store
        f"{host}.evil.example",
        "../s",
        "stores.localhost",
    ]
    for header in hostile:
        through_tls = edge.get(host, "/health", header_host=header)
        assert through_tls.status_code in (400, 404), (header, through_tls.status_code)
        assert "store_id" not in through_tls.text
        plain = edge.plain("/health", header)
        assert plain.status_code in (400, 404), (header, plain.status_code)
    # a hostname nobody holds gets no certificate-less answer either: 404 over TLS
    assert edge.get("nope.stores.localhost").status_code == 404
    # and a name outside the base domain that no store has gets no certificate at all
    assert edge.handshake_refused("evil.example")


def test_websocket_stays_open_while_other_stores_come_and_go(edged: Server, tmp_path: Path) -> None:
    with edged.client() as api:
        a = _create(api, "Tienda Abierta")
        c = _create(api, "Tienda Cerrada")
        edge = EdgeClient(edged, tmp_path)
        host_a = a["store"]["hostname"]
        key_a = {"X-Api-Key": a["api_key"]}
        with edge.websocket(host_a, a["api_key"]) as ws:
            assert json.loads(ws.recv(10))["type"] == "hello"
            # another store is deployed, a third undeployed, while this websocket is open
            b = _create(api, "Tienda Nueva")
            assert edge.get(b["store"]["hostname"]).status_code == 200
            assert api.delete(f"/stores/{c['store']['id']}/deploy").status_code == 200
            assert edge.get(c["store"]["hostname"]).status_code == 404
            order = {"amount": 5, "currency": "EUR", "reference": "during"}
            made = edge.request("POST", host_a, "/api/v1/orders", json=order, headers=key_a)
            assert made.status_code == 201
            event = json.loads(ws.recv(10))
            assert event["type"] == "order.created"
            assert event["order"]["reference"] == "during"


def test_custom_domains(edged: Server, tmp_path: Path) -> None:
    with edged.client() as api:
        a = _create(api, "Tienda Dominio")
        b = _create(api, "Otra Tienda", deploy=False)
        sid = a["store"]["id"]
        edge = EdgeClient(edged, tmp_path)
        assert edge.handshake_refused("shop.example.test")  # not a domain of any store
        patched = api.patch(
            f"/stores/{sid}", json={"domains": ["Shop.Example.TEST.", "bücher.test"]}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["domains"] == ["shop.example.test", "xn--bcher-kva.test"]
        # served at once, with a certificate for that name (checked against the edge's CA)
        served = edge.get("shop.example.test")
        assert served.status_code == 200 and served.json()["store_id"] == sid
        assert edge.get("xn--bcher-kva.test").json()["store_id"] == sid
        assert api.get(f"/stores/{sid}").json()["domains"] == [
            "shop.example.test",
            "xn--bcher-kva.test",
        ]
        # bad domains are 422 with the reason; another store's is 409
        for bad, why in [
            ("*.example.test", "wildcard"),
            ("10.1.2.3", "IP address"),
            ("x.stores.localhost", "hostnames"),
            ("nodot", "two labels"),
            ("a..b.test", "Empty Label"),
            ("-a.test", "hyphen"),
            ("a" * 50 + "." + "b" * 50 + ".test", "longer than 95"),
        ]:
            refused = api.patch(f"/stores/{sid}", json={"domains": [bad]})
            assert refused.status_code == 422, (bad, refused.text)
            assert why in refused.json()["detail"], refused.json()
        taken = api.patch(f"/stores/{b['store']['id']}", json={"domains": ["shop.example.test"]})
        assert taken.status_code == 409 and taken.json()["code"] == "domain_taken"
        # removed: no longer served, and the edge may not get it a certificate any more
        assert api.patch(f"/stores/{sid}", json={"domains": []}).json()["domains"] == []
        assert edge.get("shop.example.test").status_code == 404
        ask = httpx.get(edged.url + "/api/v1/edge/ask", params={"domain": "shop.example.test"})
        assert ask.status_code == 404
        ok = httpx.get(edged.url + "/api/v1/edge/ask", params={"domain": a["store"]["hostname"]})
        assert ok.status_code == 200


def test_a_killed_edge_shows_degraded_then_the_reconciler_brings_it_back(
    edged: Server, tmp_path: Path
) -> None:
    with edged.client() as api:
        a = _create(api, "Tienda Resistente")
        sid, host = a["store"]["id"], a["store"]["hostname"]
        edge = EdgeClient(edged, tmp_path)
        assert edge.get(host).status_code == 200
        pid = int((edged.data_dir / "edge" / "caddy.pid").read_text())
        after_a_reconciler_pass(api)  # the next one is an interval away: time to see it down
        os.kill(pid, signal.SIGKILL)
        seen = wait_for_status(api, sid, "degraded", timeout_s=10)
        assert "edge is not running" in seen["last_error"]
        # the reconciler starts it again with its configuration; the route answers again
        wait_for(lambda: edge.get(host).status_code == 200, timeout_s=20)
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        report = api.get("/reconciler").json()
        assert report["edge_restarts"] >= 1
        assert int((edged.data_dir / "edge" / "caddy.pid").read_text()) != pid


def test_undeploy_removes_the_route_and_the_hostname_stays_the_stores(
    edged: Server, tmp_path: Path
) -> None:
    with edged.client() as api:
        a = _create(api, "Tienda Fija")
        sid, host = a["store"]["id"], a["store"]["hostname"]
        edge = EdgeClient(edged, tmp_path)
        assert api.delete(f"/stores/{sid}/deploy").status_code == 200
        assert edge.get(host).status_code == 404
        assert api.get(f"/stores/{sid}").json()["hostname"] == host
        # a store whose name makes the same slug gets another hostname
        other = _create(api, "Tienda-Fija", deploy=False)
        assert other["store"]["hostname"] == "tienda-fija-2.stores.localhost"
        again = api.post(f"/stores/{sid}/deploy")
        assert again.status_code == 200 and again.json()["hostname"] == host
        assert edge.get(host).json()["store_id"] == sid
        # renaming keeps the hostname
        renamed = api.patch(f"/stores/{sid}", json={"nombre": "Nombre Nuevo"}).json()
        assert renamed["hostname"] == host
        # stopped: still routed, the edge says the store does not answer (502)
        assert api.post(f"/stores/{sid}/stop").status_code == 200
        assert edge.get(host).status_code == 502
        assert api.post(f"/stores/{sid}/start").status_code == 200
        assert edge.get(host).status_code == 200


def test_cli_shows_the_url_and_the_edge(edged: Server, tmp_path: Path) -> None:
    with edged.client() as api:
        a = _create(api, "Tienda Cli")
    env = {**os.environ, "STOREFLEET_URL": edged.url, "STOREFLEET_TOKEN": edged.token}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "storefleet.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = cli("stores", "show", a["store"]["id"])
    assert f"URL: {a['deployment']['back_link']}" in shown
    assert "tienda-cli.stores.localhost" in shown
    state = json.loads(cli("edge", "status", "--json"))
    assert state["enabled"] and state["alive"] and state["routes"] == 1
    assert cli("edge", "ca").startswith("-----BEGIN CERTIFICATE-----")
    cli("stores", "domains", a["store"]["id"], "cli.example.test")
    assert EdgeClient(edged, tmp_path).get("cli.example.test").status_code == 200
