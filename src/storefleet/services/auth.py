"""API tokens with roles, and the audit log.

Tokens are 256-bit random strings shown once; the registry keeps only their SHA-256. Roles:
- `admin`: everything, token management and the audit log;
- `operator`: stores, deployments and operations; no tokens, no audit log;
- `store`: read its own store, its status and its operations; nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import delete, select

from storefleet.errors import InvalidInputError, NotFoundError, StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import ApiToken, AuditEntry, DashboardSession, Store, utcnow
from storefleet.services.schemas import Timestamp
from storefleet.shared import REVOCATIONS, Numbers

log = logging.getLogger(__name__)

Role = Literal["admin", "operator", "store"]
ROLE_RANK = {"store": 0, "operator": 1, "admin": 2}
TOKEN_PREFIX = "sf_"  # noqa: S105 (a marker, not a secret)
ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105 (a file name)
WELL_KNOWN = {
    "admin", "administrator", "changeme", "change-me", "default", "letmein", "password",
    "secret", "storefleet", "test", "token", "12345678", "123456789012345678901234",
}  # fmt: skip


class InsecureSecretError(StorefleetError):
    code = "insecure_secret"


def check_strong(value: str, what: str, min_length: int = 24) -> None:
    """Refuse an empty, short, repetitive or well-known token or key."""
    lowered = value.strip().lower()
    if (
        len(value.strip()) < min_length
        or lowered in WELL_KNOWN
        or len(set(value)) < 8
        or any(word in lowered for word in ("changeme", "password", "example"))
    ):
        raise InsecureSecretError(
            f"{what} is empty, too short or well known; use at least {min_length} random "
            f"characters (e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    token_id: str
    role: Role
    store_id: str | None

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class TokenCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # The schema says what the validator below enforces: a store token names its store,
        # other roles name none.
        json_schema_extra={
            "if": {"properties": {"role": {"const": "store"}}, "required": ["role"]},
            "then": {"required": ["store_id"], "properties": {"store_id": {"type": "string"}}},
            "else": {"properties": {"store_id": {"type": "null"}}},
        },
    )

    role: Role
    store_id: uuid.UUID | None = None
    expires_at: Timestamp | None = Field(default=None, description="In the future.")

    @model_validator(mode="after")
    def _store_role_needs_store(self) -> TokenCreate:
        if (self.role == "store") != (self.store_id is not None):
            raise ValueError("store_id is required for role store, and only for it")
        return self


class TokenView(BaseModel):
    id: str
    prefix: str
    role: Role
    store_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenView):
    token: str = Field(description="Shown once; only its hash is kept.")


class AuditView(BaseModel):
    id: int
    at: datetime
    token_id: str | None
    role: str | None
    action: str
    store_id: str | None
    status_code: int
    outcome: str
    client: str | None = None
    count: int = 1


def _view(row: ApiToken) -> TokenView:
    return TokenView(
        id=row.id,
        prefix=row.prefix,
        role=row.role,
        store_id=row.store_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


class TokenService:
    def __init__(
        self, registry: Registry, cache_s: float = 2.0, shared: Numbers | None = None
    ) -> None:
        self.registry = registry
        # token hash -> (principal, its expiry, checked at). Revoking here clears it at once,
        # and in every process sharing `shared` (this control plane's workers) at their next
        # check; another control plane on the registry sees a revocation within `cache_s`.
        self._cache: dict[str, tuple[Principal, datetime | None, float]] = {}
        # token id -> (valid, its expiry, checked at): for streams re-checking their token
        self._active: dict[str, tuple[bool, datetime | None, float]] = {}
        self._cache_s = cache_s
        # A token in use is checked again ahead, in the background, in the second half of its
        # cached check: a client that keeps calling never waits for a registry read (when the
        # checks of 50 busy connections ran out together, each waited for its own).
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-ahead")
        self._checking: set[str] = set()  # digests being checked ahead (at most the tokens)
        self._checking_lock = threading.Lock()
        # moved by `forget`: a check that read the registry before a revocation committed
        # does not put its answer back in the cache
        self._epoch = 0
        self._shared = shared
        self._revocations = shared.get(REVOCATIONS) if shared is not None else 0

    def create(self, request: TokenCreate, *, token: str | None = None) -> TokenCreated:
        store_id = str(request.store_id) if request.store_id is not None else None
        if store_id is not None:
            with self.registry.transaction() as session:
                store = session.get(Store, store_id)
                if store is None or store.pool is not None:
                    raise NotFoundError(f"store {store_id} does not exist")
        if request.expires_at is not None and request.expires_at <= utcnow():
            raise InvalidInputError("expires_at is in the past")
        value = token or TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = ApiToken(
            id=str(uuid.uuid4()),
            token_hash=hash_token(value),
            prefix=value[:10],
            role=request.role,
            store_id=store_id,
            expires_at=request.expires_at,
        )
        with self.registry.transaction() as session:
            session.add(row)
        return TokenCreated(**_view(row).model_dump(), token=value)

    def list(self) -> list[TokenView]:
        with self.registry.transaction() as session:
            return [
                _view(r) for r in session.scalars(select(ApiToken).order_by(ApiToken.created_at))
            ]

    def revoke(self, token_id: str) -> None:
        with self.registry.transaction() as session:
            row = session.get(ApiToken, token_id)
            if row is None:
                raise NotFoundError(f"token {token_id} does not exist")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            # its dashboard sessions end with it
            session.execute(delete(DashboardSession).where(DashboardSession.token_id == token_id))
        # after the commit: a request between a clear and the commit would cache it again
        self.forget()

    def forget(self) -> None:
        """Drop every cached token check (after a revocation or a sign-out), here and in the
        processes sharing this control plane's numbers."""
        if self._shared is not None:
            self._revocations = self._shared.bump(REVOCATIONS)
        self._forget_here()

    def revocations(self) -> int:
        """Moves at every `forget`, of this process or (shared) of another: what was checked
        before it moved may be revoked since. Drops this process's cached checks then."""
        if self._shared is None:
            return self._epoch
        seen = self._shared.get(REVOCATIONS)
        if seen != self._revocations:
            self._revocations = seen
            self._forget_here()
        return seen

    def _forget_here(self) -> None:
        self._epoch += 1
        self._cache.clear()
        self._active.clear()

    def active(self, token_id: str) -> bool:
        """Whether the token is still valid (not revoked, not expired): long-lived streams ask
        this every few seconds. Checks of one token share a reading at most `cache_s` old."""
        self.revocations()
        cached = self._active.get(token_id)
        now = time.monotonic()
        if cached is not None and now - cached[2] < self._cache_s:
            valid, expires_at, _ = cached
            return valid and (expires_at is None or expires_at > utcnow())
        with self.registry.transaction() as session:
            row = session.get(ApiToken, token_id)
            valid = row is not None and row.revoked_at is None
            expires_at = row.expires_at if row is not None else None
        self._active[token_id] = (valid, expires_at, now)
        return valid and (expires_at is None or expires_at > utcnow())

    def known(self, token: str) -> bool:
        """Whether the token was valid at its last check (however long ago): during a flood of
        bad tokens, only known ones are still looked up."""
        self.revocations()
        return hash_token(token) in self._cache

    def from_cache(self, token: str) -> Principal | None:
        """The principal of a token checked within `cache_s` (no registry read), else None.
        In the second half of that time the token is checked again in the background."""
        self.revocations()
        digest = hash_token(token)
        cached = self._cache.get(digest)
        if cached is None:
            return None
        principal, expires_at, checked = cached
        age = time.monotonic() - checked
        if age >= self._cache_s / 2:
            self._check_ahead(digest)
        fresh = age < self._cache_s
        return principal if fresh and (expires_at is None or expires_at > utcnow()) else None

    def _check_ahead(self, digest: str) -> None:
        with self._checking_lock:
            if digest in self._checking:
                return
            self._checking.add(digest)

        def check() -> None:
            try:
                epoch = self._epoch
                found = self._lookup(digest)
                if found is None:
                    self._cache.pop(digest, None)
                elif epoch == self._epoch:
                    self._cache[digest] = (found[0], found[1], time.monotonic())
            except Exception:  # the next request checks it itself, and sees the error
                log.debug("checking a token ahead failed", exc_info=True)
            finally:
                with self._checking_lock:
                    self._checking.discard(digest)

        try:
            self._ahead.submit(check)
        except RuntimeError:  # shut down: the control plane is stopping
            with self._checking_lock:
                self._checking.discard(digest)

    def close(self) -> None:
        self._ahead.shutdown(wait=False, cancel_futures=True)

    def authenticate(self, token: str) -> Principal | None:
        if not token.startswith(TOKEN_PREFIX) and len(token) < 24:
            return None
        self.revocations()
        digest = hash_token(token)
        cached = self._cache.get(digest)
        if cached is not None:
            principal, expires_at, checked = cached
            fresh = time.monotonic() - checked < self._cache_s
            if fresh and (expires_at is None or expires_at > utcnow()):
                return principal
        epoch = self._epoch
        found = self._lookup(digest)
        if found is None:
            self._cache.pop(digest, None)
            return None
        if epoch == self._epoch:
            self._cache[digest] = (found[0], found[1], time.monotonic())
        return found[0]

    def _lookup(self, digest: str) -> tuple[Principal, datetime | None] | None:
        with self.registry.transaction() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                return None
            if row.revoked_at is not None:
                return None
            if row.expires_at is not None and row.expires_at <= utcnow():
                return None
            principal = Principal(row.id, row.role, row.store_id)  # type: ignore[arg-type]
            return principal, row.expires_at

    def bootstrap_admin(self, data_dir: Path, configured: str | None) -> Path | None:
        """Make sure an admin can log in. With `configured` (STOREFLEET_ADMIN_TOKEN), that token
        is an admin token. Otherwise one is made once and written to `data_dir/admin-token`
        (mode 0600). Returns the file's path when it holds the token."""
        if configured is not None:
            check_strong(configured, "STOREFLEET_ADMIN_TOKEN")
            if self.authenticate(configured) is None:
                with self.registry.transaction() as session:
                    known = session.scalar(
                        select(ApiToken).where(ApiToken.token_hash == hash_token(configured))
                    )
                    if known is not None:
                        why = "was revoked" if known.revoked_at is not None else "expired"
                        raise InsecureSecretError(
                            f"STOREFLEET_ADMIN_TOKEN names token {known.id}, which {why}: set "
                            "a new admin token (a revoked token never becomes valid again)",
                            code="admin_token_revoked",
                        )
                self.create(TokenCreate(role="admin"), token=configured)
            return None
        path = data_dir / ADMIN_TOKEN_FILE
        if path.is_file():
            existing = path.read_text().strip()
            if self.authenticate(existing) is not None:
                return path
        created = self.create(TokenCreate(role="admin"))
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(created.token + "\n")
        tmp.replace(path)
        return path


UNAUTHENTICATED = "unauthenticated requests"


class AuditLog:
    """Mutating requests with their outcome. Requests without a valid token are not written one
    row each (a flood would fill the registry): they are counted per client address and written
    as one row per address and status at each `flush` (every reconciler pass), with the count."""

    def __init__(self, registry: Registry, *, retention_s: float) -> None:
        self.registry = registry
        self.retention_s = retention_s
        self._denied: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def record(
        self,
        *,
        principal: Principal | None,
        action: str,
        store_id: str | None,
        status_code: int,
        client: str | None = None,
    ) -> None:
        outcome = (
            "ok" if status_code < 400 else ("denied" if status_code in (401, 403, 429) else "error")
        )
        with self.registry.transaction() as session:
            session.add(
                AuditEntry(
                    token_id=principal.token_id if principal else None,
                    role=principal.role if principal else None,
                    action=action[:200],
                    store_id=store_id,
                    status_code=status_code,
                    outcome=outcome,
                    client=(client or "")[:64] or None,
                )
            )

    def count_unauthenticated(self, client: str, status_code: int) -> None:
        """One more request without a valid token from `client`: counted in memory only (no
        registry write: called on the event loop); `flush` (each reconciler pass) writes."""
        with self._lock:
            self._denied[(client[:64], status_code)] += 1

    def flush(self) -> None:
        """Write the counted unauthenticated requests, one row per address and status."""
        with self._lock:
            pending, self._denied = self._denied, Counter()
        if not pending:
            return
        with self.registry.transaction() as session:
            session.add_all(
                AuditEntry(
                    action=UNAUTHENTICATED,
                    status_code=status,
                    outcome="denied",
                    client=client,
                    count=count,
                )
                for (client, status), count in pending.items()
            )

    def prune(self) -> int:
        """Remove entries older than the retention; returns how many."""
        cutoff = utcnow() - timedelta(seconds=self.retention_s)
        with self.registry.transaction() as session:
            result = session.execute(delete(AuditEntry).where(AuditEntry.at < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)

    def query(
        self,
        *,
        token_id: str | None = None,
        store_id: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[AuditView]:
        """Newest first, at most `limit`; `before` (an entry id) pages back."""
        self.flush()
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if token_id:
            query = query.where(AuditEntry.token_id == token_id)
        if store_id:
            query = query.where(AuditEntry.store_id == store_id)
        if outcome:
            query = query.where(AuditEntry.outcome == outcome)
        if since:
            query = query.where(AuditEntry.at >= since)
        if before is not None:
            query = query.where(AuditEntry.id < before)
        with self.registry.transaction() as session:
            return [
                AuditView.model_validate(r, from_attributes=True) for r in session.scalars(query)
            ]
