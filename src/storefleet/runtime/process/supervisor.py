"""Per-store supervisor of the process runtime (standard library only).

Run as `python -m storefleet.runtime.process.supervisor WORKSPACE`. It is started detached (own
session, own process group) so that the store keeps running when the control plane stops. It:
- starts the command described in `WORKSPACE/run.json` and restarts it with exponential back-off
  when it exits;
- checks the store's health URL about twice a second;
- publishes what it sees in `WORKSPACE/state.json` (written atomically) for the control plane;
- writes the command's output to `WORKSPACE/backend.log`, each line prefixed with its UTC time,
  rotated to `backend.log.1` past `log_max_bytes` (10 MiB);
- on SIGTERM, or when its workspace is removed, stops the command (SIGTERM, then SIGKILL after
  a grace period) and exits. The command gets `STORE_SUPERVISOR_PID` and ends itself when the
  supervisor dies (it never outlives it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storefleet.backoff import Backoff

MODULE = "storefleet.runtime.process.supervisor"
HEALTH_EVERY_S = 0.5
HEALTH_EVERY_STARTING_S = 0.05
STABLE_AFTER_S = 10.0
STOP_GRACE_S = 10.0
LOG_MAX_BYTES = 10 * 1024 * 1024  # backend.log is rotated past this (one old file is kept)


class Supervisor:
    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.run = json.loads((workspace / "run.json").read_text())
        self.stopping = False
        self.gone = False  # the workspace was removed
        self.state: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "child_pid": None,
            "phase": "starting",
            "healthy": False,
            "checked_at": 0.0,
            "restarts": 0,
            "failures": 0,
            "last_exit_code": None,
            "next_start_at": None,
        }

    def write_state(self) -> None:
        if self.gone:
            return
        tmp = self.workspace / "state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.workspace / "state.json")

    def on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def healthy(self) -> bool:
        url = str(self.run["health_url"])
        if not url.startswith("http://127.0.0.1:"):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 (loopback only)
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start_child(self) -> subprocess.Popen[bytes]:
        env = {str(k): str(v) for k, v in self.run["env"].items()}
        env["STORE_SUPERVISOR_PID"] = str(os.getpid())  # the backend never outlives us
        uid = self.run.get("uid")
        # a store user of its own when configured (we are root then): its files are its own,
        # nothing else of the host is
        as_user: dict[str, Any] = (
            {"user": int(uid), "group": int(uid), "extra_groups": [], "umask": 0o077}
            if isinstance(uid, int)
            else {}
        )
        child = subprocess.Popen(
            [str(a) for a in self.run["argv"]],
            env=env,
            **as_user,
            cwd=self.workspace,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
        threading.Thread(target=self.pump, args=(child,), daemon=True).start()
        return child

    def pump(self, child: subprocess.Popen[bytes]) -> None:
        """Copy the child's output to backend.log, a UTC time in front of each line; past
        `log_max_bytes` the file is renamed backend.log.1 (one generation kept) and begun anew."""
        assert child.stdout is not None
        path = self.workspace / "backend.log"
        limit = int(self.run.get("log_max_bytes", LOG_MAX_BYTES))
        log = path.open("ab")
        try:
            for line in child.stdout:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ").encode()
                log.write(stamp + line if line.endswith(b"\n") else stamp + line + b"\n")
                log.flush()
                if log.tell() >= limit:
                    log.close()
                    path.replace(path.with_name(path.name + ".1"))
                    log = path.open("ab")
        finally:
            log.close()

    def stop_child(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def watch(self, child: subprocess.Popen[bytes]) -> int | None:
        """Follow a running child until it exits (its code) or we are told to stop (None)."""
        while not self.stopping:
            code = child.poll()
            if code is not None:
                return code
            if not self.workspace.is_dir():
                # the store's folder was removed under us (its data dir deleted): stop it all
                self.stopping = self.gone = True
                break
            healthy = self.healthy()
            self.state.update(healthy=healthy, checked_at=time.time())
            if healthy:
                self.state["phase"] = "running"
            self.write_state()
            time.sleep(HEALTH_EVERY_S if healthy else HEALTH_EVERY_STARTING_S)
        return None

    def backoff(self, delay: float) -> None:
        until = time.time() + delay
        self.state.update(phase="backoff", healthy=False, child_pid=None, next_start_at=until)
        self.write_state()
        while not self.stopping and time.time() < until:
            if not self.workspace.is_dir():
                self.stopping = self.gone = True
            time.sleep(0.05)

    def main(self) -> int:
        os.umask(0o077)  # its state and logs are for the control plane only
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        initial = float(self.run["backoff_initial_s"])
        ceiling = float(self.run["backoff_max_s"])
        while not self.stopping:
            started = time.monotonic()
            child = self.start_child()
            self.state.update(child_pid=child.pid, phase="starting", next_start_at=None)
            self.write_state()
            code = self.watch(child)
            if code is None:
                self.stop_child(child)
                break
            ran = time.monotonic() - started
            self.state["failures"] = 0 if ran >= STABLE_AFTER_S else self.state["failures"] + 1
            self.state.update(last_exit_code=code, restarts=self.state["restarts"] + 1)
            failures = max(1, int(self.state["failures"]))
            self.backoff(Backoff(initial, ceiling).delay(failures))
        self.state.update(phase="stopped", healthy=False, child_pid=None)
        self.write_state()
        return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {MODULE} WORKSPACE", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        return Supervisor(Path(argv[1]).resolve()).main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
