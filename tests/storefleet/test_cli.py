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


def test_cli_tokens(server: Server) -> None:
    created = _cli(server, "tokens", "create", "--role", "operator", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    listed = _cli(server, "tokens", "list")
    assert token["id"][:8] in listed.stdout and token["token"] not in listed.stdout
    plain = _cli(server, "tokens", "create", "--role", "operator")
    assert "shown once" in plain.stdout
    assert _cli(server, "tokens", "revoke", token["id"]).returncode == 0
    revoked = json.loads(_cli(server, "tokens", "list", "--json").stdout)
    assert next(t for t in revoked if t["id"] == token["id"])["revoked_at"] is not None
    bad = _cli(server, "tokens", "create", "--role", "root")
    assert bad.returncode == 1 and "invalid request" in bad.stderr
