"""The process runtime with real OS processes (supervisor + reference backend)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import free_port, kill_store_processes, wait_for
from storefleet.errors import DeadlineExceeded, RuntimeFailure
from storefleet.runtime.base import Observed, Ports, StackSpec
from storefleet.runtime.process.driver import ProcessDriver


def _ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[ProcessDriver]:
    yield ProcessDriver(tmp_path / "stores", backoff_initial_s=0.2, crashloop_error_after=3)
    kill_store_processes(tmp_path)


def _child_pid(driver: ProcessDriver, store_id: str) -> int:
    return int(json.loads((driver.workspace(store_id) / "state.json").read_text())["child_pid"])


def test_apply_status_kill_restart_remove(driver: ProcessDriver) -> None:
    spec = StackSpec("store-a", "basic", _ports())
    driver.apply(spec, timeout_s=30)
    status = driver.status("store-a")
    assert status.observed is Observed.RUNNING and status.db_exists
    assert {s.name: s.state for s in status.services} == {
        "supervisor": "running",
        "backend": "running",
    }
    base = f"http://127.0.0.1:{spec.ports.backend_port}"
    assert httpx.get(base + "/docs").status_code == 200

    driver.apply(spec, timeout_s=30)  # idempotent: adopted, not started twice
    first = _child_pid(driver, "store-a")

    os.kill(first, signal.SIGKILL)  # the backend dies: degraded, then restarted
    wait_for(lambda: driver.status("store-a").observed is not Observed.RUNNING, 5)
    wait_for(lambda: driver.status("store-a").observed is Observed.RUNNING)
    assert _child_pid(driver, "store-a") != first
    # the fleet view uses the supervisor's own health checks, at most a moment behind
    wait_for(lambda: driver.fleet_status()["store-a"].observed is Observed.RUNNING, 5)

    driver.remove("store-a", purge=False, timeout_s=10)
    assert driver.status("store-a").observed is Observed.ABSENT
    assert not driver.workspace("store-a").exists()
    assert driver.status("store-a").db_exists  # data kept
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/health", timeout=1)
    driver.remove("store-a", purge=True, timeout_s=10)  # nothing running: still succeeds
    assert not (driver.stores_dir / "store-a").exists()


def test_store_outlives_a_dead_supervisor_only_until_removed(driver: ProcessDriver) -> None:
    spec = StackSpec("store-b", "basic", _ports())
    driver.apply(spec, timeout_s=30)
    sup = int((driver.workspace("store-b") / "supervisor.pid").read_text())
    child = _child_pid(driver, "store-b")
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: driver.status("store-b").observed is Observed.DEGRADED, 5)
    driver.remove("store-b", purge=False, timeout_s=10)
    wait_for(
        lambda: (
            not Path(f"/proc/{child}").exists()
            or "Z" in Path(f"/proc/{child}/stat").read_text().split(")")[-1][:3]
        ),
        5,
    )


def test_crash_looping_backend_shows_error_with_back_off(tmp_path: Path) -> None:
    driver = ProcessDriver(
        tmp_path / "stores",
        backoff_initial_s=0.2,
        backoff_max_s=5,
        crashloop_error_after=3,
        backend_module="storefleet_backend.nonexistent",
    )
    try:
        with pytest.raises(RuntimeFailure, match="exited with code"):
            driver.apply(StackSpec("store-c", "basic", _ports()), timeout_s=20)
        wait_for(lambda: driver.status("store-c").observed is Observed.ERROR, 20)
        status = driver.status("store-c")
        assert status.detail and "exited with code 1" in status.detail
        state = json.loads((driver.workspace("store-c") / "state.json").read_text())
        # back-off grows: 0.2, 0.4, 0.8 ... so after ~3 s there are only a handful of restarts
        time.sleep(2)
        later = json.loads((driver.workspace("store-c") / "state.json").read_text())
        assert later["restarts"] - state["restarts"] <= 3
    finally:
        driver.remove("store-c", purge=True, timeout_s=10)
        kill_store_processes(tmp_path)


def test_deadline_is_enforced(driver: ProcessDriver) -> None:
    with pytest.raises(DeadlineExceeded, match="not healthy within"):
        driver.apply(StackSpec("store-d", "basic", _ports()), timeout_s=0.05)
    driver.remove("store-d", purge=True, timeout_s=10)
    assert driver.status("store-d").observed is Observed.ABSENT


def test_secrets_are_files_of_mode_0600_and_not_in_run_config(driver: ProcessDriver) -> None:
    canary = "canary-secret-6f1e2d"
    spec = StackSpec("store-e", "basic", _ports(), secrets={"api_key": canary})
    driver.apply(spec, timeout_s=30)
    secret = driver.workspace("store-e") / "secrets" / "api_key"
    assert secret.read_text() == canary
    assert secret.stat().st_mode & 0o777 == 0o600
    assert canary not in (driver.workspace("store-e") / "run.json").read_text()
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes()
        except OSError:
            continue
        assert canary.encode() not in cmdline
    driver.remove("store-e", purge=True, timeout_s=10)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _supervisor_pid(driver: ProcessDriver, store_id: str) -> int:
    return int((driver.workspace(store_id) / "supervisor.pid").read_text())


def test_a_backend_never_outlives_its_supervisor(driver: ProcessDriver) -> None:
    spec = StackSpec("store-p", "basic", _ports())
    driver.apply(spec, timeout_s=30)
    child = _child_pid(driver, "store-p")
    os.kill(_supervisor_pid(driver, "store-p"), signal.SIGKILL)
    wait_for(lambda: not _running(child), 10)


def test_a_removed_store_folder_ends_its_processes(driver: ProcessDriver) -> None:
    import shutil

    spec = StackSpec("store-q", "basic", _ports())
    driver.apply(spec, timeout_s=30)
    child, supervisor = _child_pid(driver, "store-q"), _supervisor_pid(driver, "store-q")
    shutil.rmtree(driver.stores_dir / "store-q")
    wait_for(lambda: not _running(supervisor) and not _running(child), 15)


def test_orphan_processes_are_ended_by_the_sweep(driver: ProcessDriver) -> None:
    import shutil

    spec = StackSpec("store-r", "basic", _ports())
    kept = StackSpec("store-s", "basic", _ports())
    driver.apply(spec, timeout_s=30)
    driver.apply(kept, timeout_s=30)
    child, supervisor = _child_pid(driver, "store-r"), _supervisor_pid(driver, "store-r")
    for pid in (supervisor, child):  # frozen: they can not notice anything themselves
        os.kill(pid, signal.SIGSTOP)
    try:
        shutil.rmtree(driver.stores_dir / "store-r")
        ended = driver.end_orphan_processes()
        assert sorted(ended) == sorted(
            [
                ("store-r", f"supervisor process {supervisor}"),
                ("store-r", f"backend process {child}"),
            ]
        )
        wait_for(lambda: not _running(supervisor) and not _running(child), 10)
        assert driver.status("store-s").observed is Observed.RUNNING  # others untouched
    finally:  # whatever failed above, nothing of this test is left behind
        for pid in (supervisor, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


ISOLATED_BACKEND = '''
"""A stdlib-only store backend: answers /health with what its user can read."""
import json, os, pathlib
from http.server import BaseHTTPRequestHandler, HTTPServer

here = pathlib.Path(__file__).parent
db = pathlib.Path(os.environ["STORE_DATABASE_URL"].removeprefix("sqlite:///"))
db.write_text("mine")  # its own data folder is writable

def readable(path):
    try:
        pathlib.Path(path).read_bytes()
        return True
    except OSError:
        return False

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        probe = json.loads((here / "probe.json").read_text())
        body = json.dumps({"uid": os.getuid(), "reads": {p: readable(p) for p in probe}})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["STORE_HTTP_PORT"])), Handler).serve_forever()
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="store users need a control plane running as root")
def test_store_users_isolate_stores_from_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile

    from helpers import REPO

    python = shutil.which("python3", path="/usr/bin")
    if python is None:
        pytest.skip("no interpreter outside /root that other users can run")
    root = Path(tempfile.mkdtemp(prefix="sf-users-"))
    try:
        root.chmod(0o755)
        modules = root / "modules"
        modules.mkdir(mode=0o755)
        (modules / "isolated_backend.py").write_text(ISOLATED_BACKEND)
        (modules / "probe.json").write_text("[]")
        secret = root / "secret.key"
        secret.write_text("control plane only")
        secret.chmod(0o600)
        monkeypatch.setenv("PYTHONPATH", f"{modules}:{REPO / 'src'}")
        driver = ProcessDriver(
            root / "stores", python=python, backend_module="isolated_backend", store_users=True
        )
        mine, other = (
            StackSpec("store-u", "basic", _ports()),
            StackSpec("store-v", "basic", _ports()),
        )
        for spec in (mine, other):
            driver.apply(
                StackSpec(spec.store_id, "basic", spec.ports, secrets={"api_key": "k" * 32}),
                timeout_s=30,
            )
        data_of = {s.store_id: driver.stores_dir / s.store_id / "data" for s in (mine, other)}
        probe = [
            str(data_of["store-u"] / "store.db"),
            str(driver.workspace("store-u") / "secrets" / "api_key"),
            str(data_of["store-v"] / "store.db"),
            str(driver.workspace("store-v") / "secrets" / "api_key"),
            str(driver.workspace("store-u") / "run.json"),
            str(driver.workspace("store-v") / "backend.log"),
            str(secret),
        ]
        (modules / "probe.json").write_text(json.dumps(probe))
        seen = httpx.get(f"http://127.0.0.1:{mine.ports.backend_port}/health").json()
        assert seen["uid"] == driver.store_uid(mine) != 0
        assert [seen["reads"][p] for p in probe] == [True, True, False, False, False, False, False]
        stat = data_of["store-u"].stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (driver.store_uid(mine), 0o700)
        for spec in (mine, other):
            driver.remove(spec.store_id, purge=True, timeout_s=10)
    finally:
        kill_store_processes(root)
        shutil.rmtree(root, ignore_errors=True)


def test_a_supervisor_started_under_the_old_module_name_is_still_ours(
    driver: ProcessDriver,
) -> None:
    """Stores outlive a control-plane upgrade: a supervisor started before the runtime became
    a package (`-m storefleet.runtime.supervisor`) whose store folder is gone is ended too."""
    workspace = driver.stores_dir / "store-legacy" / "deploy"
    sleeper = "import time; time.sleep(60)"
    argv = [sys.executable, "-c", sleeper, "storefleet.runtime.supervisor", str(workspace)]
    legacy = subprocess.Popen(argv, start_new_session=True)
    try:
        wait_for(lambda: "storefleet.runtime.supervisor" in _cmdline(legacy.pid), 10)
        ended = driver.end_orphan_processes()
        assert ("store-legacy", f"supervisor process {legacy.pid}") in ended
        legacy.wait(10)
    finally:
        if legacy.poll() is None:
            legacy.kill()
            legacy.wait()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
