"""The Swarm runtime on the 3-node lab (`make swarm-lab`, started by `make test`): stores placed
across nodes, reached at their back_link, isolated from each other across nodes, stopped and
started, and leaving nothing on any node once purged."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import Server, add_order, back_of, orders, store_body, wait_for, wait_for_status

pytestmark = pytest.mark.docker

NODES = {
    "h0": "unix:///var/run/docker.sock",
    "h1": "unix:///var/run/docker-sf-h1.sock",
    "h2": "unix:///var/run/docker-sf-h2.sock",
}


def docker(node: str, *args: str) -> str:
    done = subprocess.run(
        ["docker", "-H", NODES[node], *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _node_of(status: dict[str, object]) -> str:
    paths = status["paths"]
    assert isinstance(paths, dict) and str(paths["db_path"]).endswith(f" on node {status['node']}")
    return str(status["node"])


def _gone(node: str, label: str) -> bool:
    """Whether the node's agent removed the containers of the removed services (it does
    within seconds); waits up to 30 s."""

    def empty() -> bool:
        return docker(node, "ps", "-aq", "--filter", f"label={label}") == ""

    wait_for(empty)
    return empty()


@pytest.fixture
def swarm_server(start_server: Callable[..., Server]) -> Iterator[tuple[Server, str]]:
    """A control plane on the lab's swarm; everything its stores left is removed afterwards."""
    label = f"io.storefleet.test={uuid.uuid4().hex[:8]}"
    server = start_server(
        STOREFLEET_RUNTIME="swarm",
        STOREFLEET_EDGE="none",
        STOREFLEET_EXTRA_LABELS=label,
        STOREFLEET_PROJECT_PREFIX="sft",
        STOREFLEET_DEPLOY_TIMEOUT_S="150",
        STOREFLEET_UNDEPLOY_TIMEOUT_S="90",
    )
    yield server, label
    for kind in ("service", "secret", "network"):
        found = docker("h0", kind, "ls", "-q", "--filter", f"label={label}").split()
        if found:
            subprocess.run(["docker", kind, "rm", *found], capture_output=True, check=False)
    for node in NODES:
        _gone(node, label)  # a volume can go once its container has
        volumes = docker(node, "volume", "ls", "-q", "--filter", f"label={label}").split()
        if volumes:
            subprocess.run(
                ["docker", "-H", NODES[node], "volume", "rm", "-f", *volumes],
                capture_output=True,
                check=False,
            )


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
        nodes = [_node_of(api.get(f"/stores/{sid}/deploy/status").json()) for sid in ids]
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

        for sid in ids:
            gone = api.delete(
                f"/stores/{sid}/deploy", params={"purge": "true", "final_backup": "false"}
            )
            assert gone.status_code == 200, gone.text
    for kind in ("service", "secret", "network"):
        assert docker("h0", kind, "ls", "-q", "--filter", f"label={label}") == "", kind
    for node in NODES:
        assert docker(node, "volume", "ls", "-q", "--filter", f"label={label}") == "", node
        assert _gone(node, label)
