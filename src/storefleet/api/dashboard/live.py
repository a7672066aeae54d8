"""The dashboard's live parts: Server-Sent Events that htmx's `sse` extension swaps in.

`/ui/live` follows the event log (the same `EventTail` and shared feed as `GET /api/v1/events`,
so a store token sees its own store's events only, and an open dashboard reads nothing from the
registry while no event comes) and turns each batch into:
- `st-<store id>`: the store's status badge, as HTML (the stores table swaps it in place);
- `store-<store id>`: something happened to that store (its page refreshes its parts);
- `changed`: something happened in the fleet (the overview refreshes, at most once a second).
`/ui/stores/{id}/logs/stream` follows one service's log, one `line` event per line.
Both hold a stream slot of their token (the caps of every stream), end when the session's
token is revoked, and never read the registry or the runtime on the event loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from storefleet.api.dashboard.access import me, own, services_of
from storefleet.api.dashboard.render import env
from storefleet.api.streams import (
    FollowedByDefault,
    LiveEvents,
    TokenAlive,
    followed,
    kept_alive,
    lines_of,
    threads,
)
from storefleet.services.events import EventTail, EventView
from storefleet.services.wiring import Services

router = APIRouter(include_in_schema=False)
LOCAL_CHECK_S = 0.05
CHANGED_EVERY_S = 1.0
MAX_STORES_PER_BATCH = 200  # status badges sent for one batch (a burst: the rest via `changed`)
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# While an operation of these kinds runs, its store shows this word (the registry's phase may
# not say it yet: a background operation writes its intent when it starts).
IN_PROGRESS = {"deploy": "deploying", "undeploy": "undeploying"}


def _badges(services: Services, batch: list[EventView]) -> list[tuple[str, str]]:
    """(store id, status badge) for the stores the batch touched, in the batch's order: the
    word an operation in progress stands for as its events pass (so a deploy that starts and
    ends within one batch still shows `deploying`), then the store's status word now. Runs in
    a thread (it reads the registry and the runtime)."""
    template = env.get_template("_badge.html")
    words: dict[str, list[str]] = {}
    for event in batch:
        if event.store_id is None:
            continue
        passing = words.setdefault(event.store_id, [])
        word = IN_PROGRESS.get(str(event.data.get("kind", "")))
        running = event.type in ("operation.started", "operation.step")
        if running and word is not None and passing[-1:] != [word]:
            passing.append(word)
    out: list[tuple[str, str]] = []
    for sid, passing in list(words.items())[:MAX_STORES_PER_BATCH]:
        now = services.board.word(sid)
        if now is None:
            continue
        shown = passing if passing[-1:] == [now] else [*passing, now]
        out.extend((sid, template.render(status=word).strip()) for word in shown)
    return out


@router.get("/ui/live")
async def live(request: Request, follow: FollowedByDefault, alive: TokenAlive) -> StreamingResponse:
    services = services_of(request)
    who = me(request)
    tail = await to_thread.run_sync(
        lambda: EventTail(
            services.events, store_id=who.store_id if who.role == "store" else None, last=0
        ),
        limiter=threads(request).streams,
    )
    return StreamingResponse(
        (
            kept_alive(
                _live(request, services, tail),
                alive,
                keepalive=KEEPALIVE_COMMENT,
                idle_s=LOCAL_CHECK_S,
            )
            if follow
            else _nothing()
        ),
        media_type="text/event-stream",
        headers=HEADERS,
    )


async def _nothing() -> AsyncIterator[bytes]:
    yield KEEPALIVE_COMMENT


async def _live(
    request: Request, services: Services, tail: EventTail
) -> AsyncIterator[bytes | None]:
    pool = threads(request).streams
    live: LiveEvents = request.app.state.live_events
    changed_at, pending_change = 0.0, False
    yield KEEPALIVE_COMMENT  # the browser knows at once that the stream is open
    # (closed with this stream, not whenever it is collected: it counts as a follower)
    async with aclosing(followed(tail, live, wait_s=LOCAL_CHECK_S, limiter=pool)) as batches:
        async for batch in batches:
            if batch:
                badges = await to_thread.run_sync(_badges, services, batch, limiter=pool)
                for sid, badge in badges:
                    yield format_sse_event(data_str=badge, event=f"st-{sid}")
                    yield format_sse_event(data_str="", event=f"store-{sid}")
                pending_change = True
            if pending_change and time.monotonic() - changed_at >= CHANGED_EVERY_S:
                pending_change, changed_at = False, time.monotonic()
                yield format_sse_event(data_str="", event="changed")
            yield None


@router.get("/ui/stores/{store_id}/logs/stream")
async def log_stream(
    request: Request,
    store_id: uuid.UUID,
    service: Annotated[str, Query(max_length=50)] = "",
    tail: Annotated[int, Query(ge=0, le=1000)] = 200,
    *,
    _follow: FollowedByDefault,
    alive: TokenAlive,
) -> StreamingResponse:
    sid = own(request, store_id)
    services = services_of(request)
    pool = threads(request).streams
    lines = await to_thread.run_sync(
        lambda: services.logs.open(
            sid, service=service or None, tail=tail, since=None, follow=True
        ),
        limiter=pool,
    )
    return StreamingResponse(
        _log_events(lines_of(lines, pool=pool, alive=alive)),
        media_type="text/event-stream",
        headers=HEADERS,
    )


async def _log_events(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    template = env.get_template("_log_line.html")
    yield KEEPALIVE_COMMENT
    async for raw in lines:
        text = raw.decode(errors="replace").rstrip("\n")
        yield format_sse_event(data_str=template.render(line=text).strip(), event="line")
