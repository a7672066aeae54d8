"""Dashboard sessions: signing in with an API token gives a session cookie.

The cookie holds 256 random bits; the registry keeps only their SHA-256, the token the session
stands for, a CSRF token and an expiry (`STOREFLEET_SESSION_TTL_S`, never past the token's own
expiry). A session acts with its token's role and store. It ends at sign-out, at its expiry, or
as soon as its token is revoked or expires: every check asks `TokenService.active`, which a
revocation on this control plane (any of its worker processes) clears at once (another control
plane on the registry sees it within the token cache's 2 s; revoking also deletes the token's
sessions). A sign-out ends the session at once in every worker too.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete

from storefleet.registry.db import Registry
from storefleet.registry.models import ApiToken, DashboardSession, utcnow
from storefleet.services.auth import Principal, TokenService, hash_token

# a cookie is kept as its SHA-256, like a token
_digest = hash_token


@dataclass(frozen=True)
class SignedIn:
    """A live session: who it acts as, its CSRF token and when it ends."""

    principal: Principal
    csrf: str
    expires_at: datetime

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf)


class SessionService:
    def __init__(
        self, registry: Registry, tokens: TokenService, *, ttl_s: float, cache_s: float = 2.0
    ) -> None:
        self.registry = registry
        self.tokens = tokens
        self.ttl_s = ttl_s
        self._cache_s = cache_s
        # cookie digest -> (session, read at): saves a registry read per dashboard request
        self._cache: dict[str, tuple[SignedIn, float]] = {}
        self._revocations = tokens.revocations()  # moved: sessions cached before may be over

    def sign_in(self, token: str) -> tuple[str, SignedIn] | None:
        """A new session for a valid API token: (the cookie's value, the session); None when
        the token is not valid. Expired sessions are removed on the way."""
        principal = self.tokens.authenticate(token)
        if principal is None:
            return None
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        with self.registry.transaction() as session:
            session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))
            row = session.get(ApiToken, principal.token_id)
            expires_at = now + timedelta(seconds=self.ttl_s)
            if row is not None and row.expires_at is not None:
                expires_at = min(expires_at, row.expires_at)
            session.add(
                DashboardSession(
                    id_hash=_digest(cookie),
                    token_id=principal.token_id,
                    csrf=csrf,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        return cookie, SignedIn(principal, csrf, expires_at)

    def check(self, cookie: str) -> SignedIn | None:
        """The live session of a cookie, or None (unknown, signed out, expired, or its token
        revoked or expired)."""
        if not cookie or len(cookie) > 200:
            return None
        digest = _digest(cookie)
        revocations = self.tokens.revocations()
        if revocations != self._revocations:
            self._revocations = revocations
            self._cache.clear()
        cached = self._cache.get(digest)
        found: SignedIn | None
        if cached is not None and time.monotonic() - cached[1] < self._cache_s:
            found = cached[0]
        else:
            found = self._lookup(digest)
            if found is None:
                self._cache.pop(digest, None)
                return None
            self._cache[digest] = (found, time.monotonic())
        if found.expires_at <= utcnow() or not self.tokens.active(found.principal.token_id):
            self._cache.pop(digest, None)
            return None
        return found

    def _lookup(self, digest: str) -> SignedIn | None:
        with self.registry.transaction() as session:
            row = session.get(DashboardSession, digest)
            if row is None or row.expires_at <= utcnow():
                return None
            token = session.get(ApiToken, row.token_id)
            if token is None or token.revoked_at is not None:
                return None
            principal = Principal(token.id, token.role, token.store_id)  # type: ignore[arg-type]
            return SignedIn(principal, row.csrf, row.expires_at)

    def sign_out(self, cookie: str) -> None:
        """End the cookie's session (nothing happens for an unknown one)."""
        digest = _digest(cookie)
        self._cache.pop(digest, None)
        with self.registry.transaction() as session:
            session.execute(delete(DashboardSession).where(DashboardSession.id_hash == digest))
        self.tokens.forget()  # the other workers' cached sessions are read again
