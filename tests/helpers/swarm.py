"""The Swarm lab's nodes (`make swarm-lab`): their engines, and waiting on them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helpers.servers import REPO, Server
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


@dataclass(frozen=True)
class SwarmLab:
    """Control planes on the lab's swarm, and the label of everything their stores make."""

    label: str
    env: dict[str, str]
    start_server: Callable[..., Server]

    def start(self, data_dir: Path | None = None, /, **extra: str) -> Server:
        """A control plane on the lab's swarm (`extra` settings on top of the lab's)."""
        return self.start_server(data_dir, **{**self.env, **extra})
