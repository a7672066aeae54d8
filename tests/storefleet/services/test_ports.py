from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fakes import FakeDriver
from helpers import add_bare_stores, new_store, next_port_range
from storefleet.config import PortRange
from storefleet.errors import CapacityError
from storefleet.registry.db import Registry
from storefleet.services.ports import PortAllocator, ephemeral_overlap, port_is_free
from storefleet.services.wiring import Services


def test_concurrent_leases_never_share_a_port(registry_url: str) -> None:
    registry = Registry.open(registry_url)
    allocator = PortAllocator(registry, PortRange(30000, 30299), probe=lambda _p: True)
    ids = add_bare_stores(registry, 60)
    with ThreadPoolExecutor(16) as pool:
        triples = list(pool.map(allocator.lease, ids))
    ports = [p for t in triples for p in (t.backend_port, t.websocket_port, t.db_port)]
    assert len(ports) == len(set(ports)) == 180
    assert all(t.websocket_port == t.backend_port + 1 == t.db_port - 1 for t in triples)
    assert allocator.lease(ids[0]) == triples[0]  # a store keeps its triple
    registry.close()


def test_two_control_planes_on_one_postgres_registry(pg_url: str) -> None:
    planes = [Registry.open(pg_url), Registry.open(pg_url)]
    allocators = [PortAllocator(r, PortRange(30000, 30089), probe=lambda _p: True) for r in planes]
    ids = add_bare_stores(planes[0], 30)
    with ThreadPoolExecutor(12) as pool:
        triples = list(pool.map(lambda i: allocators[i % 2].lease(ids[i]), range(30)))
    ports = [p for t in triples for p in (t.backend_port, t.websocket_port, t.db_port)]
    assert len(set(ports)) == 90
    more = add_bare_stores(planes[1], 1)[0]
    with pytest.raises(CapacityError, match="30000-30089"):
        allocators[1].lease(more)
    for plane in planes:
        plane.close()


def test_exhaustion_and_release(registry_url: str) -> None:
    registry = Registry.open(registry_url)
    allocator = PortAllocator(registry, PortRange(30000, 30005), probe=lambda _p: True)
    a, b, c = add_bare_stores(registry, 3)
    allocator.lease(a)
    allocator.lease(b)
    with pytest.raises(CapacityError) as raised:
        allocator.lease(c)
    assert raised.value.extra["port_range"] == "30000-30005"
    allocator.release(a)
    assert allocator.ports_of(a) is None
    assert allocator.lease(c).backend_port == 30000
    registry.close()


def test_port_held_by_a_foreign_listener_is_skipped(registry_url: str) -> None:
    registry = Registry.open(registry_url)
    # a range of this test's own, below the ephemeral ports (which any outgoing connection of
    # the machine may take at any moment, e.g. base + 1 right after a probe freed base)
    base = int(next_port_range(9).split("-")[0])
    foreign = socket.socket()
    foreign.bind(("127.0.0.1", base + 1))
    foreign.listen()
    try:
        assert not port_is_free(base + 1)
        allocator = PortAllocator(registry, PortRange(base, base + 8))
        (sid,) = add_bare_stores(registry, 1)
        triple = allocator.lease(sid)
        assert base + 1 not in (triple.backend_port, triple.websocket_port, triple.db_port)
    finally:
        foreign.close()
        registry.close()


def test_overlap_with_the_ephemeral_range_is_told(tmp_path: Path) -> None:
    source = tmp_path / "ip_local_port_range"
    source.write_text("32768\t60999\n")
    assert ephemeral_overlap(PortRange.parse("9000-9999"), source) is None
    assert ephemeral_overlap(PortRange.parse("32000-33000"), source) == "32768-60999"
    assert ephemeral_overlap(PortRange.parse("41000-41119"), source) == "32768-60999"
    assert ephemeral_overlap(PortRange.parse("9000-9999"), tmp_path / "missing") is None


class BusyPortsDriver(FakeDriver):
    """A runtime whose stores' host has some ports taken (by something not ours)."""

    def __init__(self, taken: set[int]) -> None:
        super().__init__()
        self.taken = taken
        self.asked: list[int] = []

    def port_is_free(self, port: int) -> bool:
        self.asked.append(port)
        return port not in self.taken


def test_ports_are_probed_where_the_runtime_runs_its_stores(
    make_services: Callable[..., Services],
) -> None:
    driver = BusyPortsDriver(taken={33001})
    services = make_services(driver=driver, probe_ports=True, port_range="33000-33005")
    sid = new_store(services, "Sondeada")
    ports = services.allocator.lease(sid)
    assert driver.asked and 33001 not in (
        ports.backend_port,
        ports.websocket_port,
        ports.db_port,
    )
    assert (ports.backend_port, ports.websocket_port, ports.db_port) == (33003, 33004, 33005)
