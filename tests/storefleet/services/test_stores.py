"""The store registry: names unique whatever their case and accents, plan changes heard."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fakes import FakeDriver
from storefleet.errors import ConflictError, InvalidInputError, NotFoundError
from storefleet.services.countries import country_id
from storefleet.services.schemas import StoreCreate, StoreUpdate
from storefleet.services.wiring import Services


def _request(nombre: str) -> StoreCreate:
    return StoreCreate(
        nombre=nombre, country_id=country_id("ES"), tokens_disponibles=3, plan="basic"
    )


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services(driver=FakeDriver())


def test_names_are_unique_regardless_of_case_and_accents(services: Services) -> None:
    created = services.stores.create(_request("Café Ñandú"))
    assert created.status == "not_deployed" and created.nombre == "Café Ñandú"
    for twin in ("cafe nandu", "CAFÉ  ÑANDÚ"):
        with pytest.raises(ConflictError) as caught:
            services.stores.create(_request(twin))
        assert caught.value.code == "duplicate_nombre"
    other = services.stores.create(_request("Otra"))
    with pytest.raises(ConflictError):
        services.stores.update(other.id, StoreUpdate(nombre="café ñandu"))


def test_updates_keep_what_is_left_out_and_a_plan_change_is_heard(services: Services) -> None:
    store = services.stores.create(_request("Planes"))
    services.deployments.deploy(store.id)
    updated = services.stores.update(store.id, StoreUpdate(plan="premium"))
    assert (updated.plan, updated.nombre, updated.tokens_disponibles) == ("premium", "Planes", 3)
    op = services.ops.for_store(store.id)[0]
    assert (op.kind, op.params) == ("apply_plan", {"previous_plan": "basic"})
    with pytest.raises(InvalidInputError):
        services.stores.update(store.id, StoreUpdate(country_id="not-a-country"))


def test_unknown_and_deleted_stores_are_not_found(services: Services) -> None:
    store = services.stores.create(_request("Efímera"))
    services.stores.require(store.id)
    services.stores.delete(store.id)
    for look in (services.stores.require, services.stores.get):
        with pytest.raises(NotFoundError):
            look(store.id)


def test_the_registry_is_read_a_page_at_a_time(services: Services) -> None:
    ids = [services.stores.create(_request(f"Página {i}")).id for i in range(5)]
    everything = services.stores.list()
    assert [s.id for s in everything.stores] == ids and everything.total == 5
    page = services.stores.list(limit=2, offset=2)
    assert [s.id for s in page.stores] == ids[2:4] and page.total == 5
    assert services.stores.list(limit=2, offset=5).stores == []
