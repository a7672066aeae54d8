"""`storefleet doctor` on this host: every check passes on a sound setup, and a broken one
fails with the line that says what to fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import next_port_range


def _doctor(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "storefleet.cli", "doctor"],
        env={**base, "STOREFLEET_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line[5:].startswith(name))


def test_a_sound_setup_passes_every_check(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    done = _doctor(data_dir, STOREFLEET_PORT_RANGE=next_port_range())
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line[5:].split()[0] for line in done.stdout.splitlines()]
    assert names[:4] == ["settings", "registry", "data", "process"]
    assert all(line.startswith("ok") for line in done.stdout.splitlines())


def test_failures_name_the_fix(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    port_range = next_port_range()
    first = int(port_range.split("-")[0])
    with socket.socket() as foreign:  # another program listens inside the port range
        foreign.bind(("127.0.0.1", first + 4))
        foreign.listen()
        done = _doctor(
            data_dir,
            STOREFLEET_PORT_RANGE=port_range,
            STOREFLEET_PROCESS_VERSIONS='{"0.9.0": "no_such_module_here"}',
        )
    assert done.returncode == 1
    assert _line(done.stdout, "data dir").startswith("FAIL") and "chmod 700" in done.stdout
    ports = _line(done.stdout, "port range")
    assert ports.startswith("FAIL") and str(first + 4) in ports
    runtime = _line(done.stdout, "process runtime")
    assert runtime.startswith("FAIL") and "no_such_module_here" in runtime


@pytest.mark.docker
def test_docker_checks_find_a_missing_image(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    done = _doctor(
        data_dir,
        STOREFLEET_RUNTIME="docker",
        STOREFLEET_PORT_RANGE=next_port_range(),
        STOREFLEET_BACKEND_IMAGE="storefleet/not-built:0.0.0",
        STOREFLEET_EDGE_IMAGE="storefleet/no-edge:0.0.0",
    )
    assert done.returncode == 1
    assert _line(done.stdout, "docker engine").startswith("ok")
    assert _line(done.stdout, "compose").startswith("ok")
    images = _line(done.stdout, "images")
    assert images.startswith("FAIL") and "storefleet/not-built:0.0.0" in images
    assert "make images" in images
    edge = _line(done.stdout, "edge")
    assert edge.startswith("FAIL") and "storefleet/no-edge:0.0.0" in edge and "make images" in edge


def test_the_edge_is_checked_when_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    done = _doctor(data_dir, STOREFLEET_PORT_RANGE=next_port_range(), STOREFLEET_EDGE="caddy")
    assert done.returncode == 0, done.stdout + done.stderr
    edge = _line(done.stdout, "edge")
    assert edge.startswith("ok") and "caddy 2.6" in edge and "*.stores.localhost" in edge
    off = _line(_doctor(data_dir, STOREFLEET_PORT_RANGE=next_port_range()).stdout, "edge")
    assert off.startswith("ok") and "off" in off
