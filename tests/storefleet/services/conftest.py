from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeDriver
from storefleet.config import Settings
from storefleet.services.wiring import Services, build_services


@pytest.fixture
def make_services(registry_url: str, tmp_path: Path) -> Iterator[Callable[..., Services]]:
    """Services of one control plane on the fake driver (several share one registry)."""
    built: list[Services] = []

    def make(driver: Any = None, *, probe_ports: bool = False, **settings: Any) -> Services:
        conf = Settings(
            **{
                "data_dir": tmp_path,
                "database_url": registry_url,
                "port_range": "33000-33029",
                **settings,
            }
        )
        services = build_services(conf, driver=driver or FakeDriver())
        if not probe_ports:  # the fake runs nothing: every port of the range is usable
            services.allocator.probe = lambda _p: True
        built.append(services)
        return services

    yield make
    for services in built:
        services.close()
