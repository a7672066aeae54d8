from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from fakes import FakeDriver
from storefleet.errors import CapacityError, NotFoundError, RuntimeFailure
from storefleet.services.countries import country_id
from storefleet.services.schemas import StoreCreate
from storefleet.services.wiring import Services


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services(driver=FakeDriver(apply_delay_s=0.02), port_range="31000-31017")


def _create(services: Services, nombre: str = "Tienda") -> str:
    request = StoreCreate(
        nombre=nombre, country_id=country_id("ES"), tokens_disponibles=5, plan="premium"
    )
    return services.stores.create(request).id


def test_deploy_records_links_and_is_idempotent(services: Services) -> None:
    sid = _create(services)
    first = services.deployments.deploy(sid)
    assert first.status == "deployed"
    assert first.back_link == f"http://127.0.0.1:{first.ports.backend_port}"
    deploys_timed = _deploys_timed(services)
    again = services.deployments.deploy(sid)
    assert again.status == "already_deployed"
    assert (again.back_link, again.ports) == (first.back_link, first.ports)
    store = services.stores.get(sid)
    assert store.back_link == first.back_link and store.status == "running"
    # a no-op is no operation, and no deploy in the duration metric
    assert [op.kind for op in services.ops.for_store(sid)] == ["deploy"]
    assert _deploys_timed(services) == deploys_timed
    same = services.lifecycle.upgrade(sid, services.driver.default_version())
    assert getattr(same, "status", None) == "already_upgraded"
    assert [op.kind for op in services.ops.for_store(sid)] == ["deploy"]


def _deploys_timed(services: Services) -> float:
    text = services.metrics.exposition().decode()
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("storefleet_deploy_duration_seconds_count")
    ]
    return sum(counts)


def test_parallel_deploys_of_one_store_give_one_stack(services: Services) -> None:
    sid = _create(services)
    driver = services.driver
    assert isinstance(driver, FakeDriver)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _i: services.deployments.deploy(sid), range(20)))
    assert sorted(r.status for r in results).count("deployed") == 1
    assert driver.applies == 1 and driver.max_concurrent_per_store == 1
    assert len({r.back_link for r in results}) == 1


def test_failed_deploy_leaves_nothing_behind(services: Services) -> None:
    sid = _create(services)
    driver = services.driver
    assert isinstance(driver, FakeDriver)
    driver.fail_apply = True
    with pytest.raises(RuntimeFailure):
        services.deployments.deploy(sid)
    assert sid not in driver.stacks
    assert services.allocator.ports_of(sid) is None
    status = services.status.status(sid)
    assert status.status == "not_deployed"
    assert status.last_error and "never became healthy" in status.last_error
    assert services.stores.get(sid).back_link is None
    driver.fail_apply = False
    assert services.deployments.deploy(sid).status == "deployed"


def test_undeploy_keeps_data_unless_purged(services: Services) -> None:
    driver = services.driver
    assert isinstance(driver, FakeDriver)
    sid = _create(services)
    services.deployments.deploy(sid)
    services.deployments.undeploy(sid)
    assert sid in driver.data and sid not in driver.stacks
    assert services.allocator.ports_of(sid) is None
    view = services.stores.get(sid)
    assert view.back_link is None and view.db_link is None and view.status == "not_deployed"
    services.deployments.deploy(sid)
    services.stores.delete(sid, purge=True)
    assert sid not in driver.data
    with pytest.raises(NotFoundError):
        services.stores.get(sid)


def test_exhausted_range_fails_cleanly(services: Services) -> None:
    ids = [_create(services, f"Tienda {i}") for i in range(7)]
    for sid in ids[:6]:
        services.deployments.deploy(sid)
    with pytest.raises(CapacityError, match="31000-31017"):
        services.deployments.deploy(ids[6])
    assert services.status.status(ids[6]).status == "not_deployed"


def test_deploy_and_undeploy_race_ends_in_one_consistent_state(services: Services) -> None:
    sid = _create(services)
    driver = services.driver
    assert isinstance(driver, FakeDriver)
    barrier = threading.Barrier(10)

    def act(i: int) -> None:
        barrier.wait()
        if i % 2:
            services.deployments.deploy(sid)
        else:
            services.deployments.undeploy(sid)

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(act, range(10)))
    assert driver.max_concurrent_per_store == 1
    deployed = services.status.status(sid).status == "running"
    assert (sid in driver.stacks) == deployed
    assert (services.allocator.ports_of(sid) is not None) == deployed
