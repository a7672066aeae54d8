"""Webhooks: subscribers to events, signed deliveries, retries with back-off, a delivery log.

Deliveries are created with their event (see `events.py`). A deliverer thread per control
plane claims due deliveries (a claim token with an expiry, so that two control planes never
send the same attempt and a crashed one's claims return), POSTs them outside any transaction
and records the attempt. A failed attempt (no answer, or a status outside 2xx) is retried after
`retry_initial_s * 2**(attempts-1)` seconds (capped), until `max_attempts`.

Signature (`Storefleet-Signature: t=<unix seconds>,v1=<hex>`): HMAC-SHA256 with the webhook's
secret over `"<t>." + body`. A receiver recomputes it, compares in constant time and refuses
old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import CursorResult, delete, or_, select, update

from storefleet.backoff import Backoff
from storefleet.errors import (
    ConcurrentChangeError,
    InvalidInputError,
    NotFoundError,
    StorefleetError,
)
from storefleet.registry.db import Registry
from storefleet.registry.models import DeliveryState, Event, Webhook, WebhookDelivery, utcnow
from storefleet.services.events import (
    EVENT_PATTERNS,
    EventLog,
    EventPattern,
    EventView,
    check_patterns,
    event_view,
)
from storefleet.services.metrics import Metrics
from storefleet.services.secrets import SecretStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Storefleet-Signature"
MAX_URL = 2048
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
# RFC 3986's IPv6address, alternative by alternative.
_IPV6 = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
# What a webhook URL may be, published in the schema and enforced by `check_url` alike: http(s),
# a DNS name, an IPv4 address or a bracketed IPv6 one (no credentials), an optional port, then
# a path/query without spaces or control characters. The characters refused are spelled out
# (no `\s`): Python's `\s` and JSON Schema's (ECMA-262) differ (U+0085 is one in Python only,
# U+FEFF in ECMA only), and the schema must say exactly what `check_url` does.
_REFUSED = r"\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
URL_PATTERN = (
    rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*|\[{_IPV6}\])(?::{_PORT})?"
    rf"(?:[/?#][^{_REFUSED}]*)?$"
)
_URL = re.compile(URL_PATTERN)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Storefleet-Signature` header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse old timestamps."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL, json_schema_extra={"pattern": URL_PATTERN})
    events: list[EventPattern] = Field(min_length=1, max_length=len(EVENT_PATTERNS))
    store_id: uuid.UUID | None = None


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[str]
    store_id: str | None
    created_at: datetime


class WebhookCreated(WebhookView):
    secret: str  # shown once


class AttemptView(BaseModel):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryView(BaseModel):
    id: str
    webhook_id: str
    event_id: int
    event_type: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    log: list[AttemptView]


def _view(hook: Webhook) -> WebhookView:
    return WebhookView(
        id=hook.id,
        url=hook.url,
        events=json.loads(hook.events),
        store_id=hook.store_id,
        created_at=hook.created_at,
    )


def _delivery_view(row: WebhookDelivery) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        event_type=row.event_type,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.state == DeliveryState.PENDING else None,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        log=[AttemptView.model_validate(a) for a in json.loads(row.log)],
    )


def check_url(url: str) -> str:
    if len(url) > MAX_URL or not _URL.fullmatch(url):
        raise InvalidInputError(
            f"url must be an http(s) URL of at most {MAX_URL} characters: a DNS name or an IP "
            "address ([...] for IPv6), an optional port, no credentials, no spaces or control "
            "characters",
            code="bad_url",
        )
    return url


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetPolicy:
    """Which addresses a webhook may be sent to: public ones, and those of the networks the
    operator allowed (`STOREFLEET_WEBHOOK_ALLOW_NETS`). Loopback, link-local (the cloud
    metadata address 169.254.169.254), private, shared, ULA, multicast and reserved addresses
    are refused, also when a name resolves to one or an IPv6 address maps an IPv4 one.
    A delivery resolves its host once, checks every address, and connects to a checked one."""

    def __init__(self, allowed: list[Network] | None = None) -> None:
        self.allowed = list(allowed or [])

    def permits(self, address: Address) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        if any(address in net for net in self.allowed if net.version == address.version):
            return True
        return address.is_global and not address.is_multicast

    def resolve(self, host: str, port: int) -> list[Address]:
        """The host's addresses (an IP literal is its own); InvalidInputError when none
        resolves or any is refused."""
        try:
            return self._check(host, [ipaddress.ip_address(host)])
        except ValueError:
            pass
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            return self._check(host, [ipaddress.ip_address("127.0.0.1")])
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidInputError(f"webhook host {host!r} does not resolve: {exc}") from exc
        found = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))
        return self._check(host, found)

    def _check(self, host: str, addresses: list[Address]) -> list[Address]:
        refused = [a for a in addresses if not self.permits(a)]
        if refused or not addresses:
            raise InvalidInputError(
                f"webhook host {host!r} is {refused[0] if refused else 'no address'}: loopback, "
                "link-local, private and other non-public addresses are refused unless their "
                "network is in STOREFLEET_WEBHOOK_ALLOW_NETS",
                code="webhook_address_refused",
            )
        return addresses

    def check_url(self, url: str) -> None:
        """At subscription: a URL whose host is, or names, a refused address is refused. A
        name that does not resolve now is accepted (it is resolved again at each delivery)."""
        parts = urlsplit(check_url(url))
        host = parts.hostname or ""
        try:
            self.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except InvalidInputError as exc:
            if "does not resolve" not in exc.message:
                raise

    def pinned(self, url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The URL rewritten to a checked address, with the Host header and TLS server name of
        the original host: what a delivery connects to (no second resolution in between)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
        address = self.resolve(host, port or (443 if parts.scheme == "https" else 80))[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        netloc = literal + (f":{port}" if port else "")
        pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        host_header = parts.netloc.rsplit("@", 1)[-1]
        extensions: dict[str, Any] = {"sni_hostname": host} if parts.scheme == "https" else {}
        return pinned, {"Host": host_header}, extensions


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial_s: float = 1.0
    max_s: float = 300.0
    timeout_s: float = 5.0

    def delay(self, attempts: int) -> float:
        return Backoff(self.initial_s, self.max_s).delay(attempts)


class WebhookService:
    def __init__(
        self,
        registry: Registry,
        secrets_store: SecretStore,
        events: EventLog,
        metrics: Metrics,
        policy: RetryPolicy,
        targets: TargetPolicy | None = None,
    ) -> None:
        self.targets = targets or TargetPolicy()
        self.registry = registry
        self.secrets = secrets_store
        self.events = events
        self.metrics = metrics
        self.policy = policy
        self.owner = str(uuid.uuid4())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=policy.timeout_s, follow_redirects=False)
        events.on_deliveries(self._wake.set)

    # -- subscriptions ----------------------------------------------------------------------

    def create(self, request: WebhookCreate) -> WebhookCreated:
        self.targets.check_url(request.url)
        if not request.events:
            raise InvalidInputError("events must name at least one event type or pattern")
        unknown = check_patterns(request.events)
        if unknown:
            raise InvalidInputError(
                f"events {unknown} are not event types or families; known: "
                f"{', '.join(EVENT_PATTERNS)}",
                code="unknown_event",
            )
        secret = "whsec_" + secrets.token_urlsafe(32)
        hook = Webhook(
            id=str(uuid.uuid4()),
            url=request.url,
            events=json.dumps(request.events),
            store_id=str(request.store_id) if request.store_id else None,
            secret_ciphertext=self.secrets.encrypt(secret),
            created_at=utcnow(),
        )
        with self.registry.transaction() as session:
            session.add(hook)
        return WebhookCreated(**_view(hook).model_dump(), secret=secret)

    def all(self) -> list[WebhookView]:
        with self.registry.transaction() as session:
            return [_view(h) for h in session.scalars(select(Webhook).order_by(Webhook.created_at))]

    def get(self, webhook_id: str) -> WebhookView:
        with self.registry.transaction() as session:
            hook = session.get(Webhook, webhook_id)
            if hook is None:
                raise NotFoundError(f"webhook {webhook_id} does not exist")
            return _view(hook)

    def delete(self, webhook_id: str) -> None:
        with self.registry.transaction() as session:
            hook = session.get(Webhook, webhook_id)
            if hook is None:
                raise NotFoundError(f"webhook {webhook_id} does not exist")
            session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
            session.delete(hook)

    def deliveries(self, webhook_id: str, limit: int = 100) -> list[DeliveryView]:
        self.get(webhook_id)
        with self.registry.transaction() as session:
            rows = session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == webhook_id)
                .order_by(WebhookDelivery.event_id.desc())
                .limit(limit)
            )
            return [_delivery_view(r) for r in rows]

    # -- delivering -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(self.policy.timeout_s + 1)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.deliver_due()
            except Exception:  # e.g. the registry is briefly away: log it, try again
                log.exception("webhook delivery pass failed")
                sent = 0
            if not sent:
                self._wake.wait(0.5)
                self._wake.clear()

    def _claim(self, limit: int = 20) -> list[str]:
        now = utcnow()
        due = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.state == DeliveryState.PENDING,
                WebhookDelivery.next_attempt_at <= now,
                or_(
                    WebhookDelivery.claimed_by.is_(None),
                    WebhookDelivery.claim_expires_at < now,
                ),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        token = str(uuid.uuid4())
        with self.registry.transaction() as session:
            ids = list(session.scalars(due))
            if not ids:
                return []
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id.in_(ids),
                    or_(
                        WebhookDelivery.claimed_by.is_(None),
                        WebhookDelivery.claim_expires_at < now,
                    ),
                )
                .values(
                    claimed_by=token,
                    claim_expires_at=now + timedelta(seconds=self.policy.timeout_s * limit + 30),
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 0:
                return []
            return list(
                session.scalars(
                    select(WebhookDelivery.id).where(WebhookDelivery.claimed_by == token)
                )
            )

    def deliver_due(self) -> int:
        """Send every due delivery this control plane could claim; returns how many."""
        ids = self._claim()
        for delivery_id in ids:
            self._attempt(delivery_id)
        return len(ids)

    def _load(self, delivery_id: str) -> tuple[WebhookDelivery, Webhook, EventView | None] | None:
        """The delivery, its webhook and event; None when the webhook was deleted (with its
        deliveries) since the delivery was claimed."""
        with self.registry.transaction() as session:
            row = session.get(WebhookDelivery, delivery_id)
            hook = session.get(Webhook, row.webhook_id) if row is not None else None
            if row is None or hook is None:
                return None
            event = session.get(Event, row.event_id)
            view = event_view(event) if event is not None else None
            session.expunge_all()
        return row, hook, view

    def _attempt(self, delivery_id: str) -> None:
        loaded = self._load(delivery_id)
        if loaded is None:
            return
        row, hook, event = loaded
        status_code: int | None = None
        error: str | None = None
        final = False  # an error no retry can mend
        started = time.monotonic()
        if event is None:
            error, final = "the event was pruned before it could be delivered", True
        else:
            body = event.model_dump_json().encode()
            timestamp = int(time.time())
            try:
                secret = self.secrets.decrypt(hook.secret_ciphertext)
                url, host, extensions = self.targets.pinned(hook.url)
            except StorefleetError as exc:
                # a secret under a key this plane lacks, or an address no longer allowed: this
                # delivery fails with the reason; the others of the batch go on
                error, final = exc.message, "does not resolve" not in exc.message
            else:
                headers = {
                    **host,
                    "Content-Type": "application/json",
                    "User-Agent": "storefleet-webhooks",
                    "Storefleet-Event": event.type,
                    "Storefleet-Delivery": row.id,
                    SIGNATURE_HEADER: sign(secret, timestamp, body),
                }
                try:
                    response = self._http.post(
                        url, content=body, headers=headers, extensions=extensions
                    )
                    status_code = response.status_code
                    if not 200 <= status_code < 300:
                        error = f"answered HTTP {status_code}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:300]
        self._record(row, status_code, error, (time.monotonic() - started) * 1000, final=final)

    def _record(
        self,
        row: WebhookDelivery,
        status_code: int | None,
        error: str | None,
        ms: float,
        *,
        final: bool = False,
    ) -> None:
        now = utcnow()
        attempts = row.attempts + 1
        entry = {
            "at": now.isoformat(),
            "status_code": status_code,
            "error": error,
            "duration_ms": round(ms, 1),
        }
        if error is None:
            state, next_at = DeliveryState.DELIVERED, row.next_attempt_at
        elif attempts >= self.policy.max_attempts or final:
            state, next_at = DeliveryState.FAILED, row.next_attempt_at
        else:
            state = DeliveryState.PENDING
            next_at = now + timedelta(seconds=self.policy.delay(attempts))
        try:
            with self.registry.transaction() as session:
                current = session.get(WebhookDelivery, row.id)
                if current is None:  # the webhook was deleted meanwhile
                    return
                current.attempts = attempts
                current.state = state
                current.next_attempt_at = next_at
                current.last_status_code = status_code
                current.last_error = error
                current.claimed_by = None
                current.claim_expires_at = None
                current.log = json.dumps([*json.loads(current.log), entry][-20:])
                if state == DeliveryState.DELIVERED:
                    current.delivered_at = now
        except ConcurrentChangeError:  # deleted between the read and the write
            return
        self.metrics.webhook_attempts.labels(outcome="ok" if error is None else "failed").inc()
        if error is not None:
            log.info(
                "webhook %s: delivery %s attempt %d failed: %s",
                row.webhook_id,
                row.id,
                attempts,
                error,
            )
