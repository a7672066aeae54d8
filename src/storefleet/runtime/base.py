"""The contract every runtime driver implements."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Protocol, runtime_checkable

from storefleet.errors import UnsupportedError


@dataclass(frozen=True)
class Ports:
    backend_port: int
    websocket_port: int
    db_port: int


@dataclass(frozen=True)
class Limits:
    """Resources one container of the store may use (from its plan)."""

    cpus: float
    memory_mb: int


DEFAULT_LIMITS = Limits(cpus=1.0, memory_mb=512)  # a stack given no plan's limits


@dataclass(frozen=True)
class StackSpec:
    """Everything a driver needs to run one store's stack.

    `secrets` holds plaintext secrets (name -> value). A driver writes them only to files of
    mode 0600 inside the store's workspace; never to argv, environment, logs or rendered config.
    `version` is one of the driver's `versions()` ("" means its default version).
    """

    store_id: str
    plan: str
    ports: Ports
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    version: str = ""
    limits: Limits | None = None
    # Routed by the edge: the backend also listens on unix sockets in this folder (`http.sock`,
    # `ws.sock`), which the driver creates for it; a runtime that can (`RoutedWithoutPorts`)
    # then publishes no host port at all.
    socket_dir: Path | None = None
    # The names the edge serves the store at (its hostname, its custom domains): a runtime
    # whose edge reaches backends by name (Swarm) gives them to the backend on the edge's network.
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class Links:
    back_link: str
    db_link: str


class Observed(Enum):
    """What the runtime shows of a stack, right now."""

    ABSENT = "absent"  # nothing of the stack runs or exists
    RUNNING = "running"  # every service runs and answers its health check
    DEGRADED = "degraded"  # part of it runs, or it is restarting after a crash
    STOPPED = "stopped"  # it exists but nothing runs
    ERROR = "error"  # it keeps failing (crash loop)
    PAUSED = "paused"  # every service exists, frozen (`Pausing.pause`): a warm-pool member


@dataclass(frozen=True)
class ServiceState:
    name: str
    state: str
    # the runtime's own health check: None when it has none, or none ran yet (Docker checks
    # every STOREFLEET_DOCKER_HEALTH_INTERVAL; a deploy checks the backend itself)
    healthy: bool | None


@dataclass(frozen=True)
class StackStatus:
    observed: Observed
    backend_exists: bool
    db_exists: bool
    services: tuple[ServiceState, ...] = ()
    detail: str | None = None
    repairable: bool = False

    @property
    def containers_running(self) -> int:
        return sum(1 for s in self.services if s.state == "running")

    @property
    def all_running(self) -> bool:
        """Every service of the stack runs (and there is a stack)."""
        return bool(self.services) and all(s.state == "running" for s in self.services)


@dataclass(frozen=True)
class ServiceUsage:
    """Counters of one service: CPU time used since it started, memory in use now."""

    name: str
    cpu_seconds: float
    memory_bytes: int


@dataclass(frozen=True)
class StackUsage:
    services: tuple[ServiceUsage, ...]
    disk_bytes: int | None  # the store's data (database files or volume); None if unknown

    @property
    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds for s in self.services)

    @property
    def memory_bytes(self) -> int:
        return sum(s.memory_bytes for s in self.services)


@dataclass(frozen=True)
class StackPaths:
    backend_path: str
    db_path: str


class RuntimeDriver(Protocol):
    """One way of running store stacks (OS processes, Docker Compose, ...): the core every
    runtime has. What only some runtimes can do is in the capability protocols below
    (`Backups`, `Logs`, `Usage`, `DataOwnership`, `SecretRefresh`), found once at wiring
    (`Capabilities.of`); a request for a capability the runtime lacks is answered 501.

    Contract, for every implementation:
    - `apply` is idempotent: a stack that already runs as specified is adopted, not duplicated;
      a stack that runs with another version or other limits is replaced by the specified one
      (its data kept), and a stopped stack is started again.
      It returns only once every service of the stack is healthy, and raises
      `storefleet.errors.RuntimeFailure` (or `DeadlineExceeded`) otherwise. It does not clean up
      after itself on failure: the caller calls `remove`.
    - `remove` stops and deletes the stack and its deployment files. It succeeds when nothing is
      there. It keeps the store's data unless `purge` is true.
    - `status` and `fleet_status` are observed from the runtime on every call, never remembered.
      `StackStatus.repairable` says the runtime will not fix the stack by itself (a service is
      missing or stopped for good) while `apply` would.
      `fleet_status` observes every store this driver runs in one pass; stores it does not find
      are absent from the mapping.
    - `stop` stops every service and keeps everything else (files, data; `apply` starts it).
    - No method ever logs, returns or puts on a command line a value from `StackSpec.secrets`.
    """

    name: str
    # Secrets (names) this runtime needs per store; the control plane generates and keeps them.
    secret_names: tuple[str, ...]

    def apply(
        self,
        spec: StackSpec,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Create or adopt the stack and wait until it is healthy, or raise.

        `should_stop` is polled while waiting; when it returns true the driver stops waiting and
        raises `storefleet.errors.OperationCancelledError` (the caller then calls `remove`)."""

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        """Stop and delete the stack; keep its data unless `purge`. Succeeds if nothing is there."""

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        """Stop every service of the stack; keep its files and data. Succeeds if none runs."""

    def versions(self) -> list[str]:
        """The backend versions this runtime can run now (e.g. image tags present)."""

    def default_version(self) -> str:
        """The version a store gets at its first deploy."""

    def status(self, store_id: str) -> StackStatus:
        """Observe one store's stack now, health checks included."""

    def fleet_status(self) -> Mapping[str, StackStatus]:
        """Observe every stack of this driver in one pass."""

    def links(self, spec: StackSpec) -> Links:
        """The store's back_link and db_link (a db_link never holds a secret)."""

    def paths(self, store_id: str) -> StackPaths:
        """Where the store's deployment files and its data live."""

    def workspace(self, store_id: str) -> Path:
        """The store's deployment folder (removed by `remove`)."""

    def close(self) -> None:
        """The control plane stops: end helper processes of this driver (never the stacks)."""


@runtime_checkable
class Backups(Protocol):
    """`backup` writes a consistent copy of the store's database to a file while it runs;
    `restore` replaces the database's content with such a copy (the backend may be stopped
    while it does; the caller then `apply`s the stack)."""

    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        """Write a consistent copy of the store's database to `dest`; return its format."""

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        """Replace the store's database content with the backup at `source`."""


@runtime_checkable
class Logs(Protocol):
    def logs(
        self,
        store_id: str,
        *,
        service: str,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> Iterator[str | None]:
        """Lines a service of the stack wrote (each prefixed with its UTC time), oldest first;
        the last `tail` are read from the end (never the whole log). With `follow`, new lines
        as they come, and None at least every second while none comes: a `next()` never blocks
        longer, so that the caller can notice a client that went away. Closing the iterator
        releases everything it holds (files, Engine API streams, threads). Secrets are not
        redacted here: the caller does it."""

    def services(self) -> tuple[str, ...]:
        """Names of the services whose logs `logs` can read (the first is the default)."""


@runtime_checkable
class Usage(Protocol):
    def usage(self, store_id: str) -> StackUsage | None:
        """Resource counters of the store's running services, read now (CPU seconds are
        cumulative: a rate needs two readings), or None when nothing of the stack runs."""


@runtime_checkable
class DataOwnership(Protocol):
    def data_owners(self) -> set[str]:
        """Ids of the stores whose data (database files, volumes) this driver finds."""


@runtime_checkable
class SecretRefresh(Protocol):
    def refresh_secrets(self, store_id: str, secrets: Mapping[str, str]) -> None:
        """Write new values of the store's secrets (e.g. a rotated `api_key`) into its deployed
        files in place, so that running services read them without a restart. Does nothing for a
        store with no deployment files."""


@runtime_checkable
class PortProbe(Protocol):
    def port_is_free(self, port: int) -> bool:
        """Whether nothing listens on `port` where this runtime publishes its stores' ports
        (the port allocator asks before it leases one)."""


def bind_probe(port: int, host: str = "0.0.0.0") -> bool:  # noqa: S104 (any address)
    """True when nothing on this host listens on `port` (a bind, closed at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


@runtime_checkable
class RoutedWithoutPorts(Protocol):
    def internal_ports(self) -> Ports:
        """A runtime whose routed stacks (`StackSpec.socket_dir` set) publish no host port: the
        ports its services listen on inside the stack, shown as a routed store's ports (the
        store leases none; the spec of a routed store carries these)."""


@runtime_checkable
class Pausing(Protocol):
    """Freezing a healthy stack and thawing it (the warm pool keeps its members paused).

    - `pause` freezes every service of a running stack where it stands (no process is stopped
      or restarted, no file changes); it succeeds when the stack is already paused. A paused
      stack is observed as `Observed.PAUSED` and uses no CPU.
    - `resume` thaws it and returns only once the backend answers its health check (which
      reaches the database) at the spec's address, or raises `RuntimeFailure` /
      `DeadlineExceeded`; it does not clean up on failure. `stop` and `remove` work on a
      paused stack as on a running one."""

    def pause(self, store_id: str) -> None:
        """Freeze every service of the running stack."""

    def resume(self, spec: StackSpec, *, timeout_s: float) -> None:
        """Thaw the stack and wait until its backend is healthy, or raise."""


@runtime_checkable
class OrphanProcesses(Protocol):
    def end_orphan_processes(self) -> list[tuple[str, str]]:
        """End this runtime's processes whose store folder is gone; (store id, what) each."""


@dataclass(frozen=True)
class NodeInfo:
    """One host of a runtime that spans several (Swarm)."""

    id: str
    name: str  # the name stores are pinned by (its `io.storefleet.node` label)
    state: str  # ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    address: str
    manager: bool
    since: str  # when its state last changed, UTC


@runtime_checkable
class Nodes(Protocol):
    """A runtime whose stores run on several hosts: each store is placed on one."""

    def nodes(self) -> Sequence[NodeInfo]:
        """The hosts, observed now."""

    def placed_on(self, store_id: str) -> str | None:
        """The name of the node the store is pinned to (None: not placed)."""


@runtime_checkable
class Relocation(Protocol):
    """A runtime whose stores can move from node to node (their data is local to a node).

    A move is: `quiesce` (the backend stops, the database runs: no more writes), a backup,
    `relocate` (the services leave the old node, the data stays there; the store is pinned to
    the new node, so the next `apply` runs it there on empty data), a restore there, and only
    once the store is healthy there `drop_data` on the old node. `pin` puts a store back
    (undoing `relocate`). Each raises `RuntimeFailure` / `PermanentFailure`."""

    def quiesce(self, store_id: str, *, timeout_s: float) -> None:
        """Stop the store's backend; its database runs on."""

    def relocate(self, store_id: str, node: str, *, timeout_s: float) -> str:
        """Remove the store's services (keeping its data where it is) and pin it to `node`;
        return the node it left."""

    def pin(self, store_id: str, node: str) -> None:
        """Pin the store to `node` (nothing runs or moves now)."""

    def drop_data(self, store_id: str, node: str, *, timeout_s: float) -> None:
        """Remove the store's data on `node`, which must not be the node it is pinned to."""

    def choose_node(self, store_id: str) -> str:
        """The least loaded usable node other than the store's own (for a drain)."""

    def set_availability(self, node: str, availability: str) -> None:
        """`active`, `pause` (no new store, none moved away) or `drain`."""


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do beyond the core, found once (at wiring)."""

    runtime: str
    backups: Backups | None
    logs: Logs | None
    usage: Usage | None
    data: DataOwnership | None
    refresh: SecretRefresh | None
    orphans: OrphanProcesses | None = None
    ports: PortProbe | None = None
    unpublished: RoutedWithoutPorts | None = None
    pausing: Pausing | None = None
    nodes: Nodes | None = None
    relocation: Relocation | None = None

    @classmethod
    def of(cls, driver: RuntimeDriver) -> Capabilities:
        return cls(
            runtime=driver.name,
            backups=driver if isinstance(driver, Backups) else None,
            logs=driver if isinstance(driver, Logs) else None,
            usage=driver if isinstance(driver, Usage) else None,
            data=driver if isinstance(driver, DataOwnership) else None,
            refresh=driver if isinstance(driver, SecretRefresh) else None,
            orphans=driver if isinstance(driver, OrphanProcesses) else None,
            ports=driver if isinstance(driver, PortProbe) else None,
            unpublished=driver if isinstance(driver, RoutedWithoutPorts) else None,
            pausing=driver if isinstance(driver, Pausing) else None,
            nodes=driver if isinstance(driver, Nodes) else None,
            relocation=driver if isinstance(driver, Relocation) else None,
        )

    def port_probe(self) -> Callable[[int], bool]:
        """How the port allocator checks a port: where the runtime runs its stores, or (for a
        runtime that cannot say) on this host."""
        return self.ports.port_is_free if self.ports is not None else bind_probe

    def _lacks(self, what: str, methods: str) -> UnsupportedError:
        return UnsupportedError(f"the {self.runtime} runtime cannot {what} (it has no {methods})")

    def need_backups(self) -> Backups:
        if self.backups is None:
            raise self._lacks("back up or restore a store", "backup/restore")
        return self.backups

    def need_logs(self) -> Logs:
        if self.logs is None:
            raise self._lacks("read a store's logs", "logs")
        return self.logs

    def need_usage(self) -> Usage:
        if self.usage is None:
            raise self._lacks("measure a store's resource usage", "usage")
        return self.usage

    def need_nodes(self) -> Nodes:
        if self.nodes is None:
            raise self._lacks("list nodes", "nodes: it runs every store on one host")
        return self.nodes

    def need_relocation(self) -> Relocation:
        if self.relocation is None:
            raise self._lacks("move a store to another node", "nodes: it runs on one host")
        return self.relocation

    def need_refresh(self) -> SecretRefresh:
        if self.refresh is None:
            raise self._lacks("give a running store new secrets", "refresh_secrets")
        return self.refresh


API_KEY = "api_key"  # every store's backend gets its API key as this secret


def write_secret_file(path: Path, value: str, uid: int | None = None) -> None:
    """Write a secret file of mode 0600 in place (a file bind-mounted into a container keeps its
    inode, so the container sees the new value), owned by `uid` when given and we are root."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, uid)
