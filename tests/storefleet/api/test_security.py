"""Tokens, roles, ownership on every route, audit log, rate limit, secrets never leaked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import Server, assert_docs_offline, kill_store_processes, store_body, wait_for
from storefleet.api.security import RateLimiter

PUBLIC = {"/health", "/docs", "/redoc", "/openapi.json"}
# the edge's public routes (no token: the edge asks, and anyone may fetch its CA)
EDGE_PUBLIC = {"/api/v1/edge/ca.pem", "/api/v1/edge/ask"}


def _routes(server: Server) -> list[tuple[str, str]]:
    schema = httpx.get(server.url + "/openapi.json").json()
    return [(m.upper(), p) for p, ms in schema["paths"].items() for m in ms]


def _fill(path: str, store_id: str, op_id: str, token_id: str) -> str:
    path = path.replace("{store_id}", store_id).replace("{operation_id}", op_id)
    path = path.replace("{webhook_id}", token_id).replace("{event_id}", "1")
    path = path.replace("{backup_id}", token_id)
    return path.replace("{token_id}", token_id)


def test_every_route_needs_a_valid_token(server: Server) -> None:
    some = str(uuid.uuid4())
    for method in ("GET", "POST", "PATCH", "DELETE", "PUT", "OPTIONS", "HEAD"):
        for path in [
            "/api/v1/stores/",
            f"/api/v1/stores/{some}",
            "/api/v1/countries",
            "/api/v1/tokens",
        ]:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
                response = httpx.request(method, server.url + path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
    for method, path in _routes(server):
        if path not in PUBLIC | EDGE_PUBLIC:
            url = server.url + _fill(path, some, some, some)
            assert httpx.request(method, url).status_code == 401, (method, path)
    for path in PUBLIC:
        assert httpx.get(server.url + path).status_code == 200
    # /docs loads with no internet: Swagger UI's files are this process's, public like /docs
    assert_docs_offline(lambda path: httpx.get(server.url + path))
    # the edge is off here: no CA to serve, and no host is approved (never a 401)
    assert httpx.get(server.url + "/api/v1/edge/ca.pem").status_code == 404
    ask = httpx.get(server.url + "/api/v1/edge/ask", params={"domain": "a.stores.localhost"})
    assert ask.status_code == 404


def test_roles_and_ownership_on_every_route(server: Server) -> None:
    with server.client() as admin:
        a = admin.post("/stores/?deploy=false", json=store_body(admin, "Dueña A")).json()["store"][
            "id"
        ]
        b = admin.post("/stores/?deploy=false", json=store_body(admin, "Ajena B")).json()["store"][
            "id"
        ]
        op_b = admin.post(f"/stores/{b}/deploy", params={"wait": "false"}).json()["id"]
        operator = admin.post("/tokens", json={"role": "operator"}).json()
        store_a = admin.post("/tokens", json={"role": "store", "store_id": a}).json()
        spare = admin.post("/tokens", json={"role": "operator"}).json()["id"]
    assert store_a["token"].startswith("sf_")

    reads_own = {
        "/api/v1/stores/{store_id}",
        "/api/v1/stores/{store_id}/deploy/status",
        "/api/v1/stores/{store_id}/operations",
        "/api/v1/stores/{store_id}/logs",
        "/api/v1/stores/{store_id}/api-key",
    }
    admin_only = {
        "/api/v1/tokens",
        "/api/v1/tokens/{token_id}",
        "/api/v1/audit",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{webhook_id}",
        "/api/v1/webhooks/{webhook_id}/deliveries",
    }
    checked = 0
    for method, path in _routes(server):
        if path in PUBLIC | EDGE_PUBLIC or (
            method == "DELETE" and path == "/api/v1/stores/{store_id}"
        ):
            continue  # deleting is covered below, once the walk is done
        for role, token in (("operator", operator["token"]), ("store", store_a["token"])):
            with server.client(token) as api:
                for target in (a, b):
                    url = _fill(path, target, op_b, spare)
                    url = url[len("/api/v1") :] if url.startswith("/api/v1") else server.url + url
                    kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PATCH") else {}
                    if path == "/api/v1/events":
                        kwargs["params"] = {"follow": "false"}  # the replay, then the end
                    code = api.request(method, url, **kwargs).status_code
                    checked += 1
                    if role == "operator":
                        if path in admin_only:
                            assert code == 403, (role, method, path, code)
                        else:
                            assert code not in (401, 403), (role, method, path, code)
                    elif method == "GET" and path in reads_own:
                        assert code == (200 if target == a else 404), (
                            role,
                            method,
                            path,
                            target,
                            code,
                        )
                    elif method == "GET" and path == "/api/v1/stores/{store_id}/usage":
                        # A's store is not running (409); B's does not exist for this token
                        assert code == (409 if target == a else 404), (role, path, target, code)
                    elif path == "/api/v1/stores/{store_id}/api-key/rotate":
                        # a store rotates its own key; another store does not exist for it
                        assert code == (200 if target == a else 404), (role, path, target, code)
                    elif method == "GET" and path == "/api/v1/events":
                        assert code == 200  # its own store's events only (tested elsewhere)
                    elif method == "GET" and path == "/api/v1/operations/{operation_id}":
                        assert code == 404  # B's operation does not exist for A's token
                    elif method == "GET" and path in ("/api/v1/countries", "/api/v1/stores/"):
                        assert code == 200
                    else:
                        assert code in (403, 404), (role, method, path, target, code)
                        if "{store_id}" not in path or target == a:
                            assert code == 403, (role, method, path, target, code)
    assert checked > 50
    with server.client(store_a["token"]) as api:
        assert [s["id"] for s in api.get("/stores/").json()] == [a]
        assert api.delete(f"/stores/{b}").status_code in (403, 404)
    with server.client(operator["token"]) as api:
        assert api.delete(f"/stores/{a}").status_code == 204


def test_token_life_cycle(server: Server) -> None:
    with server.client() as admin:
        created = admin.post("/tokens", json={"role": "operator"})
        assert created.status_code == 201
        token = created.json()["token"]
        listed = admin.get("/tokens").json()
        assert token not in str(listed) and any(t["id"] == created.json()["id"] for t in listed)
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        short = admin.post("/tokens", json={"role": "operator", "expires_at": soon}).json()["token"]
        assert admin.post("/tokens", json={"role": "store"}).status_code == 422
        assert admin.post("/tokens", json={"role": "root"}).status_code == 422
        # a well-formed id of no store: the store is not found (the body itself is valid)
        assert (
            admin.post("/tokens", json={"role": "store", "store_id": str(uuid.uuid4())}).status_code
            == 404
        )
        assert admin.post("/tokens", json={"role": "store", "store_id": "x"}).status_code == 422
    with server.client(token) as api:
        assert api.get("/stores/").status_code == 200
        assert api.post("/tokens", json={"role": "admin"}).status_code == 403
    with server.client(short) as api:
        assert api.get("/stores/").status_code == 200
        time.sleep(2.5)
        assert api.get("/stores/").status_code == 401
    with server.client() as admin:
        assert admin.delete(f"/tokens/{created.json()['id']}").status_code == 204
    with server.client(token) as api:
        assert api.get("/stores/").status_code == 401


def test_first_start_writes_the_admin_token_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    server = Server(data_dir)
    del server.env["STOREFLEET_ADMIN_TOKEN"]
    server.start()
    try:
        token_file = data_dir / "admin-token"
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600
        with server.client(token) as api:
            assert api.get("/stores/").status_code == 200
        assert str(token_file) in server.log() and token not in server.log()
    finally:
        server.stop()
    again = Server(data_dir)
    del again.env["STOREFLEET_ADMIN_TOKEN"]
    again.start()
    try:
        assert (data_dir / "admin-token").read_text().strip() == token
        with again.client(token) as api:
            assert api.get("/stores/").status_code == 200
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STOREFLEET_ADMIN_TOKEN", ""),
        ("STOREFLEET_ADMIN_TOKEN", "admin"),
        ("STOREFLEET_ADMIN_TOKEN", "changeme-changeme-changeme-changeme"),
        ("STOREFLEET_ADMIN_TOKEN", "a" * 40),
        ("STOREFLEET_SECRET_KEY", "A" * 43 + "="),
        ("STOREFLEET_SECRET_KEY", ""),
    ],
)
def test_server_refuses_weak_tokens_and_keys(tmp_path: Path, name: str, value: str) -> None:
    server = Server(tmp_path / "var", {name: value})
    try:
        with pytest.raises(RuntimeError, match=r"too short or well known|not a valid"):
            server.start(timeout_s=30)
    finally:
        server.stop()


def test_audit_log_and_rate_limit(start_server: Callable[..., Server]) -> None:
    server = start_server(STOREFLEET_RATE_LIMIT_PER_MINUTE="60", STOREFLEET_RATE_LIMIT_BURST="3")
    with server.client() as admin:
        operator = admin.post("/tokens", json={"role": "operator"}).json()
    with server.client(operator["token"]) as api:
        codes = [
            api.post("/stores/?deploy=false", json=store_body(api, f"Limite {i}")).status_code
            for i in range(4)
        ]
        assert codes == [201, 201, 201, 429]
        limited = api.post("/stores/?deploy=false", json=store_body(api, "Otra"))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert api.get("/stores/").status_code == 200  # reads are not limited
        sid = api.get("/stores/").json()[0]["id"]
    with server.client() as admin:
        entries = admin.get("/audit", params={"token_id": operator["id"]}).json()
        assert [e["outcome"] for e in entries][:2] == ["denied", "denied"]
        assert {e["action"] for e in entries} == {"POST /api/v1/stores/"}
        assert all(e["role"] == "operator" for e in entries)
        time.sleep(1.1)
        admin.patch(f"/stores/{sid}", json={"tokens_disponibles": 5}).raise_for_status()
        mine = admin.get("/audit", params={"store_id": sid}).json()
        assert mine[0]["action"] == "PATCH /api/v1/stores/{id}" and mine[0]["outcome"] == "ok"
        assert mine[0]["store_id"] == sid
        httpx.post(server.url + "/api/v1/stores/", json={})  # no token: recorded as denied
        denied = admin.get("/audit", params={"outcome": "denied"}).json()
        assert any(e["token_id"] is None and e["status_code"] == 401 for e in denied)
        audit_text = str(admin.get("/audit", params={"limit": 1000}).json())
    assert operator["token"] not in audit_text and server.token not in audit_text


def test_canary_secrets_never_leak(start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server()
    with server.client() as admin:
        created = admin.post("/tokens", json={"role": "operator"}).json()
        canary = created["token"]
        with server.client(canary) as api:
            sid = api.post("/stores/", json=store_body(api, "Canario")).json()["store"]["id"]
            outputs = [
                api.get("/stores/").text,
                api.get(f"/stores/{sid}/deploy/status").text,
                api.get(f"/stores/{sid}/operations").text,
            ]
        outputs += [admin.get("/tokens").text, admin.get("/audit").text]
    for text in outputs:
        assert canary not in text and server.token not in text
    assert canary not in server.log() and server.token not in server.log()
    ps = subprocess.run(["ps", "auxww"], capture_output=True, text=True, check=True).stdout
    assert canary not in ps and server.token not in ps
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert canary.encode() not in data and server.token.encode() not in data, path


def test_rotate_key_re_encrypts_every_secret(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet, InvalidToken

    from storefleet.registry.db import Registry
    from storefleet.services.secrets import KEY_FILE, SecretStore, load_keys

    data_dir = tmp_path / "var"
    registry = Registry.open(f"sqlite:///{data_dir / 'storefleet.db'}")
    from storefleet.registry.models import Store

    with registry.transaction() as session:
        session.add(
            Store(
                id="s1",
                nombre="s1",
                nombre_key="s1",
                country_id="x",
                tokens_disponibles=0,
                plan="basic",
            )
        )
    old_key = load_keys(data_dir, None)
    before = SecretStore(registry, old_key).ensure("s1", ("db_password",))
    registry.close()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")},
        "STOREFLEET_DATA_DIR": str(data_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "storefleet.cli", "secrets", "rotate-key"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.search(r"re-encrypted 1 secret", done.stdout)
    new_key = (data_dir / KEY_FILE).read_bytes().strip()
    assert [new_key] != old_key and (data_dir / KEY_FILE).stat().st_mode & 0o777 == 0o600
    registry = Registry.open(f"sqlite:///{data_dir / 'storefleet.db'}")
    assert SecretStore(registry, [new_key]).ensure("s1", ("db_password",)) == before
    from storefleet.registry.models import StoreSecret

    with registry.transaction() as session:
        row = session.get(StoreSecret, ("s1", "db_password"))
        assert row is not None
        with pytest.raises(InvalidToken):
            Fernet(old_key[0]).decrypt(row.ciphertext)
    registry.close()


def test_unauthenticated_floods_are_limited_and_aggregated(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        STOREFLEET_AUTH_FAILURES_PER_MINUTE="1", STOREFLEET_AUTH_FAILURES_BURST="5"
    )
    with server.client() as admin:
        admin.get("/stores/").raise_for_status()  # the admin token is checked (cached)
        codes = [
            httpx.post(
                server.url + "/api/v1/stores/", json={}, headers={"Authorization": "Bearer bad"}
            ).status_code
            for _ in range(50)
        ]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
        flooded = httpx.get(server.url + "/api/v1/stores/")
        assert flooded.status_code == 429 and int(flooded.headers["retry-after"]) >= 1
        assert admin.get("/stores/").status_code == 200  # a checked token still passes
        denied = admin.get("/audit", params={"outcome": "denied", "limit": 1000}).json()
        flood = [e for e in denied if e["token_id"] is None]
        # 51 refused requests are 2 audit entries (per address and status), with their counts
        assert {(e["status_code"], e["count"]) for e in flood} == {(401, 5), (429, 46)}
        assert all(e["client"] == "127.0.0.1" for e in flood)
        # paging: newest first, `before` goes back, the header names the next page
        for _ in range(3):
            admin.patch("/stores/" + str(uuid.uuid4()), json={"plan": "basic"})
        first = admin.get("/audit", params={"limit": 2})
        assert len(first.json()) == 2
        following = admin.get(
            "/audit", params={"limit": 2, "before": first.headers["x-next-before"]}
        ).json()
        assert following[0]["id"] < first.json()[-1]["id"]


def test_a_revoked_configured_admin_token_is_refused_clearly(tmp_path: Path) -> None:
    server = Server(tmp_path / "var").start()
    try:
        with server.client() as admin:
            second = admin.post("/tokens", json={"role": "admin"}).json()
            mine = next(t for t in admin.get("/tokens").json() if t["id"] != second["id"])
        with server.client(second["token"]) as other:
            assert other.delete(f"/tokens/{mine['id']}").status_code == 204
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="was revoked"):
        server.start()
    assert "IntegrityError" not in server.log() and "UNIQUE" not in server.log()


def test_data_dir_and_registry_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    server = Server(data_dir, {"STOREFLEET_PROCESS_STORE_USERS": "off"}).start()
    try:
        assert data_dir.stat().st_mode & 0o777 == 0o700
        assert (data_dir / "storefleet.db").stat().st_mode & 0o777 == 0o600
        assert (data_dir / "secret.key").stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()


def test_a_deleted_stores_tokens_are_revoked_with_it(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Borrada")).json()["store"]
        token = api.post("/tokens", json={"role": "store", "store_id": sid["id"]}).json()
        with server.client(token["token"]) as own:
            assert own.get("/events", params={"follow": "false", "after": 0}).status_code == 200
        assert api.delete(f"/stores/{sid['id']}").status_code == 204
        listed = {t["id"]: t for t in api.get("/tokens").json()}
        assert listed[token["id"]]["revoked_at"] is not None
    with server.client(token["token"]) as own:
        wait_for(
            lambda: own.get("/events", params={"follow": "false", "after": 0}).status_code == 401,
            timeout_s=10,
        )


def _backend_uid(server: Server, sid: str) -> int:
    state = server.data_dir / "stores" / sid / "deploy" / "state.json"
    child = json.loads(state.read_text())["child_pid"]
    return Path(f"/proc/{child}").stat().st_uid


def test_the_process_runtime_says_what_it_isolates(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Aislada")).json()["store"]["id"]
    uid = _backend_uid(server, sid)
    warned = "isolates processes, not users" in server.log()
    if uid == os.geteuid():  # no store users here: the log says so plainly
        assert warned
    else:  # a user of its own, and its data is its own
        assert uid >= 100_000 and not warned
        data = server.data_dir / "stores" / sid / "data"
        assert (data.stat().st_uid, data.stat().st_mode & 0o777) == (uid, 0o700)


def test_store_users_on_is_refused_clearly_when_it_can_not_hold(tmp_path: Path) -> None:
    server = Server(tmp_path / "var", {"STOREFLEET_PROCESS_STORE_USERS": "on"})
    try:
        server.start()
    except RuntimeError as exc:
        assert "STOREFLEET_PROCESS_STORE_USERS=on, but" in str(exc)
        assert "Traceback" not in server.log()
    else:  # it holds on this machine: stores run as users of their own
        try:
            with server.client() as api:
                sid = api.post("/stores/", json=store_body(api, "Propia")).json()["store"]["id"]
            assert _backend_uid(server, sid) >= 100_000
        finally:
            server.stop()
            kill_store_processes(server.data_dir)


def test_rate_limits_are_one_for_every_worker_and_keep_a_bounded_table(tmp_path: Path) -> None:
    """Two limiters on one file stand for two worker processes: a token's burst is spent in
    both together. However many keys come (addresses of a flood), the table keeps its size."""
    path = tmp_path / "shared" / "rate-limits"
    here, there = RateLimiter(60, 3, path=path), RateLimiter(60, 3, path=path)
    assert [limiter.take("token-a") for limiter in (here, there, here)] == [0, 0, 0]
    assert there.take("token-a") > 0 and here.peek("token-a") > 0
    assert here.peek("token-b") == 0  # its own bucket
    small = tmp_path / "small"
    flooded = RateLimiter(60, 1, path=small, slots=64)
    for i in range(5000):
        flooded.take(f"203.0.113.{i}")
    assert small.stat().st_size == 64 * 32
    assert flooded.take("203.0.113.4999") > 0  # the newest keys keep their buckets
