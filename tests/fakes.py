"""A fake runtime driver for fast unit tests of the services (integration tests use real ones)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from storefleet.errors import RuntimeFailure
from storefleet.runtime.base import (
    Links,
    NodeInfo,
    Observed,
    ServiceState,
    ServiceUsage,
    StackPaths,
    StackSpec,
    StackStatus,
    StackUsage,
)


class FakeDriver:
    """Keeps stacks in memory. `fail_apply` makes the next applies fail after creating a stack."""

    name = "fake"
    secret_names: tuple[str, ...] = ("db_password", "api_key")

    def __init__(self, apply_delay_s: float = 0.0) -> None:
        self.stacks: dict[str, StackSpec] = {}
        self.stopped: set[str] = set()
        self.rows: dict[str, list[str]] = {}  # the stores' "databases"
        self.log_lines: dict[str, list[str]] = {}
        self.refreshed: dict[str, list[dict[str, str]]] = {}
        self.fail_when: Callable[[StackSpec], bool] = lambda _spec: False  # such applies fail
        self.data: set[str] = set()
        self.applies = 0
        self.removes = 0
        self.fail_apply = False
        self.apply_delay_s = apply_delay_s
        self.concurrent = 0
        self.max_concurrent_per_store = 0
        self._lock = threading.Lock()
        self._busy: dict[str, int] = {}
        self.readings: dict[str, int] = {}

    def apply(
        self,
        spec: StackSpec,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        with self._lock:
            self.applies += 1
            self._busy[spec.store_id] = self._busy.get(spec.store_id, 0) + 1
            self.max_concurrent_per_store = max(
                self.max_concurrent_per_store, self._busy[spec.store_id]
            )
        try:
            time.sleep(self.apply_delay_s)
            with self._lock:
                self.stacks[spec.store_id] = spec
                self.stopped.discard(spec.store_id)
                self.data.add(spec.store_id)
            broken = spec.version.endswith("-broken") or self.fail_when(spec)
            if self.fail_apply or broken:
                raise RuntimeFailure("backend never became healthy (fake)")
        finally:
            with self._lock:
                self._busy[spec.store_id] -= 1

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        with self._lock:
            self.removes += 1
            self.stacks.pop(store_id, None)
            self.stopped.discard(store_id)
            if purge:
                self.data.discard(store_id)

    def _status(self, store_id: str) -> StackStatus:
        if store_id in self.stopped:
            return StackStatus(
                Observed.STOPPED, True, True, (ServiceState("backend", "exited", False),)
            )
        if store_id in self.stacks:
            return StackStatus(
                Observed.RUNNING, True, True, (ServiceState("backend", "running", True),)
            )
        return StackStatus(Observed.ABSENT, False, store_id in self.data)

    def status(self, store_id: str) -> StackStatus:
        return self._status(store_id)

    def fleet_status(self) -> Mapping[str, StackStatus]:
        return {sid: self._status(sid) for sid in list(self.stacks)}

    def links(self, spec: StackSpec) -> Links:
        return Links(f"http://127.0.0.1:{spec.ports.backend_port}", f"fake://{spec.store_id}")

    def usage(self, store_id: str) -> StackUsage | None:
        """Counters that grow by 0.1 CPU second per reading (a known rate for the tests)."""
        with self._lock:
            if store_id not in self.stacks:
                return None
            self.readings[store_id] = self.readings.get(store_id, 0) + 1
            cpu = self.readings[store_id] * 0.1
        return StackUsage((ServiceUsage("backend", cpu, 50 * 2**20),), 4096)

    def close(self) -> None:
        pass

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        with self._lock:
            if store_id in self.stacks:
                self.stopped.add(store_id)

    def versions(self) -> list[str]:
        return ["0.1.0", "0.2.0", "9.9.9-broken"]

    def default_version(self) -> str:
        return "0.1.0"

    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        dest.write_text(json.dumps(self.rows.get(store_id, [])))
        return "fake-json"

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        self.rows[store_id] = json.loads(source.read_text())

    def services(self) -> tuple[str, ...]:
        return ("backend",)

    def logs(
        self,
        store_id: str,
        *,
        service: str,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> Iterator[str | None]:
        lines = self.log_lines.get(store_id, [])
        yield from (lines[-tail:] if tail else []) if tail is not None else lines

    def refresh_secrets(self, store_id: str, secrets: Mapping[str, str]) -> None:
        self.refreshed.setdefault(store_id, []).append(dict(secrets))

    def data_owners(self) -> set[str]:
        return set(self.data)

    def paths(self, store_id: str) -> StackPaths:
        return StackPaths(f"/fake/{store_id}", f"/fake/{store_id}/data")

    def workspace(self, store_id: str) -> Path:
        return Path("/fake") / store_id


def fake_of(services: Any) -> FakeDriver:
    """The fake driver of services built on one (for tests that steer or inspect it)."""
    driver = services.driver
    assert isinstance(driver, FakeDriver)
    return driver


class FakeNodesDriver(FakeDriver):
    """The fake on two nodes, `h0` and `h1`: each store is pinned to one, its rows kept per
    node (a move copies them by backup and restore). `fail_restore` makes restores fail."""

    NODES = ("h0", "h1")

    def __init__(self) -> None:
        super().__init__()
        self.pinned: dict[str, str] = {}
        self.rows_on: dict[tuple[str, str], list[str]] = {}
        self.availability = dict.fromkeys(self.NODES, "active")
        self.fail_restore = False

    def nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(n, n, "ready", self.availability[n], f"10.0.0.{i}", i == 0, "")
            for i, n in enumerate(self.NODES)
        ]

    def placed_on(self, store_id: str) -> str | None:
        return self.pinned.get(store_id)

    def _least_loaded(self, but: str | None = None) -> str:
        usable = [n for n in self.NODES if self.availability[n] == "active" and n != but]
        return min(usable, key=lambda n: (list(self.pinned.values()).count(n), n))

    def apply(self, spec: StackSpec, *, timeout_s: float, should_stop: Any = None) -> None:
        node = self.pinned.setdefault(spec.store_id, self._least_loaded())
        self.rows_on.setdefault((spec.store_id, node), [])
        self.rows[spec.store_id] = self.rows_on[spec.store_id, node]
        super().apply(spec, timeout_s=timeout_s, should_stop=should_stop)

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        super().remove(store_id, purge=purge, timeout_s=timeout_s)
        if purge and store_id in self.pinned:
            self.rows_on.pop((store_id, self.pinned.pop(store_id)), None)

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        if self.fail_restore:
            raise RuntimeFailure("pg_restore failed (fake)")
        self.rows_on[store_id, self.pinned[store_id]][:] = json.loads(source.read_text())

    def quiesce(self, store_id: str, *, timeout_s: float) -> None:
        pass

    def relocate(self, store_id: str, node: str, *, timeout_s: float) -> str:
        previous = self.pinned[store_id]
        super().remove(store_id, purge=False, timeout_s=timeout_s)
        self.pinned[store_id] = node
        return previous

    def pin(self, store_id: str, node: str) -> None:
        self.pinned[store_id] = node

    def drop_data(self, store_id: str, node: str, *, timeout_s: float) -> None:
        self.rows_on.pop((store_id, node), None)

    def choose_node(self, store_id: str) -> str:
        return self._least_loaded(but=self.pinned.get(store_id))

    def set_availability(self, node: str, availability: str) -> None:
        self.availability[node] = availability
