"""A store on the process runtime: the driver's configuration, the store's files (workspace,
data, run.json) and what the supervisor records of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from storefleet.runtime.base import (
    API_KEY,
    Links,
    StackPaths,
    StackSpec,
)

BACKEND_MODULE = "storefleet_backend"
# With store users, store N's backend runs as uid STORE_UID_BASE + its backend port (unique
# among deployed stores, above the ids a distribution hands out to people and services).
STORE_UID_BASE = 100_000
DEFAULT_VERSION = "0.1.0"  # the reference backend's version (storefleet_backend.__version__)
HEALTH_FRESH_S = 3.0
# Environment variables a store process may inherit from the control plane; nothing else (and
# never a STOREFLEET_* setting such as the secret key) reaches it.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


def pid_alive(pid: int | None, marker: str) -> bool:
    """True when `pid` runs (not a zombie) and its command line contains `marker`."""
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def pid_frozen(pid: int | None) -> bool:
    """True when `pid` is stopped by a signal (SIGSTOP: a paused store)."""
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "T"


def after_since(line: str, since: datetime | None) -> bool:
    """True when the line's time prefix (written by the supervisor) is at or after `since`."""
    if since is None:
        return True
    try:
        stamp = datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))
    except ValueError:
        return False
    return stamp >= since


@dataclass(frozen=True)
class Seen:
    supervisor_alive: bool
    child_alive: bool
    state: Mapping[str, Any]


def probe_store_user(python: str, module: str, uid: int = STORE_UID_BASE) -> str | None:
    """Whether a store user can run the backend: None if it can, else why not (e.g. the
    interpreter lives under a folder other users can not enter). Needs root."""
    try:
        done = subprocess.run(
            [python, "-c", f"import {module}"],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            env={k: os.environ[k] for k in INHERITED_ENV if k in os.environ},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{python} can not be started as uid {uid}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"uid {uid} can not run `{python} -c 'import {module}'`: {last}"
    return None


class ProcessStack:
    """What every part of the process driver stands on (see `driver.py`)."""

    name = "process"
    secret_names: tuple[str, ...] = (API_KEY,)  # SQLite needs no password

    def __init__(
        self,
        stores_dir: Path,
        *,
        public_host: str = "127.0.0.1",
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        crashloop_error_after: int = 5,
        poll_interval_s: float = 0.05,
        python: str = sys.executable,
        backend_module: str = BACKEND_MODULE,
        default_version: str = DEFAULT_VERSION,
        extra_versions: Mapping[str, str] | None = None,
        allowed_origins: str = "",
        store_users: bool = False,
    ) -> None:
        self.stores_dir = stores_dir
        self.allowed_origins = allowed_origins
        # Run each store's backend as a user of its own (the control plane must be root).
        self.store_users = store_users
        self.public_host = public_host
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.crashloop_error_after = crashloop_error_after
        self.poll_interval_s = poll_interval_s
        self.python = python
        self.backend_module = backend_module
        # version -> the Python module run as the store's backend
        self._versions = {default_version: backend_module, **(extra_versions or {})}
        self._default_version = default_version
        # One client for every health probe: `httpx.get` builds a client (and a TLS context)
        # per call, ~20 ms of CPU, which many deploys polling at once turn into a CPU storm.
        self._http = httpx.Client(timeout=1.0, trust_env=False)

    def close(self) -> None:
        """Close the probe client; supervisors are meant to outlive the control plane."""
        self._http.close()

    def workspace(self, store_id: str) -> Path:
        return self.stores_dir / store_id / "deploy"

    def _data_dir(self, store_id: str) -> Path:
        return self.stores_dir / store_id / "data"

    def _db_file(self, store_id: str) -> Path:
        return self._data_dir(store_id) / "store.db"

    def paths(self, store_id: str) -> StackPaths:
        return StackPaths(str(self.workspace(store_id)), str(self._data_dir(store_id)))

    def links(self, spec: StackSpec) -> Links:
        return Links(
            back_link=f"http://{self.public_host}:{spec.ports.backend_port}",
            db_link=f"sqlite:///{self._db_file(spec.store_id)}",
        )

    def _health_url(self, spec: StackSpec) -> str:
        return f"http://127.0.0.1:{spec.ports.backend_port}/health"

    def store_uid(self, spec: StackSpec) -> int | None:
        """The user a store's backend runs as: its own (from its unique backend port), or the
        control plane's (None) when store users are off."""
        return STORE_UID_BASE + spec.ports.backend_port if self.store_users else None

    def version_of(self, spec: StackSpec) -> str:
        return spec.version or self._default_version

    def _supervisor_pid(self, store_id: str) -> int | None:
        try:
            return int((self.workspace(store_id) / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _module_of(self, store_id: str) -> str:
        argv = self._read_run(store_id).get("argv") or []
        return str(argv[2]) if len(argv) > 2 else self.backend_module

    def _read_run(self, store_id: str) -> Mapping[str, Any]:
        try:
            data: Mapping[str, Any] = json.loads(
                (self.workspace(store_id) / "run.json").read_text()
            )
        except (OSError, ValueError):
            return {}
        return data

    def versions(self) -> list[str]:
        return sorted(self._versions)

    def default_version(self) -> str:
        return self._default_version

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        """Stop the store's processes (the driver does; a restore stops the store first)."""
        raise NotImplementedError
