from __future__ import annotations

from storefleet.services.countries import country_id, get_country, list_countries


def test_countries_come_from_iso_3166_with_stable_ids() -> None:
    countries = list_countries()
    assert len(countries) >= 249
    codes = {c.code for c in countries}
    assert {"ES", "MX", "CO", "US"} <= codes
    spain = next(c for c in countries if c.code == "ES")
    assert spain.name == "Spain"
    assert spain.id == country_id("ES") == "c756430b-f637-52ac-a7e8-6b5e821a0cc4"
    assert get_country(spain.id) == spain
    assert get_country("not-a-country") is None
    assert len({c.id for c in countries}) == len(countries)


def test_countries_carry_their_spanish_nombre() -> None:
    by_code = {c.code: c for c in list_countries()}
    assert by_code["ES"].nombre == "España"
    assert by_code["MX"].nombre == "México"
    assert by_code["DE"].nombre == "Alemania"
    assert all(c.nombre for c in by_code.values())
