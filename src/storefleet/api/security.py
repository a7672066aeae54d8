"""Authentication, rate limiting and auditing of every request (pure ASGI, one place).

Every path except /health and the OpenAPI docs needs `Authorization: Bearer <token>`, whatever
the method (OPTIONS and HEAD included): a missing, wrong, revoked or expired token gets 401.
Mutating requests (POST, PUT, PATCH, DELETE) are rate-limited per token (429 with Retry-After)
and written to the audit log with their outcome. Requests without a valid token are limited per
client address (429 past it, before any registry read) and counted in the audit log per address,
not written one row each. Token checks and audit writes run in a thread pool of their own, so
that busy request handlers or streams can never starve authentication. Role and ownership
checks are dependencies (`api/deps.py`) on each route.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from typing import TYPE_CHECKING

from anyio import CapacityLimiter, to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storefleet.services.auth import Principal

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
PUBLIC_PREFIXES = (DOCS_ASSETS + "/",)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def public(path: str) -> bool:
    """Whether `path` is answered without a token."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_STORE = re.compile(r"/stores/(" + _UUID.pattern + r")")


class RateLimiter:
    """A token bucket per API token: `burst` requests at once, refilled at `per_minute`."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def peek(self, key: str) -> float:
        """Like `take` without taking: 0 when a request would be allowed."""
        return self._check(key, take=False)

    def take(self, key: str) -> float:
        """0 when allowed; otherwise the seconds to wait."""
        return self._check(key, take=True)

    def _check(self, key: str, *, take: bool) -> float:
        now = time.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (self.burst, now))
            level = min(self.burst, level + (now - last) * self.rate)
            allowed = level >= 1
            if take:
                self._buckets[key] = (level - 1 if allowed else level, now)
        if allowed:
            return 0.0
        return (1 - level) / self.rate if self.rate > 0 else 60.0


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
        if mutating:
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
