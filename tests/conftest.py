from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    TEST_LABEL,
    Server,
    pg_database,
    remove_docker_objects,
    servers_in,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty registry database: SQLite and PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    with pg_database() as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


@pytest.fixture
def docker_client() -> Iterator[Any]:
    """The local Docker engine; every object carrying the test label is removed afterwards."""
    import docker  # only for the tests that use it

    client = docker.from_env(version="auto")
    yield client
    remove_docker_objects(TEST_LABEL)
    client.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real control-plane servers; every store process they made is killed afterwards."""
    with servers_in(tmp_path) as start:
        yield start


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()
