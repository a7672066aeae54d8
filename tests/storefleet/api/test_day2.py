"""Day-2 operations on the process runtime with real store processes: stop/start/restart,
upgrades with automatic rollback, fleet waves, backups and restore, logs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from helpers import BackLink, Server, add_order, back_of, orders, store_body, wait_for

VERSIONS = json.dumps({"0.2.0": "storefleet_backend", "9.9.9-broken": "storefleet_backend.idle"})


def _create(api: httpx.Client, nombre: str) -> tuple[str, BackLink]:
    created = api.post("/stores/", json=store_body(api, nombre))
    assert created.status_code == 201, created.text
    body = created.json()
    return body["store"]["id"], back_of(body)


def test_stop_start_restart_keep_ports_and_data(server: Server) -> None:
    with server.client() as api:
        sid, back = _create(api, "Pausa")
        add_order(back, "antes")
        ports = api.get(f"/stores/{sid}/deploy/status").json()["ports"]
        stopped = api.post(f"/stores/{sid}/stop")
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "stopped" and status["ports"] == ports
        assert status["back_link"] == back
        assert [s["nombre"] for s in api.get("/stores/").json() if s["status"] == "stopped"] == [
            "Pausa"
        ]
        try:
            httpx.get(back + "/health", timeout=1)
            raise AssertionError("a stopped store still answers")
        except httpx.HTTPError:
            pass
        started = api.post(f"/stores/{sid}/start")
        assert started.json()["status"] == "started"
        assert api.get(f"/stores/{sid}/deploy/status").json()["ports"] == ports
        assert orders(back) == ["antes"]
        pid_before = api.get(f"/stores/{sid}/usage").json()
        restarted = api.post(f"/stores/{sid}/restart")
        assert restarted.status_code == 200 and restarted.json()["status"] == "restarted"
        assert orders(back) == ["antes"]
        assert pid_before["memory_bytes"] > 0
        kinds = [op["kind"] for op in api.get(f"/stores/{sid}/operations").json()]
        assert kinds[:3] == ["restart", "start", "stop"]


def test_upgrade_rolls_back_a_version_that_never_gets_healthy(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(STOREFLEET_PROCESS_VERSIONS=VERSIONS, STOREFLEET_DEPLOY_TIMEOUT_S="4")
    with server.client() as api:
        versions = api.get("/versions").json()
        assert versions == {
            "runtime": "process",
            "default": "0.1.0",
            "available": ["0.1.0", "0.2.0", "9.9.9-broken"],
        }
        sid, back = _create(api, "Versionada")
        add_order(back, "v1")
        assert httpx.get(back + "/health").json()["version"] == "0.1.0"
        upgraded = api.post(f"/stores/{sid}/upgrade", json={"version": "0.2.0"})
        assert upgraded.status_code == 200, upgraded.text
        assert upgraded.json()["status"] == "upgraded"
        assert httpx.get(back + "/health").json()["version"] == "0.2.0"
        assert orders(back) == ["v1"]  # same data after the backend was replaced
        broken = api.post(f"/stores/{sid}/upgrade", json={"version": "9.9.9-broken"})
        assert broken.status_code in (502, 504), broken.text
        assert "rolled back to 0.2.0" in broken.json()["detail"]
        assert httpx.get(back + "/health").json()["version"] == "0.2.0"
        assert orders(back) == ["v1"]
        op = api.get(f"/stores/{sid}/operations").json()[0]
        assert op["kind"] == "upgrade" and op["state"] == "failed"
        assert "did not become healthy" in op["error"]
        unknown = api.post(f"/stores/{sid}/upgrade", json={"version": "3.0.0"})
        assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_version"
        bad = api.post(f"/stores/{sid}/upgrade", json={"version": "../../x"})
        assert bad.status_code == 422


def test_fleet_upgrade_operation(start_server: Callable[..., Server]) -> None:
    server = start_server(STOREFLEET_PROCESS_VERSIONS=VERSIONS)
    with server.client() as api:
        ids = [_create(api, f"Flota {i}")[0] for i in range(3)]
        accepted = api.post(
            "/fleet/upgrade", json={"version": "0.2.0", "batch_size": 2, "max_failures": 0}
        )
        assert accepted.status_code == 202
        op_id = accepted.json()["id"]
        wait_for(lambda: api.get(f"/operations/{op_id}").json()["state"] == "succeeded", 60)
        op = api.get(f"/operations/{op_id}").json()
        assert [s["name"] for s in op["steps"]] == ["wave_1_of_2", "wave_2_of_2"]
        assert sorted(op["result"]["upgraded"]) == sorted(ids)
        for sid in ids:
            back = api.get(f"/stores/{sid}").json()["back_link"]
            assert httpx.get(back + "/health").json()["version"] == "0.2.0"


def test_backup_download_restore_and_corruption(server: Server) -> None:
    with server.client() as api:
        sid, back = _create(api, "Respaldo")
        for i in range(3):
            add_order(back, f"r{i}")
        created = api.post(f"/stores/{sid}/backups")
        assert created.status_code == 201, created.text
        backup = created.json()
        assert backup["format"] == "sqlite" and len(backup["sha256"]) == 64
        download = api.get(f"/stores/{sid}/backups/{backup['id']}/download")
        assert download.status_code == 200
        assert hashlib.sha256(download.content).hexdigest() == backup["sha256"]
        assert download.headers["x-checksum-sha256"] == backup["sha256"]
        for i in range(3, 7):
            add_order(back, f"r{i}")
        assert len(orders(back)) == 7
        restored = api.post(f"/stores/{sid}/backups/{backup['id']}/restore")
        assert restored.status_code == 200, restored.text
        assert orders(back) == ["r0", "r1", "r2"]  # rows counted after the restore
        listed = api.get(f"/stores/{sid}/backups").json()
        pre = restored.json()["pre_restore_backup_id"]
        assert [b["id"] for b in listed] == [pre, backup["id"]]
        assert listed[0]["reason"] == "pre_restore"  # the way back, should the restore be wrong
        # a corrupted backup is refused by its checksum, and nothing changes
        path = next((server.data_dir / "backups" / sid).glob(f"{backup['id']}.*"))
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        refused = api.post(f"/stores/{sid}/backups/{backup['id']}/restore")
        assert refused.status_code == 409 and refused.json()["code"] == "backup_corrupted"
        assert api.get(f"/stores/{sid}/backups/{backup['id']}/download").status_code == 409
        assert orders(back) == ["r0", "r1", "r2"]
        # purge takes a final backup first
        assert api.delete(f"/stores/{sid}", params={"purge": "true"}).status_code == 204
        folder = server.data_dir / "backups" / sid
        finals = [p for p in folder.iterdir() if p != path and not p.name.startswith(pre)]
        assert len(finals) == 1 and finals[0].stat().st_size > 0


def test_logs_tail_follow_and_ownership(server: Server) -> None:
    with server.client() as api:
        sid, back = _create(api, "Bitacora")
        other, _ = _create(api, "Ajena")
        token = api.post("/tokens", json={"role": "store", "store_id": sid}).json()["token"]
        httpx.get(back + "/api/v1/orders", headers=back.headers)
        wait_for(lambda: "GET /api/v1/orders" in api.get(f"/stores/{sid}/logs").text)
        lines = api.get(f"/stores/{sid}/logs", params={"tail": 5}).text.splitlines()
        assert 0 < len(lines) <= 5
        assert all(line[:4].isdigit() and "T" in line[:20] for line in lines)  # UTC times
        assert api.get(f"/stores/{sid}/logs", params={"service": "db"}).status_code == 422
        since = datetime.now(UTC)
        time.sleep(0.05)
        httpx.get(back + "/api/v1/orders?after-since=1", headers=back.headers)
        wait_for(lambda: "after-since" in api.get(f"/stores/{sid}/logs").text)
        recent = api.get(f"/stores/{sid}/logs", params={"since": since.isoformat(), "tail": 1000})
        assert "after-since" in recent.text and "GET /api/v1/orders HTTP" not in recent.text
        future = (since + timedelta(hours=1)).isoformat()
        assert api.get(f"/stores/{sid}/logs", params={"since": future}).text == ""
        sup = api.get(f"/stores/{sid}/logs", params={"service": "supervisor"})
        assert sup.status_code == 200
    got: list[str] = []

    def follow() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=30) as client,
            client.stream(
                "GET", f"/api/v1/stores/{sid}/logs", params={"follow": "true", "tail": 0}
            ) as response,
        ):
            for line in response.iter_lines():
                got.append(line)
                if "marker-request" in line:
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:  # until the stream shows one
        httpx.get(back + "/api/v1/orders?marker-request=1", headers=back.headers)
        thread.join(0.5)
    assert any("marker-request" in line for line in got), got
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as own:
        assert own.get(f"/api/v1/stores/{other}/logs").status_code == 404


def test_cli_day2_commands(server: Server) -> None:
    with server.client() as api:
        sid, back = _create(api, "Consola")
    env: dict[str, Any] = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")},
        "STOREFLEET_URL": server.url,
        "STOREFLEET_TOKEN": server.token,
    }
    cli = [sys.executable, "-m", "storefleet.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    assert json.loads(run("stop", sid, "--json").stdout)["status"] == "stopped"
    assert json.loads(run("start", sid, "--json").stdout)["status"] == "started"
    backup = json.loads(run("backups", "create", sid, "--json").stdout)
    assert backup["id"] in run("backups", "list", sid, "--json").stdout
    out = server.data_dir / "copy.sqlite3"
    run("backups", "download", sid, backup["id"], "--output", str(out))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == backup["sha256"]
    httpx.get(back + "/api/v1/orders?from-cli=1", headers=back.headers)
    wait_for(lambda: "from-cli" in run("logs", sid, "--tail", "50").stdout)
    # health probes are not logged (they would be most of the log)
    assert "GET /health" not in run("logs", sid, "--tail", "1000").stdout


def test_scheduled_backups_with_retention(start_server: Callable[..., Server]) -> None:
    server = start_server(STOREFLEET_BACKUP_INTERVAL_S="1", STOREFLEET_BACKUP_RETENTION="2")
    with server.client() as api:
        sid, back = _create(api, "Programada")
        add_order(back, "nightly")

        def two_scheduled() -> bool:
            backups = api.get(f"/stores/{sid}/backups").json()
            return len(backups) == 2 and {b["reason"] for b in backups} == {"scheduled"}

        wait_for(two_scheduled, timeout_s=30)
        time.sleep(2.5)  # more rounds: retention keeps the newest two

        def pruned_to_two() -> bool:  # (a backup being written is briefly a third)
            done = [f for f in (server.data_dir / "backups" / sid).iterdir() if f.suffix != ".part"]
            return len(done) == 2 and len(api.get(f"/stores/{sid}/backups").json()) == 2

        wait_for(pruned_to_two, timeout_s=10)
        ops = [op for op in api.get(f"/stores/{sid}/operations").json() if op["kind"] == "backup"]
        assert len(ops) >= 4 and all(op["params"] == {"reason": "scheduled"} for op in ops)
