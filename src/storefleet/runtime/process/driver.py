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
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storefleet.errors import (
    DeadlineExceeded,
    OperationCancelledError,
    PermanentFailure,
    RuntimeFailure,
)
from storefleet.runtime.base import (
    API_KEY,
    StackSpec,
    bind_probe,
    write_secret_file,
)
from storefleet.runtime.health import wait_healthy
from storefleet.runtime.process.backup import ProcessBackups
from storefleet.runtime.process.logs import ProcessLogs
from storefleet.runtime.process.observe import ProcessObserver
from storefleet.runtime.process.stack import (
    INHERITED_ENV,
    pid_alive,
    pid_frozen,
    probe_store_user,
)
from storefleet.runtime.process.supervisor import MODULE as SUPERVISOR_MODULE

# Supervisors started before the runtime became a package ran under the old module name: they
# keep running across a control-plane upgrade and are still ours.
SUPERVISOR_MODULES = {SUPERVISOR_MODULE, "storefleet.runtime.supervisor"}

if TYPE_CHECKING:
    from storefleet.config import Settings

__all__ = ["ProcessDriver", "probe_store_user"]


class ProcessDriver(ProcessObserver, ProcessBackups, ProcessLogs):
    """Runs each store as a supervised backend process (see the module docstring): applies,
    stops and removes stacks here; observing (`observe.py`), backups (`backup.py`), logs
    (`logs.py`) and the store's files (`stack.py`) are its parts."""

    @classmethod
    def from_settings(cls, settings: Settings, *, store_users: bool = False) -> ProcessDriver:
        return cls(
            settings.stores_dir,
            public_host=settings.public_host,
            backoff_initial_s=settings.restart_backoff_initial_s,
            backoff_max_s=settings.restart_backoff_max_s,
            crashloop_error_after=settings.crashloop_error_after,
            poll_interval_s=settings.health_poll_interval_s,
            backend_module=settings.process_backend_module,
            default_version=settings.process_default_version,
            extra_versions=settings.process_versions,
            allowed_origins=settings.store_allowed_origins,
            store_users=store_users,
        )

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
                while pid_alive(child, module) and time.monotonic() < stop_by:
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
        if spec.socket_dir is not None:  # the edge dials the backend's sockets there
            spec.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            if uid is not None:
                os.chown(spec.socket_dir, uid, uid)
        for stale in ("state.json", "state.json.tmp"):
            (workspace / stale).unlink(missing_ok=True)
        run = os.open(workspace / "run.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(run, "w") as handle:
            handle.write(json.dumps(self._run(spec), indent=2))

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
        if spec.socket_dir is not None:
            env["STORE_SOCKET_DIR"] = str(spec.socket_dir)
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
        while not pid_alive(proc.pid, str(workspace)) and proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        # Reap it when it ends, so that it never lingers as a zombie of the control plane.
        threading.Thread(target=proc.wait, name=f"reap-{store_id}", daemon=True).start()

    def pause(self, store_id: str) -> None:
        """SIGSTOP to the store's process group (its supervisor and backend): frozen where they
        stand, no CPU, memory kept; the cheapest pause there is (measured by `make bench`).
        Returns once both are stopped (a process in the middle of a write stops after it)."""
        self._signal_group(store_id, signal.SIGSTOP)
        seen = self._see(store_id)
        pids = [self._supervisor_pid(store_id), seen.state.get("child_pid")]
        deadline = time.monotonic() + 5.0
        while not all(pid_frozen(p) for p in pids if isinstance(p, int)):
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"the processes of store {store_id} did not stop")
            time.sleep(0.001)

    def resume(self, spec: StackSpec, *, timeout_s: float) -> None:
        """SIGCONT to the group, then the backend's /health until it answers."""
        self._signal_group(spec.store_id, signal.SIGCONT)
        wait_healthy(self._health_url(spec), timeout_s=timeout_s)

    def _signal_group(self, store_id: str, sig: signal.Signals) -> None:
        pid = self._supervisor_pid(store_id)
        if not pid or not pid_alive(pid, str(self.workspace(store_id))):
            raise RuntimeFailure(f"the supervisor of store {store_id} is not running")
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError as exc:
            raise RuntimeFailure(f"the supervisor of store {store_id} is gone") from exc
        if pgid != pid:  # the supervisor leads its own session: never signal another group
            raise RuntimeFailure(f"the supervisor of store {store_id} leads no process group")
        os.killpg(pgid, sig)

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        seen = self._see(store_id)
        pid = self._supervisor_pid(store_id)
        if seen.supervisor_alive and pid:
            with contextlib.suppress(RuntimeFailure, PermissionError):
                self._signal_group(store_id, signal.SIGCONT)  # a paused store hears SIGTERM
        if seen.supervisor_alive and pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._see(store_id).supervisor_alive:
                time.sleep(self.poll_interval_s)
        for candidate in (pid, seen.state.get("child_pid")):
            if isinstance(candidate, int) and candidate > 0:
                self._kill_group(candidate, store_id)
        child = seen.state.get("child_pid")
        if isinstance(child, int) and pid_alive(child, self._module_of(store_id)):
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
            if SUPERVISOR_MODULES & set(text) and text[-1].startswith(root):
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
        if pgid == pid or pid_alive(pgid, str(self.workspace(store_id))):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                return

    def port_is_free(self, port: int) -> bool:
        """Stores run on this host: a bind probe here."""
        return bind_probe(port)
