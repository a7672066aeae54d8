"""The Swarm lab's nodes (`make swarm-lab`): their engines, and waiting on them."""

from __future__ import annotations

import subprocess

from helpers.servers import REPO
from helpers.waiting import wait_for

LAB = REPO / "scripts" / "swarm-lab.sh"

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


def node_of(status: dict[str, object]) -> str:
    paths = status["paths"]
    assert isinstance(paths, dict) and str(paths["db_path"]).endswith(f" on node {status['node']}")
    return str(status["node"])


def gone(node: str, label: str) -> bool:
    """Whether the node's agent removed the containers of the removed services (it does
    within seconds); waits up to 30 s."""

    def empty() -> bool:
        return docker(node, "ps", "-aq", "--filter", f"label={label}") == ""

    wait_for(empty)
    return empty()


def lab(*args: str) -> str:
    """`scripts/swarm-lab.sh ARGS` (up, kill-node N, ...): its output."""
    done = subprocess.run(
        ["bash", str(LAB), *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
