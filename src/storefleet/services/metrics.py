"""Prometheus metrics of one control plane (`prometheus-client`, a registry per instance).

Counters and histograms are fed where things happen (operations ending, reconciler passes,
webhook attempts). Gauges that describe the fleet (stores by status, port-range usage,
reconciler lag) are computed when scraped, from the registry and one runtime pass, so that
they are never stale.

With several worker processes (`STOREFLEET_WORKERS`), `storefleet serve` sets
`PROMETHEUS_MULTIPROC_DIR` for them: counters and histograms are written to files there (the
client library's multiprocess mode) and every scrape, whichever worker answers it, sums those of
all workers (`multiprocess_dir`); the reconciler's last pass and the running warm-pool fills
are numbers shared by the workers (`storefleet.shared`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from storefleet.shared import POOL_FILLING, RECONCILED_AT, Numbers

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class FleetFacts:
    """What the scrape-time collector reads: stores by status word, ports leased / in range."""

    stores_by_status: Mapping[str, int]
    ports_leased: int
    ports_total: int


class _FleetCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        source = self.metrics.fleet
        if source is not None:
            facts = source()
            stores = GaugeMetricFamily(
                "storefleet_stores", "Stores by status word", labels=["status"]
            )
            for word, count in sorted(facts.stores_by_status.items()):
                stores.add_metric([word], count)
            yield stores
            yield GaugeMetricFamily(
                "storefleet_ports_leased", "Host ports leased to stores", value=facts.ports_leased
            )
            yield GaugeMetricFamily(
                "storefleet_ports_total",
                "Host ports in STOREFLEET_PORT_RANGE",
                value=facts.ports_total,
            )
            yield GaugeMetricFamily(
                "storefleet_port_range_usage_ratio",
                "Leased share of the port range (0-1)",
                value=facts.ports_leased / facts.ports_total if facts.ports_total else 0.0,
            )
        members = self.metrics.pool_members
        if members is not None:
            pool = GaugeMetricFamily(
                "storefleet_pool_members",
                "Warm-pool members by plan and state (filling, ready, stale)",
                labels=["plan", "state"],
            )
            for plan, states in sorted(members().items()):
                for state, count in sorted(states.items()):
                    pool.add_metric([plan, state], count)
            yield pool
            yield GaugeMetricFamily(
                "storefleet_pool_refills_running",
                "Warm-pool fills running on this control plane",
                value=self.metrics.pool_refilling,
            )
        last = self.metrics.last_reconcile
        yield GaugeMetricFamily(
            "storefleet_reconciler_lag_seconds",
            "Seconds since the reconciler last finished a pass (-1: no pass yet)",
            value=max(0.0, time.time() - last) if last is not None else -1.0,
        )


class Metrics:
    def __init__(
        self,
        fleet: Callable[[], FleetFacts] | None = None,
        *,
        shared: Numbers | None = None,
        multiprocess_dir: Path | None = None,
    ) -> None:
        self.shared = shared
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.operations = Counter(
            "storefleet_operations",
            "Operations ended, by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.deploy_duration = Histogram(
            "storefleet_deploy_duration_seconds",
            "Deploy operations, from start to end, by outcome",
            ["outcome"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.reconciler_passes = Counter(
            "storefleet_reconciler_passes", "Reconciler passes", registry=self.registry
        )
        self.reconciler_errors = Counter(
            "storefleet_reconciler_errors",
            "Reconciler passes that failed, and actions that failed",
            registry=self.registry,
        )
        self.reconciler_actions = Counter(
            "storefleet_reconciler_actions",
            "Actions the reconciler took on stores",
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "storefleet_reconciler_pass_seconds",
            "Duration of reconciler passes",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "storefleet_webhook_attempts",
            "Webhook delivery attempts, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.pool_claims = Counter(
            "storefleet_pool_claims",
            "Signups by what the warm pool gave them: warm (a member), miss (none: cold), "
            "failed (a member that was not healthy: cold)",
            ["plan", "outcome"],
            registry=self.registry,
        )
        self.pool_refills = Counter(
            "storefleet_pool_refills",
            "Warm-pool members made (ready), failed fills, and members destroyed or recycled",
            ["outcome"],
            registry=self.registry,
        )
        # the warm pool's members by plan and state, read at each scrape (None: no pool)
        self.pool_members: Callable[[], Mapping[str, Mapping[str, int]]] | None = None
        self._pool_refilling = 0
        self._last_reconcile: float | None = None
        # what the fleet gauges read at each scrape (stores by status, port leases)
        self.fleet = fleet
        self._fleet_collector = _FleetCollector(self)
        self.registry.register(self._fleet_collector)

    @property
    def pool_refilling(self) -> int:
        """Warm-pool fills running (in the process that refills the pool)."""
        if self.shared is not None:
            return self.shared.get(POOL_FILLING)
        return self._pool_refilling

    @pool_refilling.setter
    def pool_refilling(self, value: int) -> None:
        if self.shared is not None:
            self.shared.set_int(POOL_FILLING, value)
        self._pool_refilling = value

    @property
    def last_reconcile(self) -> float | None:
        """When (`time.time()`) the reconciler last finished a pass; None: not yet."""
        if self.shared is not None:
            at = self.shared.get_float(RECONCILED_AT)
            return at if at > 0 else None
        return self._last_reconcile

    def operation_ended(self, kind: str, outcome: str, duration_s: float | None) -> None:
        self.operations.labels(kind=kind, outcome=outcome).inc()
        if kind == "deploy" and duration_s is not None:
            self.deploy_duration.labels(outcome=outcome).observe(duration_s)

    def pool_claim(self, plan: str, outcome: str) -> None:
        self.pool_claims.labels(plan=plan, outcome=outcome).inc()

    def pool_refill(self, outcome: str) -> None:
        self.pool_refills.labels(outcome=outcome).inc()

    def pool_count(self, kind: str, outcome: str) -> int:
        """How many pool claims (`claim`, of every plan) or refills (`refill`) ended so, by
        outcome (this control plane, since it started): read from the counters themselves."""
        counter = self.pool_claims if kind == "claim" else self.pool_refills
        name = f"storefleet_pool_{'claims' if kind == 'claim' else 'refills'}_total"
        return int(
            sum(
                sample.value
                for family in self._families(counter)
                for sample in family.samples
                if sample.name == name and sample.labels.get("outcome") == outcome
            )
        )

    def _families(self, metric: Counter) -> Iterable[Metric]:
        """The metric's families: its own, or of all workers in multiprocess mode."""
        if self.multiprocess_dir is None:
            return metric.collect()
        files = [str(path) for path in self.multiprocess_dir.glob("*.db")]
        merged: Iterable[Metric] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True
        )
        return merged

    def reconcile_pass(self, duration_s: float, *, actions: int, failed_actions: int) -> None:
        self.reconciler_passes.inc()
        self.reconcile_duration.observe(duration_s)
        self.reconciler_actions.inc(actions)
        if failed_actions:
            self.reconciler_errors.inc(failed_actions)
        self._last_reconcile = time.time()
        if self.shared is not None:
            self.shared.set_float(RECONCILED_AT, self._last_reconcile)

    def reconcile_failed(self) -> None:
        self.reconciler_errors.inc()

    def exposition(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # every worker's counters and histograms (from their files), this one's fleet gauges
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        merged.register(self._fleet_collector)
        return generate_latest(merged)
