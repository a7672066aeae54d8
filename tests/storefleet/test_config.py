from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from storefleet.config import PortRange, Settings, parse_pool


def test_port_range_bases_hold_whole_triples() -> None:
    bases = list(PortRange.parse("9000-9999").bases())
    assert bases[0] == 9000 and bases[-1] == 9996
    assert len(bases) == 333
    assert all(b + 2 <= 9999 for b in bases)


@pytest.mark.parametrize(
    "text", ["", "9000", "9000-", "a-b", "9999-9000", "80-90", "9000-9001", "1-2-3"]
)
def test_port_range_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        PortRange.parse(text)


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STOREFLEET_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("STOREFLEET_PORT_RANGE", "12000-12008")
    settings = Settings()
    assert settings.data_dir == (tmp_path / "d").resolve()
    assert settings.ports == PortRange(12000, 12008)
    assert settings.registry_url == f"sqlite:///{tmp_path / 'd' / 'storefleet.db'}"
    assert settings.runtime == "process"


def test_settings_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREFLEET_PORT_RANGE", "nope")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("STOREFLEET_PORT_RANGE", "9000-9999")
    monkeypatch.setenv("STOREFLEET_EXTRA_LABELS", "a=$(id)")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("STOREFLEET_EXTRA_LABELS", "io.storefleet.test=123")
    assert Settings().extra_label_map == {"io.storefleet.test": "123"}


def test_names_and_levels_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOREFLEET_LOG_LEVEL", "warning")
    monkeypatch.setenv("STOREFLEET_LOG_FORMAT", "JSON")
    monkeypatch.setenv("STOREFLEET_RUNTIME", "Process")
    settings = Settings()
    assert (settings.log_level, settings.log_format, settings.runtime) == (
        "WARNING",
        "json",
        "process",
    )


def _serve(data_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """`storefleet serve` with these settings only (for settings refused at start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")}
    env.update(STOREFLEET_DATA_DIR=str(data_dir), **settings)
    return subprocess.run(
        [sys.executable, "-m", "storefleet.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    done = _serve(tmp_path, STOREFLEET_LOG_LEVEL="loud", STOREFLEET_WEBHOOK_ALLOW_NETS="not-a-net")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr
    level = next(line for line in lines if "STOREFLEET_LOG_LEVEL" in line)
    assert level.startswith("storefleet: STOREFLEET_LOG_LEVEL: ") and "'DEBUG'" in level
    assert any(line.startswith("storefleet: STOREFLEET_WEBHOOK_ALLOW_NETS: ") for line in lines)
    assert "Traceback" not in done.stderr


def test_a_process_version_naming_a_missing_module_is_refused_at_start(tmp_path: Path) -> None:
    done = _serve(tmp_path, STOREFLEET_PROCESS_VERSIONS='{"0.3.0": "no_such_backend_module"}')
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "0.3.0" in done.stderr and "no_such_backend_module" in done.stderr


@pytest.mark.parametrize(
    ("text", "targets"),
    [
        ("0", {}),
        ("5", {"basic": 5}),
        ("basic=5,premium=2", {"basic": 5, "premium": 2}),
        (" premium=3 , enterprise=0", {"premium": 3}),
    ],
)
def test_warm_pool_targets(text: str, targets: dict[str, int]) -> None:
    assert parse_pool(text) == targets


@pytest.mark.parametrize("text", ["-1", "101", "gold=2", "basic=2,basic=3", "basic", "basic=x", ""])
def test_warm_pool_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pool(text)
