"""The CLI against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import Server


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storefleet.cli", *args, "--url", server.url],
        env={**os.environ, "STOREFLEET_TOKEN": server.token},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_store_life_cycle(server: Server) -> None:
    created = _cli(
        server, "stores", "create", "Tienda CLI", "--country", "MX", "--plan", "premium", "--json"
    )
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    sid = body["store"]["id"]
    assert body["deployment"]["status"] == "deployed"

    listed = _cli(server, "stores", "list")
    assert listed.returncode == 0 and "Tienda CLI" in listed.stdout and "running" in listed.stdout
    status = json.loads(_cli(server, "status", sid, "--json").stdout)
    assert status["status"] == "running"
    assert json.loads(_cli(server, "deploy", sid, "--json").stdout)["status"] == "already_deployed"
    assert "undeployed" in _cli(server, "undeploy", sid).stdout
    shown = json.loads(_cli(server, "stores", "show", sid, "--json").stdout)
    assert shown["back_link"] is None and shown["status"] == "not_deployed"
    assert _cli(server, "stores", "delete", sid, "--purge").returncode == 0

    missing = _cli(server, "status", sid)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    bad = _cli(server, "stores", "create", "X", "--country", "ZZ")
    assert bad.returncode == 1 and "unknown country" in bad.stderr
