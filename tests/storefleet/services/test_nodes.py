"""Nodes: a runtime that runs every store on this host has one node, `local`, holding them."""

from __future__ import annotations

from collections.abc import Callable

from helpers import new_store
from storefleet.services.wiring import Services


def test_a_single_host_runtime_has_one_local_node_with_its_stores(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    deployed = new_store(services, "Uno")
    new_store(services, "Dos")  # registered only: holds nothing
    services.deployments.deploy(deployed)
    [node] = services.nodes.list()
    assert (node.name, node.state, node.availability, node.stores) == (
        "local",
        "ready",
        "active",
        1,
    )
    basic = services.settings.plan_limits["basic"]
    assert node.reserved_cpus == 2 * basic.cpus and node.reserved_memory_mb == 2 * basic.memory_mb
