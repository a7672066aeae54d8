"""Events: what happened, in the registry, for the SSE stream and for webhooks.

An event is written in the same transaction as the change it reports (an operation step, a
status change), and so are the webhook deliveries it fans out to: an event is never announced
for a change that did not commit, and a committed event always reaches its webhooks.

Types:
- `operation.started` / `operation.step` / `operation.finished`: an operation's progress;
- `store.created`; `store.status`: the status word of a store changed (`from`, `to`, `detail`);
- `reconciler.action`: the reconciler acted on a store.

Readers tail the table by id. Ids are handed out at insert but transactions commit in any
order, so `EventTail` keeps re-reading a short window below the newest id it has seen: an event
whose transaction commits late (by up to `GRACE_S`) is still delivered, once.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy import event as orm_event
from sqlalchemy.orm import Session

from storefleet.registry.db import Registry
from storefleet.registry.models import Event, Webhook, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "operation.started",
    "operation.step",
    "operation.finished",
    "store.created",
    "store.status",
    "reconciler.action",
)
# What a subscription or a stream filter may name: a type, a family (`operation.*`) or `*`.
EVENT_PATTERNS = (
    "*",
    *sorted({t.split(".")[0] + ".*" for t in EVENT_TYPES}),
    *EVENT_TYPES,
)
EventPattern = Annotated[str, Field(json_schema_extra={"enum": list(EVENT_PATTERNS)})]
# A comma-separated list of those (the `types` query parameter), as the schema states it.
PATTERN_LIST = "^(?:{p})(?:,(?:{p}))*$".format(p="|".join(re.escape(p) for p in EVENT_PATTERNS))
GRACE_S = 5.0


class EventView(BaseModel):
    id: int
    type: str
    at: datetime
    store_id: str | None
    op_id: str | None
    data: dict[str, Any]


def event_view(row: Event) -> EventView:
    return EventView(
        id=row.id,
        type=row.type,
        at=row.at,
        store_id=row.store_id,
        op_id=row.op_id,
        data=json.loads(row.data),
    )


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """`*`, an exact type, or a prefix pattern such as `operation.*`."""
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def check_patterns(patterns: Sequence[str]) -> list[str]:
    """Patterns that are none of `EVENT_PATTERNS` (a typo would silently never fire)."""
    return [p for p in patterns if p not in EVENT_PATTERNS]


class EventLog:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # Told once a transaction that added deliveries committed (wakes the deliverer).
        self._delivery_listeners: list[Callable[[], None]] = []
        # Grows each time a transaction of this control plane that wrote events commits:
        # local readers (SSE streams) look at it to read at once instead of at their next poll.
        self.committed = 0

    def _after_commit(self, session: Session) -> None:
        self.committed += 1
        if session.info.pop("sf_deliveries", False):
            for listener in self._delivery_listeners:
                listener()

    def on_deliveries(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a transaction that added webhook deliveries commits."""
        self._delivery_listeners.append(listener)

    def emit(
        self,
        session: Session,
        type_: str,
        *,
        store_id: str | None = None,
        op_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Record an event inside the caller's transaction, with its webhook deliveries."""
        event = Event(
            type=type_, store_id=store_id, op_id=op_id, data=json.dumps(data or {}), at=utcnow()
        )
        session.add(event)
        session.flush()  # the id
        if not session.info.get("sf_events"):
            session.info["sf_events"] = True
            orm_event.listen(session, "after_commit", self._after_commit, once=True)
        fanned = False
        for hook in session.scalars(select(Webhook)):
            if hook.store_id is not None and hook.store_id != store_id:
                continue
            if matches(json.loads(hook.events), type_):
                session.add(
                    WebhookDelivery(
                        id=str(uuid.uuid4()),
                        webhook_id=hook.id,
                        event_id=event.id,
                        event_type=type_,
                        next_attempt_at=event.at,
                    )
                )
                fanned = True
        if fanned:
            session.info["sf_deliveries"] = True

    def publish(
        self,
        type_: str,
        *,
        store_id: str | None = None,
        op_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Record an event in a transaction of its own."""
        with self.registry.transaction() as session:
            self.emit(session, type_, store_id=store_id, op_id=op_id, data=data)

    def after(
        self,
        after_id: int,
        *,
        store_id: str | None = None,
        op_id: str | None = None,
        types: Sequence[str] = (),
        limit: int = 500,
    ) -> list[EventView]:
        query = select(Event).where(Event.id > after_id).order_by(Event.id).limit(limit)
        if store_id is not None:
            query = query.where(Event.store_id == store_id)
        if op_id is not None:
            query = query.where(Event.op_id == op_id)
        with self.registry.transaction() as session:
            rows = [event_view(e) for e in session.scalars(query)]
        return [r for r in rows if not types or matches(types, r.type)]

    def get(self, event_id: int) -> EventView | None:
        with self.registry.transaction() as session:
            row = session.get(Event, event_id)
            return event_view(row) if row is not None else None

    def last_id(self) -> int:
        with self.registry.transaction() as session:
            return int(session.scalar(select(func.max(Event.id))) or 0)

    def floor_for_last(
        self, count: int, *, store_id: str | None = None, op_id: str | None = None
    ) -> int:
        """The id after which the newest `count` events (of a store, an operation) follow."""
        if count <= 0:
            return self.last_id()
        query = select(Event.id).order_by(Event.id.desc()).limit(count)
        if store_id is not None:
            query = query.where(Event.store_id == store_id)
        if op_id is not None:
            query = query.where(Event.op_id == op_id)
        with self.registry.transaction() as session:
            ids = list(session.scalars(query))
        return (min(ids) - 1) if len(ids) == count else 0

    def prune(self, older_than_s: float) -> int:
        """Forget events older than the retention (their deliveries keep their own log)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self.registry.transaction() as session:
            result = session.execute(delete(Event).where(Event.at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)


PAGE = 1000  # events read at once; a replay reads page after page until it is caught up


class EventTail:
    """Follows the events after a given id, each delivered once (see the module docstring)."""

    def __init__(
        self,
        events: EventLog,
        *,
        after: int | None = None,
        store_id: str | None = None,
        op_id: str | None = None,
        types: Sequence[str] = (),
        last: int = 0,
    ) -> None:
        self.events = events
        self.store_id = store_id
        self.op_id = op_id
        self.types = tuple(types)
        # without `after`: the newest `last` events first (the same rule for every client)
        self.floor = (
            events.floor_for_last(last, store_id=store_id, op_id=op_id) if after is None else after
        )
        self._seen: dict[int, float] = {}
        self.caught_up = False  # the last read reached the newest event

    def _read(self, after: int) -> list[EventView]:
        rows = self.events.after(after, store_id=self.store_id, op_id=self.op_id, limit=PAGE)
        self.caught_up = len(rows) < PAGE
        return rows

    def poll(self) -> list[EventView]:
        """The events read from the registry that were not delivered yet."""
        rows = self._read(self.floor)
        if len(rows) == PAGE and all(r.id in self._seen for r in rows):  # a burst: skip ahead
            rows = self._read(max(self._seen))
        return self.admit(rows)

    def admit(self, rows: Sequence[EventView]) -> list[EventView]:
        """Of `rows` (from the registry, or from an `EventFeed`), the ones this tail's filters
        let through that it did not deliver yet; they count as delivered from now."""
        now = time.monotonic()
        rows = [
            r
            for r in rows
            if r.id > self.floor
            and (self.store_id is None or r.store_id == self.store_id)
            and (self.op_id is None or r.op_id == self.op_id)
        ]
        fresh = [r for r in rows if r.id not in self._seen]
        for row in fresh:
            self._seen[row.id] = now
        settled = [i for i, seen_at in self._seen.items() if now - seen_at > GRACE_S]
        if settled:
            self.floor = max(self.floor, max(settled))
            self._seen = {i: t for i, t in self._seen.items() if i > self.floor}
        return [r for r in fresh if not self.types or matches(self.types, r.type)]


class EventFeed:
    """One reader of the registry's newest events for every followed stream of this control
    plane: each stream takes what is new from here instead of querying the registry itself, so
    that a hundred streams cost one read per change, not a hundred.

    The feed numbers what it read (its own sequence, since ids commit out of order) and keeps
    the newest `capacity`; a stream that fell further behind reads the registry on its own
    again (`EventTail.poll`) until it caught up (nothing is skipped). Each stream keeps its
    `EventTail` to filter and to deliver each event once."""

    def __init__(self, events: EventLog, capacity: int = 2000) -> None:
        self.events = events
        self.capacity = capacity
        self.head = 0  # the sequence number of the newest event read
        self._ring: deque[tuple[int, EventView]] = deque(maxlen=capacity)
        self._tail: EventTail | None = None
        self._reading = threading.Lock()  # one registry read at a time
        self._kept = threading.Lock()  # the ring and head: held for moments only
        self._committed = -1
        self._polled = 0.0

    @property
    def started(self) -> bool:
        return self._tail is not None

    def start(self) -> None:
        """Take the newest event as where the feed starts reading (once). A stream joins the
        feed only after this: an event committed between the stream's own read and a later
        start would be in neither."""
        with self._reading:
            if self._tail is None:
                self._tail = EventTail(self.events, last=0)

    def due(self, poll_s: float) -> bool:
        """Whether `refresh` would read the registry now."""
        return self._committed != self.events.committed or time.monotonic() - self._polled >= poll_s

    def refresh(self, poll_s: float) -> int:
        """Read the registry if this control plane committed events since the last read or
        `poll_s` passed (events of other control planes). Returns `head`."""
        with self._reading:
            if not self.due(poll_s):
                return self.head
            self._committed, self._polled = self.events.committed, time.monotonic()
            if self._tail is None:  # from the newest event on
                self._tail = EventTail(self.events, last=0)
            while True:
                rows = self._tail.poll()
                with self._kept:
                    for row in rows:
                        self.head += 1
                        self._ring.append((self.head, row))
                if self._tail.caught_up:
                    return self.head

    def since(self, seq: int) -> list[EventView] | None:
        """The events read after sequence number `seq`, oldest first; None if some of them
        are no longer kept (read the registry instead). Never waits for a registry read."""
        with self._kept:
            if seq >= self.head:
                return []
            oldest = self._ring[0][0] if self._ring else self.head + 1
            if seq + 1 < oldest:
                return None
            return [row for _, row in itertools.islice(self._ring, seq + 1 - oldest, None)]
