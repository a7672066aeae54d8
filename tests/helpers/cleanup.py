"""What tests leave behind, found and removed: store processes, Docker objects."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from helpers.servers import Server

TEST_LABEL = f"io.storefleet.test={os.getpid()}"


def count_supervisors(data_dir: Path) -> int:
    """How many store supervisor processes run for stores under `data_dir`."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "storefleet.runtime.process.supervisor" in cmdline and str(data_dir) in cmdline:
            count += 1
    return count


def kill_store_processes(data_dir: Path) -> None:
    """SIGKILL every supervisor process group started under `data_dir` (test cleanup)."""
    for pid_file in data_dir.glob("stores/*/deploy/supervisor.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if str(pid_file.parent) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                errors="replace"
            ):
                os.killpg(pid, signal.SIGKILL)
    for state_file in data_dir.glob("stores/*/deploy/state.json"):
        with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
            child = json.loads(state_file.read_text())["child_pid"]
            if child and "storefleet_backend" in Path(f"/proc/{child}/cmdline").read_text():
                os.kill(child, signal.SIGKILL)


def kill_edge_process(data_dir: Path) -> None:
    """SIGKILL the edge (`caddy`) a control plane under `data_dir` started (test cleanup)."""
    with contextlib.suppress(ValueError, OSError):
        pid = int((data_dir / "edge" / "caddy.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if "caddy" in cmdline and str(data_dir) in cmdline:
            os.kill(pid, signal.SIGKILL)


def remove_docker_objects(label: str = TEST_LABEL) -> None:
    """Remove every container, network and volume carrying `label` (test cleanup)."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(version="auto")
    except DockerException:
        return  # no engine here: nothing of ours in it
    kinds: tuple[tuple[Callable[[], list[Any]], dict[str, bool]], ...] = (
        (lambda: client.containers.list(all=True, filters={"label": label}), {"force": True}),
        (lambda: client.networks.list(filters={"label": label}), {}),
        (lambda: client.volumes.list(filters={"label": label}), {"force": True}),
    )
    for listing, options in kinds:
        for item in listing():
            # one object that went meanwhile (or resists) must not keep the others
            with contextlib.suppress(DockerException):
                item.remove(**options)
    client.close()


@contextlib.contextmanager
def servers_in(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real control-plane servers; on leaving, they are stopped and every store process
    and edge they made is killed."""
    servers: list[Server] = []

    def start(data_dir: Path | None = None, args: Sequence[str] = (), **env: str) -> Server:
        server = Server(data_dir or tmp_path / "var", env, args).start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            kill_store_processes(server.data_dir)
            kill_edge_process(server.data_dir)
