"""The 3-node Swarm lab (`make swarm-lab`, started by `make test`): three ready nodes with their
labels and the store images, per-store overlay networks that carry traffic between nodes by
DNS round robin (no IPVS here) and keep one store's services out of another's reach."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import REPO

pytestmark = pytest.mark.docker

NODES = {
    "h0": "unix:///var/run/docker.sock",
    "h1": "unix:///var/run/docker-sf-h1.sock",
    "h2": "unix:///var/run/docker-sf-h2.sock",
}
IMAGE = "storefleet/store-backend:0.1.0"
LABEL = "io.storefleet.test"


def docker(*args: str, node: str = "h0", timeout: float = 60) -> str:
    done = subprocess.run(
        ["docker", "-H", NODES[node], *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} on {node}: {done.stderr.strip()}")
    return done.stdout.strip()


def _stack(name: str, services: dict[str, tuple[str, list[str]]], workdir: Path) -> None:
    """A stack of `services` (name -> (node, command)) on one overlay network of its own."""
    doc = {
        "services": {
            service: {
                "image": IMAGE,
                "command": command,
                "healthcheck": {"disable": True},  # the image's own checks its backend
                "networks": ["net"],
                "labels": {LABEL: "lab"},
                "deploy": {
                    "endpoint_mode": "dnsrr",
                    "labels": {LABEL: "lab"},
                    "placement": {"constraints": [f"node.labels.io.storefleet.node == {node}"]},
                },
            }
            for service, (node, command) in services.items()
        },
        "networks": {"net": {"driver": "overlay", "internal": True, "labels": {LABEL: "lab"}}},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    docker("stack", "deploy", "--detach=true", "-c", str(path), name)


def _running_on(name: str, service: str, timeout_s: float = 90) -> tuple[str, str]:
    """(node label, container id) of the service's running task."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in NODES:
            found = docker(
                "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={name}_{service}",
                node=node,
            )  # fmt: skip
            if found:
                return node, found.splitlines()[0]
        time.sleep(0.5)
    raise AssertionError(
        f"{name}_{service} never ran: {docker('service', 'ps', f'{name}_{service}')}"
    )


PROBE = """
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
try:
    address = socket.gethostbyname(name)
except OSError:
    print("unresolved"); sys.exit(0)
s = socket.socket(); s.settimeout(2)
try:
    s.connect((address, port)); print("reached")
except OSError:
    print("unreachable")
"""


def _probe(node: str, container: str, name: str, port: int) -> str:
    return docker("exec", container, "python3", "-c", PROBE, name, str(port), node=node)


def _reaches(node: str, container: str, name: str, port: int, timeout_s: float = 30) -> bool:
    """Whether the container reaches name:port within the timeout (a new task's name spreads
    to the other nodes' resolvers within seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _probe(node, container, name, port) == "reached":
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["docker", "stack", "rm", name], capture_output=True, check=False)


def test_three_ready_nodes_with_their_labels_and_images() -> None:
    seen = {}
    for node_id in docker("node", "ls", "-q").split():
        label, state, availability = docker(
            "node", "inspect", node_id, "--format",
            '{{index .Spec.Labels "io.storefleet.node"}} {{.Status.State}} {{.Spec.Availability}}',
        ).split()  # fmt: skip
        seen[label] = (state, availability)
    assert seen == {n: ("ready", "active") for n in NODES}
    for node in NODES:
        assert docker("image", "inspect", IMAGE, "--format", "{{.Id}}", node=node)
        assert docker("info", "--format", "{{.Swarm.LocalNodeState}}", node=node) == "active"


def test_overlays_cross_nodes_and_keep_stores_apart(stacks: list[str], tmp_path: Path) -> None:
    a, b = (f"lab{uuid.uuid4().hex[:6]}{x}" for x in "ab")
    stacks.extend([a, b])
    serve = ["python3", "-m", "http.server", "5432"]
    idle = ["python3", "-c", "import time; time.sleep(3600)"]
    _stack(a, {"db": ("h1", serve), "backend": ("h2", idle)}, tmp_path)
    _stack(b, {"db": ("h2", serve), "backend": ("h0", idle)}, tmp_path)
    placed = {
        (name, service): _running_on(name, service)
        for name in (a, b)
        for service in ("db", "backend")
    }
    assert {k: v[0] for k, v in placed.items()} == {
        (a, "db"): "h1", (a, "backend"): "h2", (b, "db"): "h2", (b, "backend"): "h0"
    }  # fmt: skip
    node, backend_a = placed[(a, "backend")]
    # A's backend (h2) reaches its own database on h1 by name, across nodes
    assert _reaches(node, backend_a, "db", 5432)
    # and neither resolves nor reaches B's database, though B's runs on its own node
    assert _probe(node, backend_a, f"{b}_db", 5432) == "unresolved"
    b_db_node, b_db = placed[(b, "db")]
    b_address = docker(
        "inspect", b_db, "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        node=b_db_node,
    ).split()[0]  # fmt: skip
    assert _probe(node, backend_a, b_address, 5432) == "unreachable"
    node_b, backend_b = placed[(b, "backend")]
    assert _reaches(node_b, backend_b, "db", 5432)  # B's, from the manager


def test_the_lab_script_is_idempotent() -> None:
    """`make swarm-lab` again on a running lab changes nothing (and says the nodes)."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts/swarm-lab.sh"), "up"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    assert "joins" not in done.stdout and "starting the engine" not in done.stdout
    assert sorted(line.split()[0] for line in done.stdout.splitlines()[-3:]) == list(NODES)


ENGINE_ID = """
import http.client, json, socket
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect("/var/run/docker.sock")
c = C("localhost"); c.request("GET", "/info")
print(json.loads(c.getresponse().read())["Swarm"]["NodeID"])
"""


@pytest.mark.parametrize("node", list(NODES))
def test_each_node_has_its_own_engine_socket_like_a_real_host(node: str) -> None:
    """A container that mounts /var/run/docker.sock talks to its own node's engine (each
    namespaced engine runs in a mount namespace where that path is its socket)."""
    seen = docker(
        "run", "--rm", "--user", "0", "--no-healthcheck",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", IMAGE, "python3", "-c", ENGINE_ID,
        node=node,
    )  # fmt: skip
    assert seen == docker("info", "--format", "{{.Swarm.NodeID}}", node=node)
