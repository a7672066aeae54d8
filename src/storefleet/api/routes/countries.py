from __future__ import annotations

from fastapi import APIRouter

from storefleet.services.countries import Country, list_countries

router = APIRouter(tags=["countries"])


@router.get("/countries")
def countries() -> list[Country]:
    """Every ISO 3166 country, with the stable id to use as a store's `country_id`."""
    return list_countries()
