"""Long-lived responses (followed logs, the event stream) that can never pin the server.

- Each stream holds a slot of `StreamGate` (per token and in all) for as long as it runs: past
  the cap the request is a 429 before anything is read.
- Blocking reads run in a thread pool of their own (`StreamThreads`), never the one request
  handlers and authentication use, and each read returns within about a second (the runtime
  drivers' contract: a followed log yields None while idle). A client that goes away is thus
  noticed within a second and its stream closed, its threads and files released.
- Every `RECHECK_S` a stream checks its token again and ends once it is revoked or expired.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated

import anyio
from anyio import CapacityLimiter, to_thread
from fastapi import Depends, Query, Request

from storefleet.api.deps import PrincipalDep, ServicesDep
from storefleet.services.events import EventFeed, EventTail, EventView
from storefleet.services.streams import RECHECK_S

_END = object()
log = logging.getLogger(__name__)


class StreamThreads:
    """The thread pools of one app: streams' blocking reads, and authentication/audit."""

    def __init__(self, streams: int, auth: int) -> None:
        self.streams = CapacityLimiter(streams)
        self.auth = CapacityLimiter(auth)


def threads(request: Request) -> StreamThreads:
    pools: StreamThreads = request.app.state.threads
    return pools


def follow_slot(default: bool) -> Callable[..., AsyncIterator[bool]]:
    """A dependency giving the `follow` flag (with its default); a followed stream holds a slot
    of the stream caps from here until its response ends."""

    async def slot(
        principal: PrincipalDep,
        services: ServicesDep,
        follow: Annotated[bool, Query(description="Keep the stream open for new items")] = default,
    ) -> AsyncIterator[bool]:
        if not follow:
            yield False
            return
        with services.streams.hold(principal.token_id, "stream"):
            yield True

    return slot


async def token_alive(request: Request) -> Callable[[], Awaitable[bool]]:
    """A check a stream calls every RECHECK_S: is the caller's token still valid?"""
    services = request.app.state.services
    token_id = request.state.principal.token_id
    pool = threads(request).auth

    async def alive() -> bool:
        ok: bool = await to_thread.run_sync(services.tokens.active, token_id, limiter=pool)
        return ok

    return alive


Followed = Annotated[bool, Depends(follow_slot(False))]
FollowedByDefault = Annotated[bool, Depends(follow_slot(True))]
TokenAlive = Annotated[Callable[[], Awaitable[bool]], Depends(token_alive)]


async def lines_of(
    lines: Iterator[str | None],
    *,
    pool: CapacityLimiter,
    alive: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """Text lines from a blocking iterator (None: nothing new yet), read in `pool`; ends when
    the iterator ends or the token is no longer valid; always closes the iterator."""
    checked = time.monotonic()
    try:
        while True:
            item = await to_thread.run_sync(next, lines, _END, limiter=pool)
            if item is _END:
                return
            if time.monotonic() - checked >= RECHECK_S:
                checked = time.monotonic()
                if not await alive():
                    return
            if isinstance(item, str):
                yield (item + "\n").encode()
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(close, limiter=pool)


KEEPALIVE_S = 15.0  # a comment line this often on an idle event stream (proxies keep it open)


async def kept_alive(
    source: AsyncIterator[bytes | None],
    alive: Callable[[], Awaitable[bool]],
    *,
    keepalive: bytes,
    idle_s: float,
) -> AsyncIterator[bytes]:
    """An event stream's upkeep around `source`, which yields bytes to send or None when it has
    nothing now: a sleep of `idle_s` then, `keepalive` after KEEPALIVE_S without bytes, and the
    caller's token checked every RECHECK_S (the stream ends once it is not valid)."""
    checked = sent = time.monotonic()
    async for item in source:
        now = time.monotonic()
        if item is not None:
            sent = now
            yield item
            continue
        if now - sent >= KEEPALIVE_S:
            sent = now
            yield keepalive
        if now - checked >= RECHECK_S:
            checked = now
            if not await alive():
                return
        await anyio.sleep(idle_s)


class LiveEvents:
    """The event loop's side of an `EventFeed`: one task reads the registry for every followed
    event stream of the app (at once after this control plane committed events, else every
    `poll_s`) and wakes the streams waiting in `wait` when it read something. A stream costs
    nothing while no event comes, and one read serves them all."""

    def __init__(self, feed: EventFeed, *, poll_s: float, check_s: float) -> None:
        self.feed = feed
        self.poll_s = poll_s
        self.check_s = check_s
        self.followers = 0  # the registry is read only while some stream follows
        self._moved = anyio.Event()

    async def run(self) -> None:
        while True:
            if self.followers and self.feed.due(self.poll_s):
                head = self.feed.head
                try:
                    await to_thread.run_sync(self.feed.refresh, self.poll_s)
                except Exception:  # the registry failed this read: the next one tries again
                    log.exception("reading new events failed")
                    await anyio.sleep(self.poll_s)
                if self.feed.head != head:
                    moved, self._moved = self._moved, anyio.Event()
                    moved.set()
            await anyio.sleep(self.check_s)

    async def wait(self, seq: int, timeout_s: float) -> None:
        """Until the feed read past `seq`, or `timeout_s`."""
        moved = self._moved
        if self.feed.head == seq:
            with anyio.move_on_after(timeout_s):
                await moved.wait()


async def replayed(
    tail: EventTail, limiter: CapacityLimiter | None = None
) -> AsyncIterator[list[EventView]]:
    """What `tail` lets through up to the newest event, page after page, read from the registry
    by this stream (in threads of `limiter`)."""
    while True:
        yield await to_thread.run_sync(tail.poll, limiter=limiter)
        if tail.caught_up:
            return


async def followed(
    tail: EventTail, live: LiveEvents, *, wait_s: float, limiter: CapacityLimiter | None = None
) -> AsyncGenerator[list[EventView], None]:
    """What `tail` lets through from now on, batch after batch, for as long as the caller
    iterates: taken from the shared feed of `live`, and from the registry (in threads of
    `limiter`) when joining the feed and whenever the stream fell behind what the feed keeps.
    While nothing comes, an empty batch every `wait_s` (the caller's turn to check its own
    state)."""
    live.followers += 1
    try:
        if not live.feed.started:
            await to_thread.run_sync(live.feed.start, limiter=limiter)
        while True:
            # Join the shared feed: its position first, then the registry once more. What
            # committed before that position is in this read; what the feed reads after it
            # is given below; the tail delivers each event once.
            seq = live.feed.head
            yield await to_thread.run_sync(tail.poll, limiter=limiter)
            if not tail.caught_up:
                continue
            while (rows := live.feed.since(seq)) is not None:
                seq += len(rows)
                if rows:
                    yield tail.admit(rows)
                else:
                    await live.wait(seq, timeout_s=wait_s)
                    yield []
            # fell behind what the feed keeps: catch up from the registry, then join again
    finally:
        live.followers -= 1
