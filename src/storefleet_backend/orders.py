"""The store's orders, kept in its own database.

Three statements on one table do not need an ORM; the DB-API drivers are used directly
(sqlite3 from the standard library, psycopg for PostgreSQL), which also keeps the backend's
start-up short (a store is live sooner). Values are always bound parameters.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pycountry
from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id VARCHAR(36) PRIMARY KEY,
    amount BIGINT NOT NULL,
    currency CHAR(3) NOT NULL,
    reference VARCHAR(100) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL
)
"""


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int = Field(ge=0, le=10**15, description="Amount in minor units (cents).")
    currency: str = Field(min_length=3, max_length=3, description="ISO 4217 code.")
    reference: str = Field(min_length=1, max_length=100)

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        code = value.upper()
        if pycountry.currencies.get(alpha_3=code) is None:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return code

    @field_validator("reference")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("reference must not contain control characters")
        return value


class Order(BaseModel):
    id: str
    amount: int
    currency: str
    reference: str
    created_at: datetime


class OrderBook:
    """Orders in `url`: `sqlite:///PATH` or `postgresql://user[:password]@host:port/db`."""

    def __init__(self, url: str) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
            self._connect: Callable[[], Any] = lambda: sqlite3.connect(
                path, timeout=30, check_same_thread=False, isolation_level=None
            )
            self._mark = "?"
        elif url.startswith("postgresql://"):
            import psycopg  # only stores on PostgreSQL need it

            self._connect = lambda: psycopg.connect(url, connect_timeout=5, autocommit=True)
            self._mark = "%s"
        else:
            raise ValueError("database URL must be sqlite:///... or postgresql://...")

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """One shared connection (reopened after a failure), used by one thread at a time."""
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            try:
                cursor = self._conn.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
            except Exception:  # any failure: drop the connection, then re-raise
                conn, self._conn = self._conn, None
                conn.close()
                raise

    def create_schema(self) -> None:
        with self._cursor() as cursor:
            cursor.execute(SCHEMA)

    def ping(self) -> bool:
        with self._cursor() as cursor:
            cursor.execute("SELECT 1")
            row = cursor.fetchone()
        return bool(row and row[0] == 1)

    def add(self, data: OrderIn) -> Order:
        order = Order(
            id=str(uuid.uuid4()),
            amount=data.amount,
            currency=data.currency,
            reference=data.reference,
            created_at=datetime.now(UTC),
        )
        m = self._mark
        with self._cursor() as cursor:
            cursor.execute(
                f"INSERT INTO orders (id, amount, currency, reference, created_at) "  # noqa: S608 (placeholders only)
                f"VALUES ({m}, {m}, {m}, {m}, {m})",
                (
                    order.id,
                    order.amount,
                    order.currency,
                    order.reference,
                    order.created_at.isoformat(),
                ),
            )
        return order

    def list(self, limit: int = 1000) -> list[Order]:
        with self._cursor() as cursor:
            cursor.execute(
                f"SELECT id, amount, currency, reference, created_at FROM orders "  # noqa: S608 (placeholders only)
                f"ORDER BY created_at, id LIMIT {self._mark}",
                (limit,),
            )
            rows = cursor.fetchall()
        keys = ("id", "amount", "currency", "reference", "created_at")
        return [Order.model_validate(dict(zip(keys, row, strict=True))) for row in rows]
