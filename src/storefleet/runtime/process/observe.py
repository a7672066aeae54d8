"""What the process runtime shows of a store: its supervisor and backend alive, their recorded
and live health checks, resource usage from the process table, and the data it finds."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
import psutil

from storefleet.runtime.base import (
    Observed,
    ServiceState,
    ServiceUsage,
    StackStatus,
    StackUsage,
)
from storefleet.runtime.process.stack import (
    HEALTH_FRESH_S,
    ProcessStack,
    Seen,
    pid_alive,
    pid_frozen,
)


class ProcessObserver(ProcessStack):
    def _see(self, store_id: str) -> Seen:
        workspace = self.workspace(store_id)
        try:
            state: Mapping[str, Any] = json.loads((workspace / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        supervisor_alive = pid_alive(self._supervisor_pid(store_id), str(workspace))
        child = state.get("child_pid")
        child_alive = isinstance(child, int) and pid_alive(child, self._module_of(store_id))
        return Seen(supervisor_alive, child_alive, state)

    def _probe(self, url: str) -> bool:
        try:
            return self._http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def status(self, store_id: str) -> StackStatus:
        return self._status(store_id, live=True)

    def fleet_status(self) -> Mapping[str, StackStatus]:
        if not self.stores_dir.is_dir():
            return {}
        return {
            entry.name: self._status(entry.name, live=False)
            for entry in self.stores_dir.iterdir()
            if (entry / "deploy").is_dir()
        }

    def _status(self, store_id: str, *, live: bool) -> StackStatus:
        workspace = self.workspace(store_id)
        seen = self._see(store_id)
        backend_exists = workspace.is_dir()
        db_exists = self._db_file(store_id).is_file()
        healthy = False
        frozen = seen.supervisor_alive and pid_frozen(self._supervisor_pid(store_id))
        if seen.child_alive and not frozen:  # (a frozen backend would not answer a probe)
            if live:
                run = self._read_run(store_id)
                healthy = bool(run) and self._probe(str(run.get("health_url", "")))
            else:
                fresh = time.time() - float(seen.state.get("checked_at") or 0) < HEALTH_FRESH_S
                healthy = fresh and bool(seen.state.get("healthy"))
        phase = str(seen.state.get("phase", "starting"))
        backend_state = (
            "running" if seen.child_alive else ("restarting" if phase == "backoff" else "exited")
        )
        services: tuple[ServiceState, ...] = (
            ServiceState("supervisor", "running" if seen.supervisor_alive else "exited", None),
            ServiceState("backend", backend_state, healthy if seen.child_alive else False),
        )
        failures = int(seen.state.get("failures") or 0)
        detail = None
        if seen.state.get("last_exit_code") is not None and not healthy:
            detail = (
                f"backend exited with code {seen.state['last_exit_code']} "
                f"({failures} failed start(s) in a row)"
            )
        if not backend_exists and not seen.supervisor_alive and not seen.child_alive:
            observed = Observed.ABSENT
            services = ()
        elif frozen:
            observed = Observed.PAUSED
            services = tuple(ServiceState(s.name, "paused", None) for s in services)
        elif seen.supervisor_alive and seen.child_alive and healthy:
            observed = Observed.RUNNING
        elif seen.supervisor_alive and failures >= self.crashloop_error_after:
            observed = Observed.ERROR
        elif seen.supervisor_alive or seen.child_alive:
            observed = Observed.DEGRADED
        else:
            observed = Observed.STOPPED
        repairable = backend_exists and not seen.supervisor_alive
        return StackStatus(observed, backend_exists, db_exists, services, detail, repairable)

    def usage(self, store_id: str) -> StackUsage | None:
        seen = self._see(store_id)
        services = []
        for name, pid, alive in (
            ("supervisor", self._supervisor_pid(store_id), seen.supervisor_alive),
            ("backend", seen.state.get("child_pid"), seen.child_alive),
        ):
            if not alive or not isinstance(pid, int):
                continue
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
            except psutil.Error:
                continue
            services.append(ServiceUsage(name, times.user + times.system, int(rss)))
        if not services:
            return None
        data = self._data_dir(store_id)
        disk = sum(f.stat().st_size for f in data.glob("*") if f.is_file()) if data.is_dir() else 0
        return StackUsage(tuple(services), disk)

    def data_owners(self) -> set[str]:
        if not self.stores_dir.is_dir():
            return set()
        return {e.name for e in self.stores_dir.iterdir() if (e / "data" / "store.db").is_file()}
