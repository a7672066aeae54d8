"""Authentication, rate limiting and auditing of every request (pure ASGI, one place).

Every path except /health and the OpenAPI docs needs `Authorization: Bearer <token>`, whatever
the method (OPTIONS and HEAD included): a missing, wrong, revoked or expired token gets 401.
The dashboard's pages (`/`, `/ui/...`, `/logout`) take its session cookie instead (never a
bearer token; the API never takes the cookie, so no API request can be forged from a page):
without a live session a page redirects to `/login`; a state-changing request must carry the
session's CSRF token in `X-CSRF-Token` (403 otherwise).
Mutating requests (POST, PUT, PATCH, DELETE) are rate-limited per token (429 with Retry-After)
and written to the audit log with their outcome. Requests without a valid token are limited per
client address (429 past it, before any registry read) and counted in the audit log per address,
not written one row each. Token checks and audit writes run in a thread pool of their own, so
that busy request handlers or streams can never starve authentication. Role and ownership
checks are dependencies (`api/deps.py`) on each route.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from anyio import CapacityLimiter, to_thread
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storefleet.services.auth import Principal
from storefleet.shared import Rows, Table

if TYPE_CHECKING:
    from storefleet.services.wiring import Services

PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/api/v1/edge/ca.pem",  # the edge's CA certificate: public by nature
        "/api/v1/edge/ask",  # asked by the edge before an on-demand certificate
    }
)
# Swagger UI's and ReDoc's files (served by the process itself): public like /docs
DOCS_ASSETS = "/docs/assets"
# The dashboard: its sign-in page and its own files (htmx, styles) need no session
LOGIN = "/login"
DASHBOARD_STATIC = "/ui/static"
PUBLIC_PREFIXES = (DOCS_ASSETS + "/", DASHBOARD_STATIC + "/")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_COOKIE = "sf_session"
CSRF_HEADER = b"x-csrf-token"
# The dashboard's pages: no inline script, no framing, no referrer to other sites
DASHBOARD_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
]


def public(path: str) -> bool:
    """Whether `path` is answered without a token."""
    return path in PUBLIC_PATHS or path == LOGIN or path.startswith(PUBLIC_PREFIXES)


def dashboard(path: str) -> bool:
    """Whether `path` belongs to the dashboard (session cookie, CSRF, its headers)."""
    return path in ("/", LOGIN, "/logout", "/ui") or path.startswith("/ui/")


def cookie_of(scope: Scope, name: str) -> str:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            found = cookie_parser(value.decode("latin-1")).get(name)
            if found:
                return found
    return ""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class DashboardHeaders:
    """Adds the dashboard's security headers to every response of its paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            dashboard(path) or path.startswith(DASHBOARD_STATIC + "/")
        ):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in DASHBOARD_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_STORE = re.compile(r"/stores/(" + _UUID.pattern + r")")


class RateLimiter:
    """A token bucket per key (an API token, a client address): `burst` requests at once,
    refilled at `per_minute`. The buckets live in a bounded `Table` (at most `slots` keys: a
    key not seen for the longest gives its slot to a new one), shared by the worker processes
    of this control plane when it has a file (`path`), so the limits hold for the whole plane."""

    def __init__(
        self, per_minute: int, burst: int, *, path: Path | None = None, slots: int = 4096
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets = Table(path, slots)

    def peek(self, key: str) -> float:
        """Like `take` without taking: 0 when a request would be allowed."""
        return self._check(key, take=False)

    def take(self, key: str) -> float:
        """0 when allowed; otherwise the seconds to wait."""
        return self._check(key, take=True)

    def _check(self, key: str, *, take: bool) -> float:
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host

        def check(rows: Rows) -> float:
            index = rows.slot(digest)
            known = rows.key(index) == digest
            level, last = rows.values(index) if known else (self.burst, now)
            if last > now:  # kept since before this host started again: a new bucket
                level, last = self.burst, now
            level = min(self.burst, level + (now - last) * self.rate)
            if take and level >= 1:
                rows.write(index, digest, level - 1, now)
            elif take or known:
                rows.write(index, digest, level, now)
            return level

        level = self._buckets.transact(check)
        if level >= 1:
            return 0.0
        return (1 - level) / self.rate if self.rate > 0 else 60.0

    def close(self) -> None:
        self._buckets.close()


def _action(method: str, path: str) -> str:
    return f"{method} {_UUID.sub('{id}', path)}"


async def _json(
    send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _too_many(send: Send, wait: float, whose: str) -> None:
    retry = str(max(1, math.ceil(wait)))
    detail = f"too many requests {whose}; retry in {retry} s"
    await _json(
        send, 429, {"detail": detail, "code": "rate_limited"}, [(b"retry-after", retry.encode())]
    )


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, limiter: RateLimiter, failures: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter
        # requests without a valid token, per client address
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or public(scope["path"]):
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        pool: CapacityLimiter = scope["app"].state.threads.auth
        method = scope["method"]
        path = scope["path"]
        mutating = method in MUTATING
        match = _STORE.search(path)
        store_id = match.group(1).lower() if match else None
        client = (scope.get("client") or ("unknown", 0))[0]

        async def audit(principal: Principal, status: int) -> None:
            if mutating:
                await to_thread.run_sync(
                    lambda: services.audit.record(
                        principal=principal,
                        action=_action(method, path),
                        store_id=store_id,
                        status_code=status,
                        client=client,
                    ),
                    limiter=pool,
                )

        if dashboard(path):
            await self._dashboard(scope, receive, send, audit, client, pool)
            return
        token = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
        principal = None
        if token:
            principal = services.tokens.from_cache(token)
            flooded = self.failures.peek(client) > 0
            if principal is None and (not flooded or services.tokens.known(token)):
                principal = await to_thread.run_sync(
                    services.tokens.authenticate, token, limiter=pool
                )
        if principal is None:
            wait = self.failures.take(client)
            if wait > 0:
                # a flood of bad tokens from one address: refused before any registry read
                services.audit.count_unauthenticated(client, 429)
                await _too_many(send, wait, f"without a valid token from {client}")
                return
            services.audit.count_unauthenticated(client, 401)
            detail = "a valid API token is required: Authorization: Bearer <token>"
            await _json(
                send,
                401,
                {"detail": detail, "code": "unauthorized"},
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self._serve(scope, receive, send, principal, audit)

    async def _dashboard(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        audit: Callable[[Principal, int], Awaitable[None]],
        client: str,
        pool: CapacityLimiter,
    ) -> None:
        """A dashboard page: its session from the cookie; CSRF on state-changing requests."""
        services: Services = scope["app"].state.services
        cookie = cookie_of(scope, SESSION_COOKIE)
        signed = (
            await to_thread.run_sync(services.sessions.check, cookie, limiter=pool)
            if cookie
            else None
        )
        if signed is None:
            if cookie:  # a dead session's cookie: count it like a bad token
                wait = self.failures.take(client)
                if wait > 0:
                    await _too_many(send, wait, f"without a valid session from {client}")
                    return
            target = LOGIN + "?" + urlencode({"next": scope["path"]})
            if _header(scope, b"hx-request") is not None:  # htmx: the whole page goes there
                headers = [(b"hx-redirect", target.encode())]
                await _json(send, 401, {"detail": "signed out", "code": "unauthorized"}, headers)
            elif scope["method"] in ("GET", "HEAD"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 303,
                        "headers": [(b"location", target.encode()), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
            else:
                detail = "sign in first: this page needs a dashboard session"
                await _json(send, 401, {"detail": detail, "code": "unauthorized"}, [])
            return
        if scope["method"] in MUTATING and not signed.csrf_ok(_header(scope, CSRF_HEADER)):
            await audit(signed.principal, 403)
            detail = "missing or wrong CSRF token (X-CSRF-Token): reload the page"
            await _json(send, 403, {"detail": detail, "code": "csrf"}, [])
            return
        scope.setdefault("state", {})["session"] = signed
        await self._serve(scope, receive, send, signed.principal, audit)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Principal,
        audit: Callable[[Principal, int], Awaitable[None]],
    ) -> None:
        """Rate limit (mutating requests), then the app, then the audit entry."""
        if scope["method"] in MUTATING:
            wait = self.limiter.take(principal.token_id)
            if wait > 0:
                await audit(principal, 429)
                await _too_many(send, wait, "for this token")
                return
        scope.setdefault("state", {})["principal"] = principal
        status_code = 500
        audited = False

        async def tracking_send(message: Message) -> None:
            nonlocal status_code, audited
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                # the entry is written before the client has the whole answer: a client that
                # reads the audit log right after its request finds it there
                audited = True
                await audit(principal, status_code)
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            if not audited:  # the app failed before its answer ended
                await audit(principal, status_code)
