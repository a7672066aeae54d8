"""The Swarm runtime on the 3-node lab (`make swarm-lab`, started by `make test`), one fleet
through its whole life: stores placed across nodes, each answering over HTTPS at its hostname
through the edge (a Swarm service on the manager; no store publishes a port), isolated from
each other across nodes, stopped and started, told truthfully when their node dies and back
when it returns; backed up and restored next to their database wherever it runs, moved to
another node with their rows and hostname, a node drained of its stores; and nothing left on
any node once purged. (One fleet for all of it: each Swarm deploy costs seconds.)"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import store_body, wait_for, wait_for_status
from helpers.edge import EdgeClient, edge_env
from helpers.swarm import NODES, SwarmLab, docker, lab, node_of
from storefleet.runtime.docker.stack import STORE_LABEL

pytestmark = pytest.mark.docker


class Stores:
    """The fleet's stores as created, reached by hostname through the edge."""

    def __init__(self, edge: EdgeClient, created: list[dict[str, Any]]) -> None:
        self.edge = edge
        self.created = created
        self.ids = [c["store"]["id"] for c in created]

    def host(self, i: int) -> str:
        return str(self.created[i]["store"]["hostname"])

    def key(self, i: int) -> dict[str, str]:
        return {"X-Api-Key": self.created[i]["api_key"]}

    def add_order(self, i: int, reference: str) -> None:
        order = {"amount": 7, "currency": "EUR", "reference": reference}
        made = self.edge.request(
            "POST", self.host(i), "/api/v1/orders", json=order, headers=self.key(i)
        )
        assert made.status_code == 201, made.text

    def orders(self, i: int) -> list[str]:
        seen = self.edge.get(self.host(i), "/api/v1/orders", headers=self.key(i))
        assert seen.status_code == 200, seen.text
        return [o["reference"] for o in seen.json()]


def status_of(api: httpx.Client, store_id: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/stores/{store_id}/deploy/status").json()
    return found


def volumes_of(node: str, store_id: str) -> list[str]:
    return docker(node, "volume", "ls", "-q", "--filter", f"label={STORE_LABEL}={store_id}").split()


def test_a_fleet_across_three_nodes_from_deploy_to_purge(swarm: SwarmLab, tmp_path: Path) -> None:
    label = swarm.label
    server = swarm.start(**edge_env())
    with server.client() as api:
        with ThreadPoolExecutor(3) as pool:  # deployed together, they still spread
            created = list(
                pool.map(
                    lambda i: api.post("/stores/", json=store_body(api, f"Nodo {i}")).json(),
                    range(3),
                )
            )
        stores = Stores(EdgeClient(server, tmp_path), created)
        ids = stores.ids
        nodes = [node_of(status_of(api, sid)) for sid in ids]
        assert sorted(nodes) == ["h0", "h1", "h2"]  # least loaded first: one store per node
        on = {node: nodes.index(node) for node in nodes}  # a store's index by its node
        listed = {n["name"]: n for n in api.get("/nodes").json()}
        assert {
            name: (n["state"], n["availability"], n["stores"]) for name, n in listed.items()
        } == {name: ("ready", "active", 1) for name in ("h0", "h1", "h2")}
        assert listed["h1"]["reserved_cpus"] == 1.0  # basic: 0.5 CPU per container, 2 containers

        # each store at its hostname over HTTPS, wherever it runs; its rows its own
        https_port = stores.edge.https_port
        for i, body in enumerate(created):
            assert body["deployment"]["back_link"] == f"https://{stores.host(i)}:{https_port}"
            answer = stores.edge.get(stores.host(i))
            assert answer.status_code == 200, answer.text
            assert answer.json()["store_id"] == ids[i]
            stores.add_order(i, f"order-of-{i}")
        for i in range(3):
            assert stores.orders(i) == [f"order-of-{i}"]
        with stores.edge.websocket(stores.host(0), created[0]["api_key"]) as ws:
            assert json.loads(ws.recv(10))["type"] == "hello"

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

        # A's backend can neither resolve nor reach another store's database, across nodes
        a_node = nodes[0]
        a_backend = docker(
            a_node,
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.swarm.service.name=sft-{ids[0]}_backend",
        )
        probe = (
            "import socket, sys\n"
            "try:\n    socket.gethostbyname(sys.argv[1]); print('resolved')\n"
            "except OSError:\n    print('unresolved')\n"
        )
        for name in (f"sft-{ids[1]}_db", f"sft-{ids[2]}_db", "tasks.db"):
            seen = docker(a_node, "exec", a_backend, "python3", "-c", probe, name)
            assert seen == ("resolved" if name == "tasks.db" else "unresolved"), name

        # Swarm secrets: named per store and content, never in the rendered file
        secrets = docker(
            "h0", "secret", "ls", "--filter", f"label={label}", "--format", "{{.Name}}"
        )
        assert len(secrets.split()) == 6 and all(s.startswith("sft-") for s in secrets.split())

        # stop and start keep the data
        s1 = on["h1"]
        assert api.post(f"/stores/{ids[s1]}/stop").status_code == 200
        wait_for_status(api, ids[s1], "stopped", timeout_s=60)
        assert api.post(f"/stores/{ids[s1]}/start").status_code == 200
        wait_for_status(api, ids[s1], "running", timeout_s=120)
        assert stores.orders(s1) == [f"order-of-{s1}"]

        # the failure drill: h2's engine dies; its store says so within 30 s, the others
        # run on; once the engine is back the store runs again with its rows
        s2 = on["h2"]
        killed = time.monotonic()
        lab("kill-node", "2")
        try:
            status = wait_for_status(api, ids[s2], "error", timeout_s=30)
            took = time.monotonic() - killed
            assert status["last_error"].startswith("node h2 is down since "), status
            for i, sid in enumerate(ids):
                if i != s2:
                    assert status_of(api, sid)["status"] == "running"
        finally:
            lab("up")  # the engine back (and the lab whole for the other tests)
        assert took < 30
        wait_for_status(api, ids[s2], "running", timeout_s=120)
        assert stores.orders(s2) == [f"order-of-{s2}"]

        # a backup taken next to the database (on h1), restored in place
        made = api.post(f"/stores/{ids[s1]}/backups")
        assert made.status_code == 201, made.text
        assert made.json()["size_bytes"] > 0 and made.json()["format"] == "pg_dump-custom"
        stores.add_order(s1, "after-backup")
        restored = api.post(f"/stores/{ids[s1]}/backups/{made.json()['id']}/restore")
        assert restored.status_code == 200, restored.text
        assert stores.orders(s1) == [f"order-of-{s1}"]
        stores.add_order(s1, "kept")

        # a move from h1 to h2: the rows and the hostname follow; h1 keeps nothing of it
        moving = ids[s1]
        assert volumes_of("h1", moving)
        moved = api.post(f"/stores/{moving}/move", json={"node": "h2"})
        assert moved.status_code == 200, moved.text
        body = moved.json()
        assert (body["status"], body["from_node"], body["node"], body["notes"]) == (
            "moved",
            "h1",
            "h2",
            [],
        )
        status = status_of(api, moving)
        assert (status["status"], node_of(status)) == ("running", "h2")
        assert api.get(f"/stores/{moving}").json()["back_link"] == (
            f"https://{stores.host(s1)}:{https_port}"
        )
        assert stores.orders(s1) == [f"order-of-{s1}", "kept"]
        assert volumes_of("h1", moving) == [] and volumes_of("h2", moving)
        reasons = [x["reason"] for x in api.get(f"/stores/{moving}/backups").json()]
        assert "move" in reasons
        ops = [o for o in api.get(f"/stores/{moving}/operations").json() if o["kind"] == "move"]
        steps = [s["name"] for s in ops[0]["steps"]] if ops else []
        assert steps[:4] == ["secrets", "quiesce", "backup", "relocate_to_h2"], ops

        # its logs, read through the manager from the node its tasks ran on
        backend_logs = api.get(f"/stores/{moving}/logs", params={"tail": 50})
        assert backend_logs.status_code == 200 and backend_logs.text.strip(), backend_logs.text
        db_logs = api.get(f"/stores/{moving}/logs", params={"service": "db", "tail": 200})
        assert "ready to accept connections" in db_logs.text, db_logs.text[-500:]

        # moving where it is, or to no node: said clearly
        same = api.post(f"/stores/{moving}/move", json={"node": "h2"})
        assert same.json()["status"] == "already_there"
        nowhere = api.post(f"/stores/{moving}/move", json={"node": "h9"})
        assert (nowhere.status_code, nowhere.json()["code"]) == (422, "no_node")
        assert api.post("/nodes/h9/drain").status_code == 404
        assert api.post(f"/stores/{moving}/move", json={"node": "../x"}).status_code == 422

        # drain h2 (the edge runs on the manager, h0): both its stores move away with their
        # rows, and the node takes no more stores
        try:
            op = api.post("/nodes/h2/drain")
            assert op.status_code == 202, op.text
            op_id = op.json()["id"]
            ended = ("succeeded", "failed", "cancelled")
            wait_for(lambda: api.get(f"/operations/{op_id}").json()["state"] in ended, 240)
            done = api.get(f"/operations/{op_id}").json()
            assert done["state"] == "succeeded", done
            for i in (s1, s2):
                assert node_of(status_of(api, ids[i])) != "h2"
            assert stores.orders(s1) == [f"order-of-{s1}", "kept"]
            assert stores.orders(s2) == [f"order-of-{s2}"]
            nodes_now = {n["name"]: n for n in api.get("/nodes").json()}
            assert (nodes_now["h2"]["availability"], nodes_now["h2"]["stores"]) == ("drain", 0)
        finally:  # the lab as it was for the other tests
            node_id = _node_id("h2")
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
        assert stores.edge.get(stores.host(0)).status_code == 404  # unrouted: proxied nowhere
    for kind in ("service", "secret", "network"):
        found = docker("h0", kind, "ls", "--filter", f"label={label}", "--format", "{{.Name}}")
        assert found.split() in ([], ["sft-edge"]), (kind, found)  # the edge outlives stores
    for node in NODES:
        assert docker(node, "volume", "ls", "-q", "--filter", f"label={label}") == "", node

        def no_store_container(node: str = node) -> bool:  # the agent removes them in seconds
            mine = ("--filter", f"label={label}", "--filter", f"label={STORE_LABEL}")
            return docker(node, "ps", "-aq", *mine) == ""

        wait_for(no_store_container)
        assert no_store_container(), node


def _node_id(name: str) -> str:
    label = '{{index .Spec.Labels "io.storefleet.node"}}'
    for line in docker("h0", "node", "ls", "-q").split():
        if docker("h0", "node", "inspect", line, "--format", label) == name:
            return line
    raise AssertionError(f"no node {name}")
