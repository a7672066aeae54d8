"""A runtime with the core only (no backups, logs, usage, data ownership, secret refresh):
deploys and status work; what it lacks is refused with a message naming the runtime and
the missing methods (the API answers it as 501)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from fakes import FakeDriver
from helpers import new_store
from storefleet.errors import ErrorKind, UnsupportedError
from storefleet.runtime.base import (
    Capabilities,
    Links,
    RuntimeDriver,
    StackPaths,
    StackSpec,
    StackStatus,
)
from storefleet.services.wiring import Services


class CoreOnly:
    """Just the core protocol, over the fake driver."""

    name = "core-only"
    secret_names: tuple[str, ...] = ("db_password", "api_key")

    def __init__(self) -> None:
        self.inner = FakeDriver()

    def apply(
        self, spec: StackSpec, *, timeout_s: float, should_stop: Callable[[], bool] | None = None
    ) -> None:
        self.inner.apply(spec, timeout_s=timeout_s, should_stop=should_stop)

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        self.inner.remove(store_id, purge=purge, timeout_s=timeout_s)

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        self.inner.stop(store_id, timeout_s=timeout_s)

    def versions(self) -> list[str]:
        return self.inner.versions()

    def default_version(self) -> str:
        return self.inner.default_version()

    def status(self, store_id: str) -> StackStatus:
        return self.inner.status(store_id)

    def fleet_status(self) -> Mapping[str, StackStatus]:
        return self.inner.fleet_status()

    def links(self, spec: StackSpec) -> Links:
        return self.inner.links(spec)

    def paths(self, store_id: str) -> StackPaths:
        return self.inner.paths(store_id)

    def workspace(self, store_id: str) -> Path:
        return self.inner.workspace(store_id)

    def close(self) -> None:
        self.inner.close()


def test_capabilities_are_found_once() -> None:
    full = Capabilities.of(FakeDriver())
    assert full.backups and full.logs and full.usage and full.data and full.refresh
    core: RuntimeDriver = CoreOnly()
    bare = Capabilities.of(core)
    assert (bare.backups, bare.logs, bare.usage, bare.data, bare.refresh) == (None,) * 5


def test_a_core_only_runtime_deploys_and_refuses_what_it_lacks(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(driver=CoreOnly())
    sid = new_store(services, "Básica")
    services.deployments.deploy(sid)
    status = services.status.status(sid)
    assert status.status == "running" and status.usage is None
    refusals: list[Callable[[], object]] = [
        lambda: services.backups.create(sid),
        lambda: services.logs.open(sid, service=None, tail=10, since=None, follow=False),
        lambda: services.status.usage(sid),
        lambda: services.api_keys.rotate(sid),
    ]
    for refuse in refusals:
        with pytest.raises(UnsupportedError) as caught:
            refuse()
        assert caught.value.kind is ErrorKind.UNSUPPORTED
        assert "the core-only runtime cannot" in caught.value.message
    assert services.ops.for_store(sid)[0].kind == "deploy"  # nothing refused was recorded
    services.deployments.undeploy(sid, purge=True, final_backup=False)
    assert services.status.status(sid).status == "not_deployed"
