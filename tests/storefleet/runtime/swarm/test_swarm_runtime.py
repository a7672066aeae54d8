"""The Swarm runtime on the 3-node lab (`make swarm-lab`, started by `make test`): stores placed
across nodes, reached at their back_link, isolated from each other across nodes, stopped and
started, told truthfully when their node dies and back when it returns, and leaving nothing on
any node once purged."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import Server, add_order, back_of, orders, store_body, wait_for_status
from helpers.swarm import NODES, docker, gone, lab, node_of

pytestmark = pytest.mark.docker


def test_stores_spread_across_nodes_isolated_and_purged_without_a_trace(
    swarm_server: tuple[Server, str],
) -> None:
    server, label = swarm_server
    with server.client() as api:
        with ThreadPoolExecutor(3) as pool:  # deployed together, they still spread
            created = list(
                pool.map(
                    lambda i: api.post("/stores/", json=store_body(api, f"Nodo {i}")).json(),
                    range(3),
                )
            )
        ids = [c["store"]["id"] for c in created]
        nodes = [node_of(api.get(f"/stores/{sid}/deploy/status").json()) for sid in ids]
        assert sorted(nodes) == ["h0", "h1", "h2"]  # least loaded first: one store per node
        listed = {n["name"]: n for n in api.get("/nodes").json()}
        assert {
            name: (n["state"], n["availability"], n["stores"]) for name, n in listed.items()
        } == {name: ("ready", "active", 1) for name in ("h0", "h1", "h2")}
        assert listed["h1"]["reserved_cpus"] == 1.0  # basic: 0.5 CPU per container, 2 containers
        backs = [back_of(c) for c in created]
        for i, back in enumerate(backs):
            add_order(back, f"order-of-{i}")
        for i, back in enumerate(backs):
            assert orders(back) == [f"order-of-{i}"]

        # A's backend can neither resolve nor reach B's database, across nodes
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

        # stop and start keep the data
        assert api.post(f"/stores/{ids[1]}/stop").status_code == 200
        wait_for_status(api, ids[1], "stopped", timeout_s=60)
        assert api.post(f"/stores/{ids[1]}/start").status_code == 200
        wait_for_status(api, ids[1], "running", timeout_s=120)
        assert orders(backs[1]) == ["order-of-1"]

        # Swarm secrets: named per store and content, never in the rendered file
        secrets = docker(
            "h0", "secret", "ls", "--filter", f"label={label}", "--format", "{{.Name}}"
        )
        assert len(secrets.split()) == 6 and all(s.startswith("sft-") for s in secrets.split())

        # the failure drill: h2's engine dies; its store says so within 30 s, the others
        # run on; once the engine is back the store runs again with its rows
        victim = ids[nodes.index("h2")]
        killed = time.monotonic()
        lab("kill-node", "2")
        try:
            status = wait_for_status(api, victim, "error", timeout_s=30)
            took = time.monotonic() - killed
            assert status["last_error"].startswith("node h2 is down since "), status
            for sid in ids:
                if sid != victim:
                    assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        finally:
            lab("up")  # the engine back (and the lab whole for the other tests)
        assert took < 30
        wait_for_status(api, victim, "running", timeout_s=120)
        assert orders(backs[ids.index(victim)]) == [f"order-of-{ids.index(victim)}"]

        for sid in ids:
            purged = api.delete(
                f"/stores/{sid}/deploy", params={"purge": "true", "final_backup": "false"}
            )
            assert purged.status_code == 200, purged.text
    for kind in ("service", "secret", "network"):
        assert docker("h0", kind, "ls", "-q", "--filter", f"label={label}") == "", kind
    for node in NODES:
        assert gone(node, label)
        assert docker(node, "volume", "ls", "-q", "--filter", f"label={label}") == "", node
