"""The edge as a supervised `caddy` process on this host (the process runtime's edge).

It runs in a session of its own and outlives the control plane (as store processes do); its PID
is in `<root>/caddy.pid`, and the reconciler starts it again when it is gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from storefleet.edge.base import EdgeSettings
from storefleet.edge.caddy import CaddyEdge
from storefleet.errors import RuntimeFailure

START_TIMEOUT_S = 15.0


def _is_caddy(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].rsplit(b"/", 1)[-1] == b"caddy"


class CaddyProcess(CaddyEdge):
    def __init__(self, settings: EdgeSettings, *, executable: str = "caddy") -> None:
        super().__init__(settings)
        self.executable = executable
        self._proc: subprocess.Popen[bytes] | None = None  # the one this control plane started

    @property
    def _pid_file(self) -> Path:
        return self.settings.root / "caddy.pid"

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self._pid_file.read_text().strip())
            return pid if _is_caddy(pid) else None
        return None

    def _running(self) -> bool:
        if self._proc is not None:
            self._proc.poll()  # reaps it when it died (no zombie left)
        return self._pid() is not None

    def _start(self) -> None:
        binary = shutil.which(self.executable)
        if binary is None:
            raise RuntimeFailure(
                "the edge needs `caddy`: run `make edge` (it installs Debian's package `caddy`)"
            )
        root = self.settings.root
        stale = root / "admin.sock"
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root),
            "XDG_DATA_HOME": str(root / "data"),
            "XDG_CONFIG_HOME": str(root / "config"),
        }
        with (root / "caddy.log").open("ab") as log:
            proc = subprocess.Popen(
                [binary, "run", "--config", str(root / "boot.json")],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # it outlives the control plane
            )
        self._proc = proc
        (root / "caddy.pid").write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.admin.answers():
            if proc.poll() is not None:
                raise RuntimeFailure(
                    f"the edge (caddy) exited at start with {proc.returncode}; see {root}/caddy.log"
                )
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"the edge (caddy) did not start within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def _stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _is_caddy(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if _is_caddy(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
