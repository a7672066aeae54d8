"""ORM models of the registry. The schema itself is owned by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the registry")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class DeployPhase(StrEnum):
    """What the registry records of a store's deployment: intent, not observation."""

    NOT_DEPLOYED = "not_deployed"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    UNDEPLOYING = "undeploying"
    STOPPED = "stopped"  # deployed, stopped on purpose: ports, links and data kept


class Store(Base):
    __tablename__ = "stores"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    nombre: Mapped[str] = mapped_column(String(200))
    # casefolded, accent-free form of `nombre`; unique so two stores never share a name.
    nombre_key: Mapped[str] = mapped_column(String(200), unique=True)
    country_id: Mapped[str] = mapped_column(String(36))
    tokens_disponibles: Mapped[int] = mapped_column(BigInteger)
    plan: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    back_link: Mapped[str | None] = mapped_column(String(300), default=None)
    db_link: Mapped[str | None] = mapped_column(String(600), default=None)
    phase: Mapped[str] = mapped_column(String(20), default=DeployPhase.NOT_DEPLOYED)
    runtime: Mapped[str | None] = mapped_column(String(20), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The last status word the reconciler saw (a compare-and-set, so that one status change
    # makes one `store.status` event even with several control planes).
    observed_status: Mapped[str | None] = mapped_column(String(20), default=None)
    # The backend version the store runs (image tag, or reference backend version); None until
    # its first deploy, which uses the default version.
    version: Mapped[str | None] = mapped_column(String(100), default=None)

    # The store's hostname is `<slug>.<base domain>`: chosen once from `nombre`, unique, kept
    # until the store is deleted (None only for stores registered before hostnames existed).
    slug: Mapped[str | None] = mapped_column(String(40), unique=True, default=None)

    # A warm-pool member (`services/pool.py`), not a store: "filling" while its stack is made,
    # "ready" once it is healthy and paused. None for every store (a claim sets it to None in
    # the same compare-and-set that gives the row its store's name). Members are invisible to
    # every store API; their id becomes the id of the store that claims them.
    pool: Mapped[str | None] = mapped_column(String(20), default=None)

    # Lease lock: a deploy/undeploy stamps a token; others wait, or take over an expired one.
    lock_token: Mapped[str | None] = mapped_column(String(36), default=None)
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class PoolState(StrEnum):
    FILLING = "filling"
    READY = "ready"


def is_store() -> ColumnElement[bool]:
    """The condition that a `stores` row is a store (not a warm-pool member)."""
    return Store.pool.is_(None)


class StoreDomain(Base):
    """A custom domain of a store; the primary key makes a domain belong to one store at most."""

    __tablename__ = "store_domains"

    domain: Mapped[str] = mapped_column(String(100), primary_key=True)
    store_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("stores.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PortLease(Base):
    """One leased host port. The primary key makes a port belong to one store at most."""

    __tablename__ = "port_leases"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    store_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("stores.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    leased_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoreSecret(Base):
    """A per-store secret, Fernet-encrypted. Plaintext never touches the registry."""

    __tablename__ = "store_secrets"

    store_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("stores.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OpState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


OP_DONE = (OpState.SUCCEEDED, OpState.FAILED, OpState.CANCELLED)


class Operation(Base):
    """A mutating action on a store, recorded before it acts (intent), then its steps and end."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    store_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default=OpState.PENDING, index=True)
    params: Mapped[str] = mapped_column(Text, default="{}")  # JSON, never a secret
    steps: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of steps
    result: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    owner: Mapped[str] = mapped_column(String(36))  # the control plane that runs it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Meta(Base):
    """Facts about this registry, such as the fleet id every runtime object is labelled with."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class ApiToken(Base):
    """An API token. Only its SHA-256 is kept; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    role: Mapped[str] = mapped_column(String(20))
    store_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class DashboardSession(Base):
    """A signed-in dashboard session. The cookie holds a random value; only its SHA-256 is kept.
    It lives as long as its token is valid and until `expires_at` or sign-out."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(36), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AuditEntry(Base):
    """One mutating request: who, what, which store, when, how it ended. Never a secret."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    token_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    role: Mapped[str | None] = mapped_column(String(20), default=None)
    action: Mapped[str] = mapped_column(String(200))
    store_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    status_code: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))
    # the client's address; `count` > 1 for aggregated unauthenticated requests
    client: Mapped[str | None] = mapped_column(String(64), default=None)
    count: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class Event(Base):
    """Something that happened (operation progress, a status change, a reconciler action).
    The SSE stream and the webhooks read from here; ids grow with time."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    type: Mapped[str] = mapped_column(String(50))
    store_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    op_id: Mapped[str | None] = mapped_column(String(36), default=None, index=True)
    data: Mapped[str] = mapped_column(Text, default="{}")  # JSON, never a secret


class Webhook(Base):
    """A subscriber: events whose type matches one of `events` are POSTed to `url`, signed
    with its secret (Fernet-encrypted here; shown once, at creation)."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[str] = mapped_column(Text)  # JSON list of patterns ("operation.*", "*")
    store_id: Mapped[str | None] = mapped_column(String(36), default=None)
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # every attempt failed


class WebhookDelivery(Base):
    """One event to one webhook: its attempts, the last answer, when to try again."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("webhooks.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(36), default=None)
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    log: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of attempts
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class Backup(Base):
    """A copy of one store's database, in `data_dir/backups/<store id>/`, with its SHA-256.
    No foreign key: the final backup of a purged store outlives the store."""

    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    store_id: Mapped[str] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(
        String(20)
    )  # manual | scheduled | final | pre_restore | move
    runtime: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(30))  # pg_dump-custom | sqlite
    filename: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


__all__ = [
    "ApiToken",
    "AuditEntry",
    "Backup",
    "Base",
    "DeliveryState",
    "DeployPhase",
    "Event",
    "Meta",
    "OpState",
    "Operation",
    "PoolState",
    "PortLease",
    "Store",
    "StoreSecret",
    "Webhook",
    "WebhookDelivery",
    "is_store",
    "utcnow",
]
