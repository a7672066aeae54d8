"""Placement on the Swarm runtime: the least loaded usable node, labels, pinning."""

from __future__ import annotations

from pathlib import Path

import pytest

from storefleet.errors import PermanentFailure, RuntimeFailure
from storefleet.runtime.base import Limits, Ports, StackSpec
from storefleet.runtime.swarm.driver import NODE_LABEL, Node, SwarmDriver, parse_node_labels


def _node(name: str, *, state: str = "ready", availability: str = "active", **labels: str) -> Node:
    return Node(
        id=f"id-{name}",
        name=name,
        state=state,
        availability=availability,
        address=f"10.0.0.{name[-1]}",
        manager=name == "h0",
        since="2026-11-29 10:00:00",
        labels={NODE_LABEL: name, **labels},
    )


class Placed(SwarmDriver):
    """The driver with its view of the swarm given, not read from an engine."""

    def __init__(self, root: Path, nodes: list[Node], load: dict[str, float], **kw: str) -> None:
        super().__init__(root, backend_image="b:1", postgres_image="p:1", node_labels=kw or None)
        self._nodes = nodes
        self._load = dict(load)

    def nodes(self) -> list[Node]:
        return self._nodes

    def load(self) -> dict[str, float]:
        return self._load


def _spec(store_id: str) -> StackSpec:
    basic = Limits(cpus=0.5, memory_mb=256)
    return StackSpec(store_id=store_id, plan="basic", ports=Ports(9000, 9001, 9002), limits=basic)


def test_the_least_loaded_usable_node_and_then_always_that_one(tmp_path: Path) -> None:
    nodes = [
        _node("h0"),
        _node("h1"),
        _node("h2", state="down"),
        _node("h3", availability="drain"),
        _node("h4"),
    ]
    driver = Placed(tmp_path, nodes, {"h0": 3.0, "h1": 1.0, "h4": 1.0})
    assert driver._place(_spec("a")).name == "h1"  # ties broken by name
    assert driver.placed_on("a") == "h1"
    driver._load = {"h0": 0.0, "h1": 9.0}
    assert driver._place(_spec("a")).name == "h1"  # pinned: its data is there
    assert driver._place(_spec("b")).name == "h0"


def test_node_labels_restrict_placement(tmp_path: Path) -> None:
    nodes = [_node("h0"), _node("h1", zone="eu"), _node("h2", zone="us")]
    driver = Placed(tmp_path, nodes, {"h1": 5.0}, zone="eu")
    assert driver._place(_spec("a")).name == "h1"
    with pytest.raises(RuntimeFailure, match=r"labelled io\.storefleet\.node with zone=asia"):
        Placed(tmp_path, nodes, {}, zone="asia")._place(_spec("b"))


def test_a_store_pinned_to_a_node_that_left_is_not_moved_silently(tmp_path: Path) -> None:
    driver = Placed(tmp_path, [_node("h0"), _node("h1")], {"h0": 1.0})
    driver._place(_spec("a"))
    driver._nodes = [_node("h0")]
    with pytest.raises(PermanentFailure, match="pinned to node h1"):
        driver._place(_spec("a"))


def test_node_labels_setting() -> None:
    assert parse_node_labels(" zone=eu, disk=ssd ,") == {"zone": "eu", "disk": "ssd"}
    assert parse_node_labels("") == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_node_labels("zone")


class OnlyNodes(SwarmDriver):
    def __init__(self, root: Path, nodes: list[Node]) -> None:
        super().__init__(root, backend_image="b:1", postgres_image="p:1")
        self._nodes = nodes

    def nodes(self) -> list[Node]:
        return self._nodes


def test_placements_spread_by_the_plans_already_placed(tmp_path: Path) -> None:
    driver = OnlyNodes(tmp_path, [_node("h0"), _node("h1"), _node("h2")])
    big = StackSpec("big", "enterprise", Ports(1, 2, 3), limits=Limits(cpus=2.0, memory_mb=1024))
    assert driver._place(big).name == "h0"
    placed = [driver._place(_spec(f"s{i}")).name for i in range(5)]
    # h0 holds 4 CPUs: the five small stores (1 CPU each) go to h1 and h2 until they match it
    assert placed == ["h1", "h2", "h1", "h2", "h1"]
    assert driver.load() == {"h0": 4.0, "h1": 3.0, "h2": 2.0}
