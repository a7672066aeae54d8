"""A deployed store's backend, reached with its API key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


class BackLink(str):
    """A store's back_link that carries the store's API key (its backend requires it)."""

    key: str

    def __new__(cls, link: str, key: str) -> BackLink:
        made = super().__new__(cls, link)
        made.key = key
        return made

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


def back_of(created: Mapping[str, Any]) -> BackLink:
    """The BackLink of a create answer (`POST /stores/`)."""
    return BackLink(created["deployment"]["back_link"], created["api_key"])


def orders(back: BackLink) -> list[str]:
    """References of the orders a store's backend holds."""
    found = httpx.get(back + "/api/v1/orders", headers=back.headers, timeout=10)
    found.raise_for_status()
    return [o["reference"] for o in found.json()]


def add_order(back: BackLink, reference: str, amount: int = 1) -> None:
    order = {"amount": amount, "currency": "EUR", "reference": reference}
    httpx.post(
        back + "/api/v1/orders", json=order, headers=back.headers, timeout=10
    ).raise_for_status()
