"""Process runtime: every store runs as its own OS processes with its own SQLite database.

Layout under `stores_dir/<store id>/`:
- `deploy/`  the workspace: `run.json` (what to run, no secret), `secrets/` (mode 0700, files 0600),
  `state.json` (written by the supervisor), `backend.log`, `supervisor.log`. Removed on undeploy.
- `data/store.db`  the store's database. Kept on undeploy unless purged.

Each store has a detached supervisor (`storefleet.runtime.process.supervisor`) in a process
group of its own: it outlives the control plane and restarts the backend with back-off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from storefleet.errors import (
    DeadlineExceeded,
    OperationCancelledError,
    PermanentFailure,
    RuntimeFailure,
)
from storefleet.runtime import logfiles
from storefleet.runtime.base import (
    API_KEY,
    Links,
    Observed,
    ServiceState,
    ServiceUsage,
    StackPaths,
    StackSpec,
    StackStatus,
    StackUsage,
    bind_probe,
    write_secret_file,
)
from storefleet.runtime.process.supervisor import MODULE as SUPERVISOR_MODULE

BACKEND_MODULE = "storefleet_backend"
# With store users, store N's backend runs as uid STORE_UID_BASE + its backend port (unique
# among deployed stores, above the ids a distribution hands out to people and services).
STORE_UID_BASE = 100_000
DEFAULT_VERSION = "0.1.0"  # the reference backend's version (storefleet_backend.__version__)
HEALTH_FRESH_S = 3.0
# Environment variables a store process may inherit from the control plane; nothing else (and
# never a STOREFLEET_* setting such as the secret key) reaches it.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


def _pid_alive(pid: int | None, marker: str) -> bool:
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


def _after(line: str, since: datetime | None) -> bool:
    """True when the line's time prefix (written by the supervisor) is at or after `since`."""
    if since is None:
        return True
    try:
        stamp = datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))
    except ValueError:
        return False
    return stamp >= since


@dataclass(frozen=True)
class _Seen:
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


class ProcessDriver:
    """Runs each store as a supervised backend process (see the module docstring)."""

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

    # -- layout -----------------------------------------------------------------------------

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

    # -- apply ------------------------------------------------------------------------------

    def apply(
        self,
        spec: StackSpec,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        if self.version_of(spec) not in self._versions:
            raise PermanentFailure(f"version {spec.version!r} is not known to the process runtime")
        seen = self._see(spec.store_id)
        if seen.supervisor_alive and self._read_run(spec.store_id) != self._run(spec):
            # another version or plan: replace the running backend (its data stays)
            self.stop(spec.store_id, timeout_s=timeout_s)
            seen = self._see(spec.store_id)
        if not seen.supervisor_alive:
            if seen.child_alive:  # a backend left without its supervisor holds the ports
                child = int(seen.state["child_pid"])
                module = self._module_of(spec.store_id)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
                stop_by = time.monotonic() + 5
                while _pid_alive(child, module) and time.monotonic() < stop_by:
                    time.sleep(self.poll_interval_s)
            self._write_workspace(spec)
            self._start_supervisor(spec.store_id)
        health_url = self._health_url(spec)
        while True:
            seen = self._see(spec.store_id)
            # healthy for us and on the supervisor's record (what fleet status reads), so that
            # every view of the store agrees from the moment apply returns
            if seen.child_alive and seen.state.get("healthy") and self._probe(health_url):
                return
            if not seen.supervisor_alive:
                raise RuntimeFailure(
                    f"the supervisor of store {spec.store_id} exited; see "
                    f"{self.workspace(spec.store_id) / 'supervisor.log'}"
                )
            if seen.state.get("last_exit_code") is not None and not seen.child_alive:
                code = seen.state["last_exit_code"]
                raise RuntimeFailure(
                    f"the backend of store {spec.store_id} exited with code {code} before it "
                    f"became healthy; see {self.workspace(spec.store_id) / 'backend.log'}"
                )
            if should_stop is not None and should_stop():
                raise OperationCancelledError(f"deploy of store {spec.store_id} was cancelled")
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"the backend of store {spec.store_id} was not healthy within {timeout_s:g} s"
                )
            time.sleep(self.poll_interval_s)

    def _health_url(self, spec: StackSpec) -> str:
        return f"http://127.0.0.1:{spec.ports.backend_port}/health"

    def store_uid(self, spec: StackSpec) -> int | None:
        """The user a store's backend runs as: its own (from its unique backend port), or the
        control plane's (None) when store users are off."""
        return STORE_UID_BASE + spec.ports.backend_port if self.store_users else None

    def _write_workspace(self, spec: StackSpec) -> None:
        workspace = self.workspace(spec.store_id)
        uid = self.store_uid(spec)
        # With store users, the folders on the way are traversable but not listable (0711);
        # what is in them stays the control plane's (0600) or the store user's (0700).
        folder_mode = 0o711 if uid is not None else 0o700
        workspace.mkdir(parents=True, exist_ok=True, mode=folder_mode)
        data = self._data_dir(spec.store_id)
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        secrets_dir = workspace / "secrets"
        secrets_dir.mkdir(exist_ok=True, mode=folder_mode)
        for name, value in spec.secrets.items():
            write_secret_file(secrets_dir / name, value, uid)
        if uid is not None:
            for folder in (
                self.stores_dir,
                self.stores_dir / spec.store_id,
                workspace,
                secrets_dir,
            ):
                folder.chmod(0o711)
            data.chmod(0o700)
            for path in (data, *data.rglob("*")):
                os.lchown(path, uid, uid)
        for stale in ("state.json", "state.json.tmp"):
            (workspace / stale).unlink(missing_ok=True)
        run = os.open(workspace / "run.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(run, "w") as handle:
            handle.write(json.dumps(self._run(spec), indent=2))

    def version_of(self, spec: StackSpec) -> str:
        return spec.version or self._default_version

    def _run(self, spec: StackSpec) -> dict[str, Any]:
        """What the supervisor runs for `spec` (run.json); no secret in it."""
        version = self.version_of(spec)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(
            STORE_ID=spec.store_id,
            STORE_PLAN=spec.plan,
            STORE_BACKEND_VERSION=version,
            STORE_BIND_HOST="127.0.0.1",
            STORE_HTTP_PORT=str(spec.ports.backend_port),
            STORE_WS_PORT=str(spec.ports.websocket_port),
            STORE_DATABASE_URL=f"sqlite:///{self._db_file(spec.store_id)}",
            STORE_SECRETS_DIR=str(self.workspace(spec.store_id) / "secrets"),
            STORE_API_KEY_FILE=str(self.workspace(spec.store_id) / "secrets" / API_KEY),
            STORE_ALLOWED_ORIGINS=self.allowed_origins,
        )
        return {
            "argv": [self.python, "-m", self._versions.get(version, self.backend_module)],
            "env": env,
            "uid": self.store_uid(spec),
            "version": version,
            "health_url": self._health_url(spec),
            "backoff_initial_s": self.backoff_initial_s,
            "backoff_max_s": self.backoff_max_s,
        }

    def _start_supervisor(self, store_id: str) -> None:
        workspace = self.workspace(store_id)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        with (workspace / "supervisor.log").open("ab") as log:
            proc = subprocess.Popen(
                [self.python, "-m", SUPERVISOR_MODULE, str(workspace)],
                env=env,
                cwd=workspace,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                close_fds=True,
                start_new_session=True,
            )
        (workspace / "supervisor.pid").write_text(str(proc.pid))
        # Between fork and exec the child still shows our own command line: wait for the exec,
        # so that every later identity check (`_pid_alive`) sees the supervisor.
        deadline = time.monotonic() + 10
        while not _pid_alive(proc.pid, str(workspace)) and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        # Reap it when it ends, so that it never lingers as a zombie of the control plane.
        threading.Thread(target=proc.wait, name=f"reap-{store_id}", daemon=True).start()

    # -- remove -----------------------------------------------------------------------------

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        seen = self._see(store_id)
        pid = self._supervisor_pid(store_id)
        if seen.supervisor_alive and pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._see(store_id).supervisor_alive:
                time.sleep(self.poll_interval_s)
        for candidate in (pid, seen.state.get("child_pid")):
            if isinstance(candidate, int) and candidate > 0:
                self._kill_group(candidate, store_id)
        child = seen.state.get("child_pid")
        if isinstance(child, int) and _pid_alive(child, self._module_of(store_id)):
            os.kill(child, signal.SIGKILL)

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        workspace = self.workspace(store_id)
        self.stop(store_id, timeout_s=timeout_s)
        shutil.rmtree(workspace, ignore_errors=True)
        if purge:
            shutil.rmtree(self.stores_dir / store_id, ignore_errors=True)
        if workspace.exists():
            raise RuntimeFailure(f"could not remove the workspace of store {store_id}")

    def refresh_secrets(self, store_id: str, secrets: Mapping[str, str]) -> None:
        secrets_dir = self.workspace(store_id) / "secrets"
        if not secrets_dir.is_dir():
            return
        for name, value in secrets.items():
            write_secret_file(secrets_dir / name, value)

    def end_orphan_processes(self) -> list[tuple[str, str]]:
        """SIGKILL every supervisor or backend of this runtime's stores dir whose store folder
        is gone (e.g. a data dir removed under running stores); returns (store id, what)."""
        ended = []
        root = str(self.stores_dir) + "/"
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            text = [a.decode(errors="replace") for a in argv if a]
            store_path = None
            what = ""
            if not text:
                continue
            if SUPERVISOR_MODULE in text and text[-1].startswith(root):
                store_path, what = text[-1], "supervisor"
            elif any(
                a.startswith("storefleet_backend") or a in self._versions.values() for a in text
            ):
                with contextlib.suppress(OSError):
                    env = (proc / "environ").read_bytes().split(b"\0")
                    for item in env:
                        if item.startswith(b"STORE_DATABASE_URL=sqlite:///" + root.encode()):
                            store_path = item.split(b"sqlite:///", 1)[1].decode(errors="replace")
                            what = "backend"
            if store_path is None:
                continue
            store_id = store_path[len(root) :].split("/", 1)[0]
            if not store_id or (self.stores_dir / store_id).is_dir():
                continue
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(proc.name), signal.SIGKILL)
                ended.append((store_id, f"{what} process {proc.name}"))
        return ended

    def _kill_group(self, pid: int, store_id: str) -> None:
        """SIGKILL what is left of the store's process group (the supervisor leads it)."""
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return
        if pgid == os.getpgid(0):
            return  # never our own group
        if pgid == pid or _pid_alive(pgid, str(self.workspace(store_id))):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return

    # -- observe ----------------------------------------------------------------------------

    def _supervisor_pid(self, store_id: str) -> int | None:
        try:
            return int((self.workspace(store_id) / "supervisor.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _see(self, store_id: str) -> _Seen:
        workspace = self.workspace(store_id)
        try:
            state: Mapping[str, Any] = json.loads((workspace / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        supervisor_alive = _pid_alive(self._supervisor_pid(store_id), str(workspace))
        child = state.get("child_pid")
        child_alive = isinstance(child, int) and _pid_alive(child, self._module_of(store_id))
        return _Seen(supervisor_alive, child_alive, state)

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
        if seen.child_alive:
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

    # -- versions, backups, logs --------------------------------------------------------------

    def port_is_free(self, port: int) -> bool:
        """Stores run on this host: a bind probe here."""
        return bind_probe(port)

    def versions(self) -> list[str]:
        return sorted(self._versions)

    def default_version(self) -> str:
        return self._default_version

    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        """SQLite's online backup: a consistent copy while the backend keeps writing."""
        source = self._db_file(store_id)
        if not source.is_file():
            raise RuntimeFailure(f"store {store_id} has no database to back up yet")
        with (
            contextlib.closing(sqlite3.connect(source, timeout=timeout_s)) as src,
            contextlib.closing(sqlite3.connect(dest)) as out,
        ):
            src.backup(out)
        return "sqlite"

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        """Stop the backend (the caller applies the stack again), then copy the backup into
        the database with SQLite's backup API (its journal and WAL stay consistent)."""
        with contextlib.closing(sqlite3.connect(source)) as check:
            if check.execute("PRAGMA integrity_check").fetchone() != ("ok",):
                raise RuntimeFailure(f"backup {source.name} is not a sound SQLite database")
        self.stop(store_id, timeout_s=timeout_s)
        self._data_dir(store_id).mkdir(parents=True, exist_ok=True, mode=0o700)
        with (
            contextlib.closing(sqlite3.connect(source)) as src,
            contextlib.closing(sqlite3.connect(self._db_file(store_id), timeout=timeout_s)) as db,
        ):
            src.backup(db)

    def services(self) -> tuple[str, ...]:
        return ("backend", "supervisor")

    def logs(
        self,
        store_id: str,
        *,
        service: str,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> Iterator[str | None]:
        path = self.workspace(store_id) / f"{service}.log"
        if not path.is_file():
            return
        offset = path.stat().st_size
        yield from logfiles.tail_lines(path, tail, lambda line: _after(line, since))
        if follow:
            yield from logfiles.follow(path, offset)

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
