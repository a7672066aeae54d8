"""The OpenAPI schema tells the truth: Schemathesis, run against a live control plane with every
check and every phase (stateful included), finds nothing but what the allow-list names with its
reason. The run is bounded (`--max-time`); its seed is fixed so that a failure can be replayed
(`STOREFLEET_FUZZ_SEED` picks another)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import Server

HERE = Path(__file__).parent / "schemathesis"
ALLOW_LIST = HERE / "allow-list.json"
CONFIG = HERE / "schemathesis.toml"
MAX_TIME_S = int(os.environ.get("STOREFLEET_FUZZ_MAX_TIME_S", "60"))


def test_every_allowed_finding_says_why() -> None:
    entries = json.loads(ALLOW_LIST.read_text())["entries"]
    for entry in entries:
        assert len(entry.get("reason", "").strip()) > 20, entry
        assert {"operation", "check", "failure", "signature"} <= entry.keys(), entry


@pytest.mark.timeout(MAX_TIME_S + 240)
def test_schema_fuzzing_finds_nothing_unlisted(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    # Webhook targets are checked against a network policy the schema cannot state: let every
    # address through here (test_webhooks.py tests the policy itself).
    server = start_server(STOREFLEET_WEBHOOK_ALLOW_NETS="0.0.0.0/0,::/0")
    schemathesis = Path(sys.executable).parent / "schemathesis"
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            str(schemathesis),
            "--no-color",
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {server.token}",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "20",
            "--max-time",
            str(MAX_TIME_S),
            "--workers",
            "2",
            "--seed",
            os.environ.get("STOREFLEET_FUZZ_SEED", "1"),
            "--request-timeout",
            "30",
            "--baseline",
            str(ALLOW_LIST),
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=MAX_TIME_S + 180,
        cwd=tmp_path,  # its cache and reports stay out of the checkout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Traceback" not in server.log(), server.log()[-4000:]
