"""Live events (Server-Sent Events), webhooks (admin), Prometheus metrics, per-store usage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from pydantic.json_schema import SkipJsonSchema

from storefleet.api.deps import (
    Admin,
    Operator,
    OwnedStore,
    PrincipalDep,
    ServicesDep,
    StatusDep,
    check_owner,
)
from storefleet.api.streams import (
    FollowedByDefault,
    LiveEvents,
    TokenAlive,
    followed,
    kept_alive,
    replayed,
)
from storefleet.errors import InvalidInputError, NotFoundError
from storefleet.services.events import (
    EVENT_PATTERNS,
    PATTERN_LIST,
    EventTail,
    EventView,
    check_patterns,
)
from storefleet.services.metrics import CONTENT_TYPE
from storefleet.services.schemas import UsageView
from storefleet.services.webhooks import DeliveryView, WebhookCreate, WebhookCreated, WebhookView

router = APIRouter()
POLL_S = 0.25
LOCAL_CHECK_S = 0.02
MAX_EVENT_ID = 2**31 - 1  # event ids are 32-bit integers in the registry


def _patterns(types: str | None) -> list[str]:
    patterns = types.split(",") if types is not None else []
    unknown = check_patterns(patterns)
    if unknown:
        raise InvalidInputError(
            f"types {unknown} are not event types or families; known: "
            f"{', '.join(EVENT_PATTERNS)} (comma-separated, no spaces)",
            code="unknown_event",
        )
    return patterns


def event_tail(
    services: ServicesDep,
    principal: PrincipalDep,
    store_id: uuid.UUID | None = None,
    operation_id: uuid.UUID | None = None,
    types: Annotated[
        str | None,
        Query(
            description="Comma-separated types or families (`operation.*`, `*`)",
            json_schema_extra={"pattern": PATTERN_LIST},
        ),
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="Replay events after this id")
    ] = None,
    last_event_id: Annotated[int | SkipJsonSchema[None], Header(ge=0, le=MAX_EVENT_ID)] = None,
    last: Annotated[
        int,
        Query(ge=0, le=10_000, description="Without `after`: replay the newest `last` first"),
    ] = 100,
) -> EventTail:
    """Checked before the stream starts, so that a bad request gets a proper error status."""
    sid = str(store_id) if store_id else None
    if principal.role == "store":
        if sid is not None:
            check_owner(principal, sid)
        sid = principal.store_id
    return EventTail(
        services.events,
        after=last_event_id if last_event_id is not None else after,
        store_id=sid,
        op_id=str(operation_id) if operation_id else None,
        types=_patterns(types),
        last=last,
    )


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    tags=["events"],
)
async def events(
    tail: Annotated[EventTail, Depends(event_tail)],
    follow: FollowedByDefault,
    alive: TokenAlive,
    request: Request,
) -> StreamingResponse:
    """Operation progress step by step, status changes and reconciler actions, as they happen.
    One rule for every client: the newest `last` (100) events first, or every retained event
    after `after` (or `Last-Event-ID`, to resume); then new ones as they come, or the end with
    `follow=false` (a replay is never cut: it is read page after page).
    A few followed streams per token at once (429 past the cap); a stream ends when its token
    is revoked or expires. A store token sees its own store's events only."""
    # Our own stream (not FastAPI's generator wrapper, whose keep-alive task logs a traceback
    # when a client goes away): a client that leaves cancels it cleanly at its next await.
    return StreamingResponse(
        # (the stream waits for new events itself: no sleep between its items)
        kept_alive(
            _event_stream(tail, follow, request.app.state.live_events),
            alive,
            keepalive=KEEPALIVE_COMMENT,
            idle_s=0,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: EventView) -> bytes:
    return format_sse_event(data_str=event.model_dump_json(), event=event.type, id=str(event.id))


async def _event_stream(
    tail: EventTail, follow: bool, live: LiveEvents
) -> AsyncIterator[bytes | None]:
    async for batch in replayed(tail):
        for event in batch:
            yield _sse(event)
    if not follow:
        return
    # (closed with this stream, not whenever it is collected: it counts as a follower)
    async with aclosing(followed(tail, live, wait_s=1.0)) as batches:
        async for batch in batches:
            for event in batch:
                yield _sse(event)
            if not batch:
                yield None


@router.get("/events/{event_id}", tags=["events"], dependencies=[Operator])
def event(
    event_id: Annotated[int, Path(ge=1, le=MAX_EVENT_ID)], services: ServicesDep
) -> EventView:
    found = services.events.get(event_id)
    if found is None:
        raise NotFoundError(f"event {event_id} does not exist (or was pruned)")
    return found


@router.post("/webhooks", status_code=201, tags=["webhooks"], dependencies=[Admin])
def create_webhook(body: WebhookCreate, services: ServicesDep) -> WebhookCreated:
    """Subscribe a URL to events. The signing secret is in this answer only."""
    if body.store_id is not None:
        services.stores.require(str(body.store_id))
    return services.webhooks.create(body)


@router.get("/webhooks", tags=["webhooks"], dependencies=[Admin])
def list_webhooks(services: ServicesDep) -> list[WebhookView]:
    return services.webhooks.all()


@router.get("/webhooks/{webhook_id}", tags=["webhooks"], dependencies=[Admin])
def get_webhook(webhook_id: uuid.UUID, services: ServicesDep) -> WebhookView:
    return services.webhooks.get(str(webhook_id))


@router.delete("/webhooks/{webhook_id}", status_code=204, tags=["webhooks"], dependencies=[Admin])
def delete_webhook(webhook_id: uuid.UUID, services: ServicesDep) -> Response:
    services.webhooks.delete(str(webhook_id))
    return Response(status_code=204)


@router.get("/webhooks/{webhook_id}/deliveries", tags=["webhooks"], dependencies=[Admin])
def webhook_deliveries(
    webhook_id: uuid.UUID,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryView]:
    """The delivery log: each event sent to this webhook, its attempts and their answers."""
    return services.webhooks.deliveries(str(webhook_id), limit)


@router.get("/stores/{store_id}/usage", tags=["stores"])
def store_usage(store_id: OwnedStore, status: StatusDep) -> UsageView:
    """CPU (percent of one core), memory and disk used by the store's stack, measured now."""
    return status.usage(store_id)


metrics_router = APIRouter(tags=["metrics"])


@metrics_router.get("/metrics", dependencies=[Operator], response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus exposition format (send the bearer token in the scrape config)."""
    return Response(content=services.metrics.exposition(), media_type=CONTENT_TYPE)
