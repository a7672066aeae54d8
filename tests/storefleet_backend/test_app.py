"""The reference store backend, in process (its real HTTP runs in the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from helpers import assert_docs_offline
from storefleet_backend.app import EventHub, make_http_app, make_ws_app
from storefleet_backend.config import BackendConfig, ConfigError, load
from storefleet_backend.orders import OrderBook, OrderIn

KEY = "k3y-of-store-s1-0123456789"
ORIGIN = "https://shop.example.com"


@pytest.fixture
def apps(tmp_path: Path) -> tuple[TestClient, TestClient]:
    key_file = tmp_path / "api_key"
    key_file.write_text(KEY)
    config = BackendConfig(
        "s1",
        "127.0.0.1",
        1,
        2,
        f"sqlite:///{tmp_path / 's.db'}",
        api_key_file=str(key_file),
        allowed_origins=(ORIGIN,),
    )
    book = OrderBook(config.database_url)
    book.create_schema()
    hub = EventHub()
    headers = {"X-Api-Key": KEY}
    return (
        TestClient(make_http_app(config, book, hub), headers=headers),
        TestClient(make_ws_app(config, book, hub), headers=headers),
    )


def test_orders_round_trip_and_events(apps: tuple[TestClient, TestClient]) -> None:
    http, ws = apps
    assert http.get("/health").json() == {"status": "ok", "store_id": "s1", "version": "0.1.0"}
    with ws.websocket_connect("/ws") as socket:
        assert socket.receive_json()["type"] == "hello"
        created = http.post(
            "/api/v1/orders", json={"amount": 100, "currency": "usd", "reference": "r1"}
        )
        assert created.status_code == 201 and created.json()["currency"] == "USD"
        assert socket.receive_json()["order"]["reference"] == "r1"
    assert [o["reference"] for o in http.get("/api/v1/orders").json()] == ["r1"]


@pytest.mark.parametrize(
    "body",
    [
        {"amount": -1, "currency": "EUR", "reference": "r"},
        {"amount": 1.5, "currency": "EUR", "reference": "r"},
        {"amount": 1, "currency": "EURO", "reference": "r"},
        {"amount": 1, "currency": "QQQ", "reference": "r"},
        {"amount": 1, "currency": "EUR", "reference": ""},
        {"amount": 1, "currency": "EUR", "reference": "a\nb"},
        {"amount": 1, "currency": "EUR", "reference": "r", "extra": True},
    ],
)
def test_bad_orders_are_refused(
    apps: tuple[TestClient, TestClient], body: dict[str, object]
) -> None:
    assert apps[0].post("/api/v1/orders", json=body).status_code == 422


def test_the_orders_api_needs_the_stores_key(
    apps: tuple[TestClient, TestClient], tmp_path: Path
) -> None:
    http, _ = apps
    order = {"amount": 1, "currency": "EUR", "reference": "r"}
    for headers in ({"X-Api-Key": ""}, {"X-Api-Key": "wrong"}, {"X-Api-Key": KEY + "x"}):
        assert http.get("/api/v1/orders", headers=headers).status_code == 401
        assert http.post("/api/v1/orders", json=order, headers=headers).status_code == 401
    bearer = {"X-Api-Key": "", "Authorization": f"Bearer {KEY}"}
    assert http.get("/api/v1/orders", headers=bearer).status_code == 200
    assert http.get("/health", headers={"X-Api-Key": ""}).status_code == 200  # probes: open
    # a rotated key takes effect without a restart
    (tmp_path / "api_key").write_text("the-new-key-9876543210")
    assert http.get("/api/v1/orders").status_code == 401
    rotated = {"X-Api-Key": "the-new-key-9876543210"}
    assert http.get("/api/v1/orders", headers=rotated).status_code == 200


def test_foreign_origins_are_refused(apps: tuple[TestClient, TestClient]) -> None:
    http, ws = apps
    evil = {"Origin": "https://evil.example.net"}
    assert http.get("/api/v1/orders", headers=evil).status_code == 403
    assert http.get("/api/v1/orders", headers={"Origin": ORIGIN}).status_code == 200
    with pytest.raises(WebSocketDisconnect), ws.websocket_connect("/ws", headers=evil) as socket:
        socket.receive_json()
    # a browser offers the key as a subprotocol (it can not set headers)
    with ws.websocket_connect(
        "/ws",
        headers={"Origin": ORIGIN, "X-Api-Key": ""},
        subprotocols=["apikey." + KEY],
    ) as socket:
        assert socket.receive_json()["type"] == "hello"
        assert socket.accepted_subprotocol == "apikey." + KEY


def test_the_websocket_needs_the_key(apps: tuple[TestClient, TestClient]) -> None:
    _, ws = apps
    for headers in ({"X-Api-Key": ""}, {"X-Api-Key": "nope"}):
        with (
            pytest.raises(WebSocketDisconnect),
            ws.websocket_connect("/ws", headers=headers) as socket,
        ):
            socket.receive_json()


def test_without_a_key_file_everything_is_refused(tmp_path: Path) -> None:
    config = BackendConfig("s2", "127.0.0.1", 1, 2, f"sqlite:///{tmp_path / 's.db'}")
    book = OrderBook(config.database_url)
    book.create_schema()
    http = TestClient(make_http_app(config, book, EventHub()))
    assert http.get("/api/v1/orders", headers={"X-Api-Key": ""}).status_code == 401


def test_config_reads_password_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss/word:1\n")
    config = load(
        {
            "STORE_ID": "s",
            "STORE_HTTP_PORT": "8000",
            "STORE_WS_PORT": "8001",
            "STORE_DATABASE_URL": "postgresql://store@db:5432/store",
            "STORE_DATABASE_PASSWORD_FILE": str(secret),
        }
    )
    assert config.database_url == "postgresql://store:p%40ss%2Fword%3A1@db:5432/store"
    assert "p%40ss" not in repr(config)
    with pytest.raises(ConfigError):
        load(
            {
                "STORE_ID": "s",
                "STORE_HTTP_PORT": "x",
                "STORE_WS_PORT": "1",
                "STORE_DATABASE_URL": "sqlite://",
            }
        )


def test_order_book_on_postgresql(pg_url: str) -> None:
    book = OrderBook(pg_url)
    book.create_schema()
    book.create_schema()  # idempotent
    assert book.ping()
    added = book.add(OrderIn(amount=5, currency="mxn", reference="pg-1"))
    (listed,) = book.list()
    assert listed.id == added.id and listed.currency == "MXN" and listed.created_at.tzinfo
    with pytest.raises(ValueError):
        OrderBook("mysql://nope")


def test_docs_load_with_no_internet(apps: tuple[TestClient, TestClient]) -> None:
    for client in apps:
        assert_docs_offline(client.get)
