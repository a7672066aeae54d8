"""The HTTP app (orders API) and the websocket app (order events) of one store."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi_offline import FastAPIOffline

from storefleet_backend import __version__
from storefleet_backend.access import (
    SUBPROTOCOL_PREFIX,
    KeyFile,
    key_matches,
    offered_key,
    origin_allowed,
)
from storefleet_backend.config import BackendConfig
from storefleet_backend.orders import Order, OrderBook, OrderIn


class EventHub:
    """Fans order events out to every connected websocket client of this process."""

    def __init__(self, max_queued: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._max_queued = max_queued

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._max_queued)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a slow client loses events, not us
                queue.put_nowait(event)


def _health(config: BackendConfig, book: OrderBook) -> Any:
    async def health() -> dict[str, str]:
        try:
            ok = await to_thread.run_sync(book.ping)
        except Exception as exc:
            raise HTTPException(503, f"database unreachable: {type(exc).__name__}") from exc
        if not ok:
            raise HTTPException(503, "database check failed")
        return {
            "status": "ok",
            "store_id": config.store_id,
            "version": config.version or __version__,
        }

    return health


def _guard(config: BackendConfig, keys: KeyFile) -> Any:
    """A dependency: the caller holds the store's API key and comes from no foreign origin."""

    async def guard(request: Request) -> None:
        if not origin_allowed(request.headers, config.allowed_origins):
            raise HTTPException(403, "this origin is not allowed (STORE_ALLOWED_ORIGINS)")
        if not key_matches(keys.current(), offered_key(request.headers)):
            raise HTTPException(
                401,
                "the store's API key is required: X-Api-Key: <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return guard


DOCS_ASSETS = "/docs/assets"  # where /docs and /redoc find their files


def make_http_app(config: BackendConfig, book: OrderBook, hub: EventHub) -> FastAPI:
    # /docs and /redoc load their files from the backend itself, not from a CDN
    app = FastAPIOffline(title=f"Store {config.store_id}", version="0.1.0", static_url=DOCS_ASSETS)
    app.get("/health")(_health(config, book))
    guarded = [Depends(_guard(config, KeyFile(config.api_key_file)))]

    @app.post("/api/v1/orders", status_code=201, dependencies=guarded)
    async def create_order(order: OrderIn) -> Order:
        created = await to_thread.run_sync(book.add, order)
        hub.publish({"type": "order.created", "order": created.model_dump(mode="json")})
        return created

    @app.get("/api/v1/orders", dependencies=guarded)
    async def list_orders() -> list[Order]:
        return await to_thread.run_sync(book.list)

    return app


def make_ws_app(config: BackendConfig, book: OrderBook, hub: EventHub) -> FastAPI:
    app = FastAPIOffline(
        title=f"Store {config.store_id} events", version="0.1.0", static_url=DOCS_ASSETS
    )
    app.get("/health")(_health(config, book))

    keys = KeyFile(config.api_key_file)

    @app.websocket("/ws")
    async def events(websocket: WebSocket) -> None:
        # refused before the handshake completes: a foreign page or a caller without the key
        # never gets a connection (the client sees HTTP 403)
        if not origin_allowed(websocket.headers, config.allowed_origins):
            await websocket.close(code=1008, reason="origin not allowed")
            return
        offered = offered_key(websocket.headers)
        if not key_matches(keys.current(), offered):
            await websocket.close(code=1008, reason="the store's API key is required")
            return
        protocols = [
            p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        ]
        chosen = next((p for p in protocols if p.startswith(SUBPROTOCOL_PREFIX)), None)
        await websocket.accept(subprotocol=chosen)
        queue = hub.subscribe()
        try:
            await websocket.send_json({"type": "hello", "store_id": config.store_id})
            while True:
                await websocket.send_json(await queue.get())
        except WebSocketDisconnect:
            pass
        finally:
            hub.unsubscribe(queue)

    return app
