"""The store's orders, kept in its own database (SQLAlchemy Core)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pycountry
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine

metadata = MetaData()
orders = Table(
    "orders",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reference", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


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
    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def ping(self) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1

    def add(self, data: OrderIn) -> Order:
        order = Order(
            id=str(uuid.uuid4()),
            amount=data.amount,
            currency=data.currency,
            reference=data.reference,
            created_at=datetime.now(UTC),
        )
        with self.engine.begin() as connection:
            connection.execute(insert(orders).values(**order.model_dump()))
        return order

    def list(self, limit: int = 1000) -> list[Order]:
        query = select(orders).order_by(orders.c.created_at).limit(limit)
        with self.engine.connect() as connection:
            return [Order.model_validate(dict(row._mapping)) for row in connection.execute(query)]
