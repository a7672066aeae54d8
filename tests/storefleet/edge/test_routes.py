"""The route table: links the proxy reads per request."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from storefleet.edge.routes import HOST_PATTERN, MAX_HOST, RouteTable


def _id() -> str:
    return str(uuid.uuid4())


def test_publish_unpublish_and_the_table(tmp_path: Path) -> None:
    table = RouteTable(tmp_path / "edge")
    a, b = _id(), _id()
    table.publish("a.stores.localhost", a)
    table.publish("shop.example.test", a)
    table.publish("b.stores.localhost", b)
    assert table.table() == {
        "a.stores.localhost": a,
        "shop.example.test": a,
        "b.stores.localhost": b,
    }
    # relative links: the same table works inside the edge's container (mounted elsewhere)
    assert str((tmp_path / "edge" / "h" / "a.stores.localhost").readlink()) == f"../s/{a}"
    # re-publishing moves a host to another store in one rename
    table.publish("shop.example.test", b)
    assert table.table()["shop.example.test"] == b
    table.unpublish("shop.example.test")
    table.unpublish("shop.example.test")  # gone already: nothing to do
    assert "shop.example.test" not in table.table()
    assert not [p for p in (tmp_path / "edge" / "h").iterdir() if p.name.startswith(".")]


def test_a_route_answers_only_once_the_backend_has_its_socket(tmp_path: Path) -> None:
    table = RouteTable(tmp_path)
    sid = _id()
    table.publish("a.stores.localhost", sid)
    assert not table.answers("a.stores.localhost")
    table.socket_dir(sid).mkdir(parents=True)
    (table.socket_dir(sid) / "http.sock").write_text("")
    assert table.answers("a.stores.localhost")
    table.remove_socket_dir(sid)
    assert not table.socket_dir(sid).exists()


@pytest.mark.parametrize(
    "host",
    ["", "localhost", "../s", "a/b.test", "A.test", "a..test", "-a.test", "a.test.", "*.a.test"],
)
def test_only_well_formed_host_names_are_routed(tmp_path: Path, host: str) -> None:
    table = RouteTable(tmp_path)
    assert not HOST_PATTERN.fullmatch(host)
    with pytest.raises(ValueError, match="routable"):
        table.publish(host, _id())
    with pytest.raises(ValueError, match="store id"):
        table.publish("a.test", "../../etc")


def test_a_host_fits_a_unix_socket_path() -> None:
    longest = "a" * 60 + "." + "b" * (MAX_HOST - 61)
    assert HOST_PATTERN.fullmatch(longest)
    assert len(f"h/{longest}/http.sock".encode()) <= 107
    assert not HOST_PATTERN.fullmatch(longest + "c")
