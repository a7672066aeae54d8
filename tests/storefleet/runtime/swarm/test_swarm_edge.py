"""The edge on the Swarm lab: a Swarm service on the manager, on an overlay every routed backend
joins under its hostnames; six stores spread over the three nodes, each answering over HTTPS
by its hostname wherever it runs, none publishing a port, and still at its hostname once moved
to another node."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from helpers import Server, store_body
from helpers.edge import EdgeClient, edge_env
from helpers.swarm import NODES, docker, node_of

pytestmark = pytest.mark.docker


def test_six_stores_on_three_nodes_answer_over_https_by_hostname(
    start_server: Any, swarm_env: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, label = swarm_env
    server: Server = start_server(**{**env, **edge_env()})
    with server.client() as api:
        with ThreadPoolExecutor(3) as pool:
            created = list(
                pool.map(
                    lambda i: api.post("/stores/", json=store_body(api, f"Borde {i}")).json(),
                    range(6),
                )
            )
        edge = EdgeClient(server, tmp_path)
        ids = [c["store"]["id"] for c in created]
        nodes = [node_of(api.get(f"/stores/{sid}/deploy/status").json()) for sid in ids]
        assert Counter(nodes) == {"h0": 2, "h1": 2, "h2": 2}
        for body in created:
            host = body["store"]["hostname"]
            assert body["deployment"]["back_link"] == f"https://{host}:{edge.https_port}"
            answer = edge.get(host)
            assert answer.status_code == 200, answer.text
            assert answer.json()["store_id"] == body["store"]["id"]

        # no store publishes a port on any node: only the edge does, on the manager
        names = docker("h0", "service", "ls", "--filter", f"label={label}", "--format", "{{.Name}}")
        ports = "{{json .Endpoint.Ports}}"
        published = {
            name: found
            for name in names.split()
            if (found := docker("h0", "service", "inspect", name, "--format", ports))
            not in ("null", "[]")
        }
        assert list(published) == ["sft-edge"], published

        # orders stay in their own store, across nodes; websockets through the edge too
        for i, body in enumerate(created):
            key = {"X-Api-Key": body["api_key"]}
            order = {"amount": 7, "currency": "EUR", "reference": f"borde-{i}"}
            host = body["store"]["hostname"]
            made = edge.request("POST", host, "/api/v1/orders", json=order, headers=key)
            assert made.status_code == 201, made.text
        for i, body in enumerate(created):
            key = {"X-Api-Key": body["api_key"]}
            seen = edge.get(body["store"]["hostname"], "/api/v1/orders", headers=key).json()
            assert [o["reference"] for o in seen] == [f"borde-{i}"]
        with edge.websocket(created[0]["store"]["hostname"], created[0]["api_key"]) as ws:
            assert json.loads(ws.recv(10))["type"] == "hello"

        # moved to another node, the store keeps its hostname and its rows
        moving = created[1]
        here = nodes[1]
        there = next(n for n in sorted(NODES) if n != here)
        moved = api.post(f"/stores/{ids[1]}/move", json={"node": there})
        assert moved.status_code == 200, moved.text
        host = moving["store"]["hostname"]
        key = {"X-Api-Key": moving["api_key"]}
        assert api.get(f"/stores/{ids[1]}").json()["back_link"] == (
            f"https://{host}:{edge.https_port}"
        )
        seen = edge.get(host, "/api/v1/orders", headers=key).json()
        assert [o["reference"] for o in seen] == ["borde-1"]

        for sid in ids:
            purged = api.delete(
                f"/stores/{sid}/deploy", params={"purge": "true", "final_backup": "false"}
            )
            assert purged.status_code == 200, purged.text
        assert edge.get(host).status_code == 404  # unrouted: proxied nowhere
