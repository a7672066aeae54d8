"""The CLI against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import Server, cli

_cli = cli


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


def _run(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storefleet.cli", *args],
        env={**os.environ, **env_extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_storefleet_alone_prints_the_help_and_flags_are_plain() -> None:
    alone = _run(
        {},
    )
    assert alone.returncode == 0 and "Usage: storefleet" in alone.stdout
    assert "stores" in alone.stdout and "versions" in alone.stdout
    listed = _run({}, "stores", "list", "--help")
    assert "--json" in listed.stdout and "<bool>" not in listed.stdout


def test_global_options_ids_names_and_prefixes(server: Server) -> None:
    env = {"STOREFLEET_TOKEN": ""}
    first = _run(
        env,
        "--url",
        server.url,
        "--token",
        server.token,
        "stores",
        "create",
        "Café Ñandú",
        "--country",
        "ESP",
        "--no-deploy",
        "--json",
    )
    assert first.returncode == 0, first.stderr
    sid = json.loads(first.stdout)["store"]["id"]
    base = ["--url", server.url, "--token", server.token]
    listed = _run(env, *base, "stores", "list")  # not a terminal: whole ids, tab-separated
    assert listed.returncode == 0 and sid in listed.stdout.split()
    assert listed.stdout.splitlines()[0].split("\t")[0] == "id"
    by_name = _run(env, *base, "status", "café ñandú", "--json")
    assert json.loads(by_name.stdout)["store_id"] == sid
    by_prefix = _run(env, *base, "stores", "show", sid[:8], "--json")
    assert json.loads(by_prefix.stdout)["id"] == sid
    unknown = _run(env, *base, "status", "ffffffff")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
    assert "no store matches 'ffffffff'" in unknown.stderr


def test_purging_a_store_that_was_never_deployed(server: Server) -> None:
    created = _cli(
        server, "stores", "create", "Sin Datos", "--country", "es", "--no-deploy", "--json"
    )
    sid = json.loads(created.stdout)["store"]["id"]
    deleted = _cli(server, "stores", "delete", sid, "--purge")
    assert deleted.returncode == 0, deleted.stderr
    assert "no final backup was needed" in deleted.stdout
    assert not (server.data_dir / "backups" / sid).exists()


def test_bad_arguments_are_one_line_never_a_traceback(server: Server, tmp_path: Path) -> None:
    created = _cli(server, "stores", "create", "Copia CLI", "--country", "MX", "--json")
    sid = json.loads(created.stdout)["store"]["id"]
    backup = json.loads(_cli(server, "backups", "create", sid, "--json").stdout)
    target = tmp_path / "copy.sqlite3"
    target.write_text("precious")
    cases = [
        ("backups", "download", sid, backup["id"], "-o", "/nonexistent-dir/x.db"),
        ("backups", "download", sid, backup["id"], "-o", str(target)),
        ("backups", "download", sid, backup["id"], "-o", str(tmp_path)),
        ("backups", "restore", sid, "nope"),
        ("stores", "create", "X", "--country", "XX"),
        ("stores", "create", "X", "--country", "XXX"),
        ("stores", "show", "not-a-store"),
        ("tokens", "create", "--role", "store"),
        ("tokens", "revoke", "not-a-token"),
        ("upgrade", sid, "9.9.9-unknown"),
        ("logs", sid, "--service", "nope"),
        ("events", "--types", "nothing.here", "--no-follow"),
        ("deploy", "zzzz"),
    ]
    for args in cases:
        done = _cli(server, *args)
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr and done.stderr.strip(), (args, done.stderr)
        assert done.stderr.strip().count("\n") == 0, (args, done.stderr)
    assert target.read_text() == "precious"  # never overwritten without --force
    assert "--force" in _cli(server, *cases[1]).stderr
    assert "--store" in _cli(server, "tokens", "create", "--role", "store").stderr
    two = _cli(server, "stores", "create", "X", "--country", "XX").stderr
    three = _cli(server, "stores", "create", "X", "--country", "XXX").stderr
    assert "unknown country code" in two and "unknown country code" in three
    forced = _cli(
        server, "backups", "download", sid, backup["id"][:8], "-o", str(target), "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert target.read_bytes() != b"precious"


def test_versions_and_a_401_hint(server: Server, tmp_path: Path) -> None:
    shown = _cli(server, "versions", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["default"] == "0.1.0"
    denied = _run(
        {"STOREFLEET_TOKEN": "", "STOREFLEET_DATA_DIR": str(tmp_path)},
        "--url",
        server.url,
        "stores",
        "list",
    )
    assert denied.returncode == 1
    assert "error 401" in denied.stderr and str(tmp_path / "admin-token") in denied.stderr


def test_nodes_and_moves_on_a_single_host(server: Server) -> None:
    """One node, `local`; a move or a drain is refused in one line (the Swarm lab's tests move
    stores for real)."""
    listed = _cli(server, "nodes", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [n["name"] for n in json.loads(listed.stdout)] == ["local"]
    created = json.loads(
        _cli(server, "stores", "create", "Quieta", "--country", "ES", "--json").stdout
    )
    sid = created["store"]["id"]
    moved = _cli(server, "move", sid, "--node", "h2")
    assert moved.returncode == 1 and "no other node to move a store to" in moved.stderr
    assert "Traceback" not in moved.stderr
    drained = _cli(server, "nodes", "drain", "local")
    assert drained.returncode == 1 and "no other node" in drained.stderr
