from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    TEST_LABEL,
    Server,
    kill_edge_process,
    kill_store_processes,
    pg_database,
    remove_docker_objects,
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
    servers: list[Server] = []

    def start(data_dir: Path | None = None, **env: str) -> Server:
        server = Server(data_dir or tmp_path / "var", env).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        kill_store_processes(server.data_dir)
        kill_edge_process(server.data_dir)


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()
