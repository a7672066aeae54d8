"""Countries, from the ISO 3166 dataset maintained by pycountry, with stable UUID ids."""

from __future__ import annotations

import functools
import gettext
import uuid

import pycountry
from pydantic import BaseModel, Field

# Fixed namespace: a country's id is uuid5(namespace, alpha-2 code) and never changes.
COUNTRY_NAMESPACE = uuid.UUID("5b0c4d1e-8f3a-4c52-9d61-2f7e0a9b3c11")


class Country(BaseModel):
    id: str
    name: str = Field(description="English name (ISO 3166).")
    nombre: str = Field(description="Spanish name, from the same dataset's translations.")
    code: str = Field(description="ISO 3166-1 alpha-2 code.")


def country_id(alpha_2: str) -> str:
    return str(uuid.uuid5(COUNTRY_NAMESPACE, alpha_2.upper()))


@functools.cache
def _countries() -> tuple[Country, ...]:
    spanish = gettext.translation("iso3166-1", pycountry.LOCALES_DIR, languages=["es"])
    rows = (
        Country(
            id=country_id(c.alpha_2),
            name=str(c.name),
            nombre=spanish.gettext(str(c.name)),
            code=str(c.alpha_2),
        )
        for c in pycountry.countries
    )
    return tuple(sorted(rows, key=lambda c: c.name))


@functools.cache
def _by_id() -> dict[str, Country]:
    return {c.id: c for c in _countries()}


def list_countries() -> list[Country]:
    return list(_countries())


def get_country(cid: str) -> Country | None:
    return _by_id().get(cid)
