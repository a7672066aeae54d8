"""Caddy's configuration, and a real `caddy` process driven through its admin API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import free_port
from storefleet.edge.base import EdgeSettings
from storefleet.edge.caddy import config
from storefleet.edge.process import CaddyProcess


def _settings(root: Path, **extra: object) -> EdgeSettings:
    values: dict[str, object] = {
        "root": root,
        "base_domain": "stores.localhost",
        "https_port": free_port(),
        "http_port": free_port(),
        "bind": "127.0.0.1",
        "ask_url": "http://127.0.0.1:9/api/v1/edge/ask",
        **extra,
    }
    return EdgeSettings(**values)  # type: ignore[arg-type]


def test_the_configuration_names_no_store(tmp_path: Path) -> None:
    """Routes are files: adding a store never changes (so never reloads) the configuration."""
    doc = json.dumps(config(_settings(tmp_path)))
    assert "stores.localhost" in doc  # the wildcard certificate
    assert "{http.request.host}" in doc
    assert "unix/h/" in doc  # dials the route table's sockets, relative to the edge's folder
    assert '"ask"' in doc and "on_demand" in doc


def test_acme_gets_every_certificate_on_demand(tmp_path: Path) -> None:
    doc = config(_settings(tmp_path, acme_email="ops@example.com"))
    policies = doc["apps"]["tls"]["automation"]["policies"]
    assert policies == [
        {"issuers": [{"module": "acme", "email": "ops@example.com"}], "on_demand": True}
    ]
    assert "certificates" not in doc["apps"]["tls"]  # no wildcard without DNS-01


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[CaddyProcess]:
    edge = CaddyProcess(_settings(tmp_path / "edge"))
    yield edge
    edge.shutdown()


def test_ensure_starts_and_configures_once(caddy: CaddyProcess) -> None:
    assert not caddy.alive()
    assert caddy.ensure() is True  # started and configured
    assert caddy.alive()
    pem = caddy.ca_pem()
    assert pem is not None and pem.startswith("-----BEGIN CERTIFICATE-----")
    assert pem == (caddy.settings.root / "data/pki/authorities/local/root.crt").read_text()
    log = caddy.settings.root / "caddy.log"
    loads = log.read_text().count('"/load"')
    # what it runs is what it should: nothing is loaded again (a reload closes websockets)
    assert caddy.ensure() is False
    assert caddy.ensure() is False
    assert log.read_text().count('"/load"') == loads
    # a control plane started again adopts the running edge without reloading it
    again = CaddyProcess(caddy.settings)
    assert again.alive() and again.ensure() is False
    # an unknown host is not answered, a routed one whose store is gone is a 502
    assert caddy.probe("nobody.stores.localhost") == (
        f"{caddy.settings.url_of('nobody.stores.localhost')} answers 404"
    )
    caddy.routes.publish("gone.stores.localhost", str(uuid.uuid4()))
    assert "404" in str(caddy.probe("gone.stores.localhost"))  # no socket: not routed
    caddy.shutdown()
    assert not caddy.alive()


def test_processes_of_one_control_plane_start_one_edge(caddy: CaddyProcess) -> None:
    """The workers of a control plane each have an edge object on the same folder: asked at
    the same moment, one starts caddy and the others find it running (a file lock), so no
    second caddy fights for the ports."""
    others = [CaddyProcess(caddy.settings) for _ in range(3)]
    with ThreadPoolExecutor(4) as pool:
        acted = list(pool.map(lambda edge: edge.ensure(), [caddy, *others]))
    assert acted.count(True) == 1
    assert len({edge._pid() for edge in [caddy, *others]}) == 1
    log = (caddy.settings.root / "caddy.log").read_text()
    assert "address already in use" not in log
