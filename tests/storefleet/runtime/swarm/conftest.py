"""The Swarm runtime's tests run on the 3-node lab (`make swarm-lab`, started by `make test`)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import servers_in
from helpers.swarm import NODES, SwarmLab, docker, gone, lab


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[SwarmLab]:
    """Control planes on the lab's swarm; afterwards they are stopped first (a live reconciler
    would make again what is being removed), then everything labelled is removed on every node."""
    # the lab whole: a node's engine socket bound again after the host's engine restarted
    # (another test restarts it), a node killed by an earlier test back
    lab("up")
    label = f"io.storefleet.test={uuid.uuid4().hex[:8]}"
    env = {
        "STOREFLEET_RUNTIME": "swarm",
        "STOREFLEET_EDGE": "none",
        "STOREFLEET_EXTRA_LABELS": label,
        "STOREFLEET_PROJECT_PREFIX": "sft",
        "STOREFLEET_DEPLOY_TIMEOUT_S": "150",
        "STOREFLEET_UNDEPLOY_TIMEOUT_S": "90",
    }
    try:
        with servers_in(tmp_path) as start_server:
            yield SwarmLab(label, env, start_server)
    finally:
        _remove_everything(label)


def _remove_everything(label: str) -> None:
    for kind in ("service", "secret", "network"):
        found = docker("h0", kind, "ls", "-q", "--filter", f"label={label}").split()
        if found:
            subprocess.run(["docker", kind, "rm", *found], capture_output=True, check=False)
    for node in NODES:
        gone(node, label)  # a volume can go once its container has
        volumes = docker(node, "volume", "ls", "-q", "--filter", f"label={label}").split()
        if volumes:
            subprocess.run(
                ["docker", "-H", NODES[node], "volume", "rm", "-f", *volumes],
                capture_output=True,
                check=False,
            )
