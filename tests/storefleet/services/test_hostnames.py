"""Hostnames: slugs from names, custom domains, and routes kept as the registry says."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import new_store
from storefleet.errors import ConflictError, InvalidInputError
from storefleet.registry.models import DeployPhase, Store
from storefleet.services.hostnames import RESERVED, clean_domain, slug_of
from storefleet.services.schemas import StoreUpdate
from storefleet.services.wiring import Services


@pytest.mark.parametrize(
    ("nombre", "slug"),
    [
        ("Café Ñandú", "cafe-nandu"),
        ("  Tienda   Uno!! ", "tienda-uno"),
        ("商店", "store"),  # nothing ASCII survives: a neutral slug (suffixed when taken)
        ("ÆØÅ straße", "a-strae"),
        ("x" * 80, "x" * 40),
        ("a" * 39 + " b", "a" * 39),  # no trailing hyphen after the cut
    ],
)
def test_slug_of(nombre: str, slug: str) -> None:
    assert slug_of(nombre) == slug


def test_slugs_are_unique_stable_and_never_reserved(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    ids = [new_store(services, name) for name in ("Café Ñandú", "Cafe-Nandu", "CAFE NANDU!")]
    hosts = [services.stores.get(i).hostname for i in ids]
    assert hosts == [
        "cafe-nandu.stores.localhost",
        "cafe-nandu-2.stores.localhost",
        "cafe-nandu-3.stores.localhost",
    ]
    for name in ("www", "API", "Admin", "edge"):
        assert str(slug_of(name)) in RESERVED
        host = services.stores.get(new_store(services, name)).hostname
        assert host == f"{slug_of(name)}-2.stores.localhost"
    services.stores.update(ids[0], StoreUpdate(nombre="Otro Nombre"))
    assert services.stores.get(ids[0]).hostname == hosts[0]  # kept for the store's life


def test_concurrent_creates_of_one_slug_get_distinct_hostnames(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    names = [f"Tienda{'-' * (i + 1)}Igual" for i in range(20)]  # one slug, twenty names
    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda n: new_store(services, n), names))
    hosts = {services.stores.get(i).hostname for i in ids}
    assert len(hosts) == 20


def test_a_store_without_a_slug_gets_one_when_asked(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services, "Tienda Vieja")
    with services.registry.transaction() as session:
        store = session.get(Store, sid)
        assert store is not None
        store.slug = None  # registered before hostnames existed
    assert services.hostnames.ensure_slug(sid) == "tienda-vieja"
    assert services.hostnames.hosts_of(sid) == ["tienda-vieja.stores.localhost"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Shop.Example.COM.", "shop.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("tienda.café.test", "tienda.xn--caf-dma.test"),
    ],
)
def test_clean_domain(raw: str, clean: str) -> None:
    assert clean_domain(raw, "stores.localhost") == clean


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "*.example.com",
        "192.168.1.1",
        "[::1]",
        "::1",
        "localhost",
        "stores.localhost",
        "a.stores.localhost",
        "a b.test",
        "a_b.test",
        "example.123",
        "x" * 64 + ".test",
        ("a" * 40 + ".") * 3 + "test",
    ],
)
def test_bad_domains_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        clean_domain(raw, "stores.localhost")
    assert caught.value.code == "bad_domain"


def test_domains_belong_to_one_store(make_services: Callable[..., Services]) -> None:
    services = make_services()
    a, b = new_store(services, "Uno"), new_store(services, "Dos")
    view = services.stores.update(a, StoreUpdate(domains=["shop.example.com", "SHOP.example.com"]))
    assert view.domains == ["shop.example.com"]
    with pytest.raises(ConflictError) as caught:
        services.stores.update(b, StoreUpdate(domains=["shop.example.com"]))
    assert caught.value.code == "domain_taken"
    with pytest.raises(InvalidInputError), services.registry.transaction() as session:
        services.hostnames.set_domains(session, a, [f"d{i}.example.com" for i in range(11)])
    services.stores.update(a, StoreUpdate(domains=[]))
    assert services.stores.update(b, StoreUpdate(domains=["shop.example.com"])).domains == [
        "shop.example.com"
    ]
    assert services.stores.get(a).domains == []


def test_sync_routes_exactly_the_deployed_stores(
    make_services: Callable[..., Services], tmp_path: object
) -> None:
    services = make_services(edge="caddy")  # the edge's routes, without running the proxy
    routing = services.hostnames
    assert routing.edge is not None
    deployed, stopped, idle = (new_store(services, n) for n in ("Uno", "Dos", "Tres"))
    services.stores.update(deployed, StoreUpdate(domains=["uno.example.com"]))
    with services.registry.transaction() as session:
        for sid, phase in ((deployed, DeployPhase.DEPLOYED), (stopped, DeployPhase.STOPPED)):
            store = session.get(Store, sid)
            assert store is not None
            store.phase = phase
    stray = str(uuid.uuid4())
    routing.edge.routes.publish("stray.stores.localhost", stray)  # a store that is gone
    routing.edge.routes.publish("tres.stores.localhost", idle)  # not deployed
    assert routing.sync() == (3, 2)
    assert routing.edge.routes.table() == {
        "uno.stores.localhost": deployed,
        "uno.example.com": deployed,
        "dos.stores.localhost": stopped,
    }
    assert routing.sync() == (0, 0)
    # a store an operation holds is left to it
    routing.edge.routes.unpublish("uno.stores.localhost")
    assert routing.sync(busy=[deployed]) == (0, 0)
    assert routing.approves("dos.stores.localhost")
    assert not routing.approves("tres.stores.localhost")
    assert not routing.approves("../h")
