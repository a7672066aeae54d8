"""What the Docker runtime shows of a store: containers and health by label (one call for one
store, one for the fleet), crash loops, resource usage and data volumes."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from docker.errors import DockerException

from storefleet.errors import (
    RuntimeFailure,
)
from storefleet.runtime.base import (
    Observed,
    ServiceState,
    ServiceUsage,
    StackStatus,
    StackUsage,
)
from storefleet.runtime.docker.stack import (
    DISK_FRESH_S,
    EXPECTED_SERVICES,
    FLEET_LABEL,
    SERVICE_LABEL,
    STORE_LABEL,
    DockerStack,
    health_of,
)
from storefleet.runtime.docker.template import SOCKET_MOUNT
from storefleet.runtime.health import answers


class DockerObserver(DockerStack):
    def _judge(
        self, store_id: str, containers: Sequence[Mapping[str, Any]], has_volume: bool
    ) -> StackStatus:
        checked = self._checked_now(containers)
        services = tuple(
            sorted(
                (
                    ServiceState(
                        name=str((c.get("Labels") or {}).get(SERVICE_LABEL, "?")),
                        state=str(c.get("State", "unknown")),
                        healthy=checked if _in_doubt(c) else health_of(c),
                    )
                    for c in containers
                ),
                key=lambda s: s.name,
            )
        )
        names = {s.name for s in services}
        running = [s for s in services if s.state == "running"]
        backend_exists = "backend" in names or self.workspace(store_id).is_dir()
        if not services:
            observed = Observed.STOPPED if self.workspace(store_id).is_dir() else Observed.ABSENT
        elif (
            all(n in names for n in EXPECTED_SERVICES)
            and len(running) == len(services)
            and all(s.healthy is not False for s in services)
        ):
            observed = Observed.RUNNING
        elif all(n in names for n in EXPECTED_SERVICES) and all(
            s.state == "paused" for s in services
        ):
            observed = Observed.PAUSED
        elif running or any(s.state == "restarting" for s in services):
            observed = Observed.DEGRADED
        else:
            observed = Observed.STOPPED
        detail = None
        crashing = self._crash_loop(containers)
        if crashing is not None:
            observed, detail = Observed.ERROR, crashing
        elif observed is not Observed.RUNNING and services:
            detail = ", ".join(
                f"{s.name}: {s.state}{'' if s.healthy is not False else ' (unhealthy)'}"
                for s in services
            )
        gone = {"exited", "dead", "created"}
        repairable = self.workspace(store_id).is_dir() and (
            any(n not in names for n in EXPECTED_SERVICES) or any(s.state in gone for s in services)
        )
        return StackStatus(observed, backend_exists, has_volume, services, detail, repairable)

    def _checked_now(self, containers: Sequence[Mapping[str, Any]]) -> bool | None:
        """The health of containers whose Docker health is in doubt: not checked since they
        started (the first check is an interval away after each start: a crashed backend
        started again, a new stack), or said unhealthy (the engine says so of a container it
        paused, until its next check after the unpause: a claimed warm-pool member): whether
        the backend's /health, which reaches the database, answers now. One GET, only while
        some container of the stack is in doubt; None when none is."""
        if not any(_in_doubt(c) for c in containers):
            return None
        backend = next(
            (c for c in containers if (c.get("Labels") or {}).get(SERVICE_LABEL) == "backend"),
            None,
        )
        if backend is None or backend.get("State") != "running":
            return False
        for port in backend.get("Ports") or []:
            if port.get("PrivatePort") == self.internal_ports().backend_port and port.get(
                "PublicPort"
            ):
                ip = str(port.get("IP") or "127.0.0.1")
                host = "127.0.0.1" if ip in ("0.0.0.0", "::", "") else ip  # noqa: S104
                return answers(f"http://{host}:{port['PublicPort']}/health")
        for mount in backend.get("Mounts") or []:
            if mount.get("Destination") == SOCKET_MOUNT and mount.get("Source"):
                return answers("http://store/health", uds=Path(mount["Source"]) / "http.sock")
        return False

    def data_owners(self) -> set[str]:
        return self._volumes(f"{FLEET_LABEL}={self.fleet_id}") - {""}

    def _crash_loop(self, containers: Sequence[Mapping[str, Any]]) -> str | None:
        """A service that keeps crashing (Docker restarts it with its own growing back-off):
        its reason. Only restarting containers are inspected, so this stays cheap."""
        for summary in containers:
            if summary.get("State") != "restarting":
                continue
            try:
                attrs = self.client.api.inspect_container(summary["Id"])
            except (DockerException, OSError):
                continue
            restarts = int(attrs.get("RestartCount") or 0)
            if restarts >= self.crashloop_error_after:
                service = (summary.get("Labels") or {}).get(SERVICE_LABEL, "?")
                code = (attrs.get("State") or {}).get("ExitCode")
                return (
                    f"{service} keeps crashing: exited with code {code}, restarted {restarts} "
                    "times (Docker retries with a growing back-off)"
                )
        return None

    def status(self, store_id: str) -> StackStatus:
        label = f"{STORE_LABEL}={store_id}"
        return self._judge(store_id, self._containers(label), store_id in self._volumes(label))

    def usage(self, store_id: str) -> StackUsage | None:
        """From the Engine API: one one-shot stats call per running container, and the size of
        the database directory measured inside the db container (`du`)."""
        running = [
            c for c in self._containers(f"{STORE_LABEL}={store_id}") if c.get("State") == "running"
        ]
        services = []
        disk: int | None = None
        try:
            for summary in running:
                name = str((summary.get("Labels") or {}).get(SERVICE_LABEL, "?"))
                stats = self.client.api.stats(summary["Id"], stream=False, one_shot=True)
                cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get(
                    "total_usage"
                ) or 0
                memory = stats.get("memory_stats") or {}
                detail = memory.get("stats") or {}
                # what the kernel could not reclaim at once: usage minus inactive page cache
                cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
                used = max(0, int(memory.get("usage") or 0) - int(cache or 0))
                services.append(ServiceUsage(name, cpu_ns / 1e9, used))
                if name == "db":
                    disk = self._db_disk(summary["Id"])
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot read the usage of store {store_id}: {exc}") from exc
        if not services:
            return None
        return StackUsage(tuple(sorted(services, key=lambda s: s.name)), disk)

    def _db_disk(self, container_id: str) -> int | None:
        """`du` of the database directory; cached for DISK_FRESH_S (a `du` is an exec, ~60 ms,
        and the size of a database moves slowly)."""
        cached = self._disk.get(container_id)
        if cached is not None and time.monotonic() - cached[0] < DISK_FRESH_S:
            return cached[1]
        size = self._measure_disk(container_id)
        self._disk[container_id] = (time.monotonic(), size)
        return size

    def _measure_disk(self, container_id: str) -> int | None:
        result = self.client.api.exec_create(
            container_id, ["du", "-s", "-B1", self._pgdata()], user="postgres"
        )
        output = self.client.api.exec_start(result["Id"])
        try:
            return int(output.split()[0])
        except (ValueError, IndexError):
            return None

    def fleet_status(self) -> Mapping[str, StackStatus]:
        label = f"{FLEET_LABEL}={self.fleet_id}"
        by_store: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for container in self._containers(label):
            store_id = (container.get("Labels") or {}).get(STORE_LABEL)
            if store_id:
                by_store[str(store_id)].append(container)
        with_volume = self._volumes(label)
        stores = set(by_store)
        if self.stores_dir.is_dir():
            stores.update(e.name for e in self.stores_dir.iterdir() if (e / "deploy").is_dir())
        return {sid: self._judge(sid, by_store.get(sid, []), sid in with_volume) for sid in stores}


def _in_doubt(summary: Mapping[str, Any]) -> bool:
    """Docker's health of the container is in doubt: no check since it started, or unhealthy
    (which our own check of the backend confirms or not)."""
    text = str(summary.get("Status", ""))
    return "(health: starting)" in text or "(unhealthy)" in text
