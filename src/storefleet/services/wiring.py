"""Builds the services of one control plane from its settings (no module-level state)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storefleet.config import Settings
from storefleet.edge.base import Edge, EdgeSettings
from storefleet.edge.process import CaddyProcess
from storefleet.errors import StorefleetError
from storefleet.registry.db import Registry
from storefleet.runtime.base import Capabilities, Limits, RuntimeDriver
from storefleet.runtime.process.driver import ProcessDriver, probe_store_user
from storefleet.services.api_keys import ApiKeyService
from storefleet.services.auth import AuditLog, TokenService
from storefleet.services.backups import BackupService
from storefleet.services.board import Board
from storefleet.services.convergence import Convergence
from storefleet.services.deployments import DeploymentService
from storefleet.services.duties import Duties
from storefleet.services.events import EventLog
from storefleet.services.hostnames import Hostnames
from storefleet.services.lifecycle import LifecycleService
from storefleet.services.metrics import FleetFacts, Metrics
from storefleet.services.nodes import NodeService
from storefleet.services.operations import LeaseKeeper, OperationLog
from storefleet.services.pool import PoolSettings, WarmPool
from storefleet.services.ports import PortAllocator, ephemeral_overlap
from storefleet.services.reconciler import Reconciler
from storefleet.services.runner import Changes, DeployTimeouts, OperationRunner
from storefleet.services.secrets import KeyRing, SecretStore
from storefleet.services.sessions import SessionService
from storefleet.services.status import StatusService
from storefleet.services.steps import StepLists, Toolkit
from storefleet.services.store_logs import LogService
from storefleet.services.stores import StoreService
from storefleet.services.streams import StreamGate
from storefleet.services.webhooks import RetryPolicy, TargetPolicy, WebhookService
from storefleet.shared import Numbers, shared_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    settings: Settings
    registry: Registry
    driver: RuntimeDriver
    allocator: PortAllocator
    ops: OperationLog
    keeper: LeaseKeeper
    runner: OperationRunner
    steps: StepLists
    status: StatusService
    deployments: DeploymentService
    stores: StoreService
    reconciler: Reconciler
    tokens: TokenService
    sessions: SessionService
    audit: AuditLog
    events: EventLog
    metrics: Metrics
    webhooks: WebhookService
    lifecycle: LifecycleService
    backups: BackupService
    logs: LogService
    streams: StreamGate
    api_keys: ApiKeyService
    hostnames: Hostnames
    pool: WarmPool
    board: Board
    nodes: NodeService
    duties: Duties
    edge: Edge | None = None

    def start(self) -> None:
        """Start the background work: lock heartbeats; and, in the one process of this control
        plane that holds its duties (`services/duties.py`), the reconciler (first pass now),
        webhook deliveries, scheduled backups and the warm pool's refills."""
        self.keeper.start()
        self.duties.start()

    def start_duties(self) -> None:
        self.metrics.pool_refilling = 0  # fills of a process that held the duties before
        self.reconciler.start()
        self.webhooks.start()
        self.backups.start()
        self.pool.start()

    def close(self) -> None:
        self.duties.stop()
        self.status.close()
        self.tokens.close()
        self.audit.flush()
        self.pool.stop()
        self.backups.stop()
        self.reconciler.stop()
        self.keeper.stop()
        self.webhooks.close()
        self.runner.close()
        if self.edge is not None:
            self.edge.close()
        self.driver.close()
        self.duties.release()
        self.registry.close()


def store_users(settings: Settings, *, warn: bool = True) -> bool:
    """Whether the process runtime runs each store as a user of its own (see
    `STOREFLEET_PROCESS_STORE_USERS`); raises when `on` is asked for and can not hold. `warn`:
    say at start when it does not hold (once: the start-up checks pass False)."""
    mode = settings.process_store_users
    if settings.runtime != "process" or mode == "off":
        return False
    why = (
        "the control plane does not run as root"
        if os.geteuid() != 0
        else probe_store_user(sys.executable, settings.process_backend_module)
    )
    if why is None:
        return True
    if mode == "on":
        raise StorefleetError(
            f"STOREFLEET_PROCESS_STORE_USERS=on, but {why}", code="store_users_unavailable"
        )
    if warn:
        log.warning(
            "the process runtime runs every store as this control plane's own user (%s): it "
            "isolates processes, not users (a store's code could read other stores' data), and "
            "is meant for development; use the Docker runtime in production",
            why,
        )
    return False


def missing_process_modules(settings: Settings) -> dict[str, str]:
    """Versions of the process runtime whose backend module this Python can not import."""
    if settings.runtime != "process":
        return {}
    modules = {settings.process_default_version: settings.process_backend_module}
    modules.update(settings.process_versions)
    missing = {}
    for version, module in modules.items():
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            missing[version] = module
    return missing


def check_process_versions(settings: Settings) -> None:
    """Every backend module of the process runtime can be imported (refused at start, not at a
    store's deploy)."""
    missing = missing_process_modules(settings)
    if missing:
        version, module = next(iter(missing.items()))
        raise StorefleetError(
            f"process runtime version {version} names module {module!r}, which this "
            "Python can not import (STOREFLEET_PROCESS_VERSIONS / "
            "STOREFLEET_PROCESS_BACKEND_MODULE)",
            code="unknown_module",
        )


def private_data_dir(settings: Settings, traversable: bool = False) -> None:
    """The data dir holds keys, tokens and every store's data: 0700 (0711 when store users must
    reach their own folders: no listing), its registry files 0600 (whatever the umask made)."""
    settings.data_dir.chmod(0o711 if traversable else 0o700)
    if settings.database_url is None:
        registry = settings.data_dir / "storefleet.db"
        for path in (registry, *registry.parent.glob("storefleet.db-*")):
            if path.is_file():
                path.chmod(0o600)


def _process_runtime(settings: Settings, _fleet_id: str, users: bool) -> RuntimeDriver:
    return ProcessDriver.from_settings(settings, store_users=users)


def _docker_runtime(settings: Settings, fleet_id: str, _users: bool) -> RuntimeDriver:
    from storefleet.runtime.docker.driver import DockerDriver  # imported only when used

    return DockerDriver.from_settings(settings, fleet_id=fleet_id)


def _swarm_runtime(settings: Settings, fleet_id: str, _users: bool) -> RuntimeDriver:
    from storefleet.runtime.swarm.driver import SwarmDriver  # imported only when used

    return SwarmDriver.from_settings(settings, fleet_id=fleet_id)


# The runtimes by name (`STOREFLEET_RUNTIME`), each built from its own settings.
RUNTIMES: dict[str, Callable[[Settings, str, bool], RuntimeDriver]] = {
    "process": _process_runtime,
    "docker": _docker_runtime,
    "swarm": _swarm_runtime,
}


def make_driver(settings: Settings, fleet_id: str, users: bool = False) -> RuntimeDriver:
    return RUNTIMES[settings.runtime](settings, fleet_id, users)


def edge_settings(settings: Settings) -> EdgeSettings:
    wildcard = settings.host in ("0.0.0.0", "::", "")  # noqa: S104 (reached on loopback)
    host = "127.0.0.1" if wildcard else settings.host
    host = f"[{host}]" if ":" in host else host
    return EdgeSettings(
        root=settings.edge_dir,
        base_domain=settings.base_domain,
        https_port=settings.edge_https_port,
        http_port=settings.edge_http_port,
        bind=settings.edge_bind,
        ask_url=f"http://{host}:{settings.port}/api/v1/edge/ask",
        acme_email=settings.acme_email,
    )


def _process_edge(settings: Settings, _fleet_id: str, _driver: RuntimeDriver) -> Edge:
    return CaddyProcess(edge_settings(settings))


def _docker_edge(settings: Settings, fleet_id: str, driver: RuntimeDriver) -> Edge:
    from storefleet.edge.container import CaddyContainer  # imported only when used
    from storefleet.runtime.docker.driver import DockerDriver
    from storefleet.runtime.docker.stack import FLEET_LABEL, MANAGED

    if not isinstance(driver, DockerDriver):
        raise StorefleetError("the Docker edge needs the Docker runtime", code="bad_settings")
    labels = {**settings.extra_label_map, MANAGED: "true", FLEET_LABEL: fleet_id}
    return CaddyContainer(
        edge_settings(settings),
        client=lambda: driver.client,
        image=settings.edge_image,
        name=f"{settings.project_prefix}-edge",
        labels=labels,
    )


def _swarm_edge(settings: Settings, fleet_id: str, driver: RuntimeDriver) -> Edge:
    from storefleet.edge.swarm import CaddySwarmService  # imported only when used
    from storefleet.runtime.docker.stack import FLEET_LABEL, MANAGED
    from storefleet.runtime.swarm.driver import SwarmDriver

    if not isinstance(driver, SwarmDriver):
        raise StorefleetError("the Swarm edge needs the Swarm runtime", code="bad_settings")
    labels = {**settings.extra_label_map, MANAGED: "true", FLEET_LABEL: fleet_id}
    return CaddySwarmService(
        edge_settings(settings),
        client=lambda: driver.client,
        network=driver.ensure_edge_network,
        image=settings.edge_image,
        name=f"{settings.project_prefix}-edge",
        labels=labels,
    )


# The edge of each runtime: a supervised caddy process, a container next to the stores, or a
# Swarm service on the stores' edge network.
EDGES: dict[str, Callable[[Settings, str, RuntimeDriver], Edge]] = {
    "process": _process_edge,
    "docker": _docker_edge,
    "swarm": _swarm_edge,
}


def make_edge(settings: Settings, fleet_id: str, driver: RuntimeDriver) -> Edge | None:
    if not settings.edge_on:
        return None
    if settings.runtime not in EDGES:
        raise StorefleetError(
            f"the edge does not run with the {settings.runtime} runtime yet: set "
            "STOREFLEET_EDGE=none (its stores are reached at their node's published port)",
            code="bad_settings",
        )
    return EDGES[driver.name if driver.name in EDGES else settings.runtime](
        settings, fleet_id, driver
    )


def _timeouts(settings: Settings) -> DeployTimeouts:
    return DeployTimeouts(
        deploy_s=settings.deploy_timeout_s,
        undeploy_s=settings.undeploy_timeout_s,
        lock_ttl_s=settings.store_lock_ttl_s,
        poll_s=settings.health_poll_interval_s,
        status_max_age_s=settings.status_max_age_s,
    )


def _plan_limits(settings: Settings) -> dict[str, Limits]:
    return {
        plan: Limits(cpus=limit.cpus, memory_mb=limit.memory_mb)
        for plan, limit in settings.plan_limits.items()
    }


def _retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.webhook_max_attempts,
        initial_s=settings.webhook_retry_initial_s,
        max_s=settings.webhook_retry_max_s,
        timeout_s=settings.webhook_timeout_s,
    )


def build_services(settings: Settings, driver: RuntimeDriver | None = None) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    users = driver is None and store_users(settings)
    private_data_dir(settings, traversable=users)
    # numbers shared by this control plane's processes on this host (`storefleet.shared`)
    shared = Numbers.of(settings.data_dir)
    registry = Registry.open(settings.registry_url, shared)
    private_data_dir(settings, traversable=users)  # the SQLite registry exists now
    driver = driver or make_driver(settings, registry.fleet_id(), users)
    keys = KeyRing(
        settings.data_dir,
        settings.secret_key.get_secret_value() if settings.secret_key is not None else None,
    )
    caps = Capabilities.of(driver)
    # a port is probed where the runtime publishes its stores' ports
    allocator = PortAllocator(registry, settings.ports, probe=caps.port_probe())
    overlap = ephemeral_overlap(settings.ports)
    if overlap:
        log.warning(
            "STOREFLEET_PORT_RANGE %s overlaps this host's ephemeral ports %s: outgoing "
            "connections may take a store's port before it binds it; choose a range outside it",
            settings.ports,
            overlap,
        )
    secret_store = SecretStore(registry, keys)
    edge = make_edge(settings, registry.fleet_id(), driver)
    hostnames = Hostnames(registry, base_domain=settings.base_domain, edge=edge)
    kit = Toolkit(
        registry=registry,
        driver=driver,
        allocator=allocator,
        secrets=secret_store,
        caps=caps,
        deploy_s=settings.deploy_timeout_s,
        undeploy_s=settings.undeploy_timeout_s,
        plan_limits=_plan_limits(settings),
        routing=hostnames if edge is not None else None,
    )
    status = StatusService(kit, max_age_s=settings.status_max_age_s)

    def fleet_facts() -> FleetFacts:
        return FleetFacts(status.counts(), allocator.leased(), settings.ports.size)

    events = EventLog(registry)
    # the client library's multiprocess mode, set by `storefleet serve` for several workers
    multiprocess = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics = Metrics(
        fleet=fleet_facts,
        shared=shared,
        multiprocess_dir=Path(multiprocess) if multiprocess else None,
    )
    ops = OperationLog(
        registry,
        owner=str(uuid.uuid4()),
        events=events,
        metrics=metrics,
        fault_after=settings.fault_after,
    )
    keeper = LeaseKeeper(registry, settings.store_lock_ttl_s, shared)
    # The one event hook between services: an operation on a store ended.
    changes = Changes()
    changes.subscribe(status.forget)
    runner = OperationRunner(
        registry=registry,
        ops=ops,
        keeper=keeper,
        timeouts=_timeouts(settings),
        changes=changes,
    )
    steps = StepLists.default()
    backups = BackupService(
        runner,
        kit,
        settings.data_dir / "backups",
        retention=settings.backup_retention,
        interval_s=settings.backup_interval_s,
    )
    deployments = DeploymentService(runner=runner, kit=kit, steps=steps, final_backup=backups.final)
    lifecycle = LifecycleService(runner=runner, kit=kit, steps=steps, deployments=deployments)
    audit = AuditLog(registry, retention_s=settings.audit_retention_s)
    targets = settings.warm_pool_targets
    if targets and caps.pausing is None:
        log.warning("STOREFLEET_WARM_POOL is ignored: the %s runtime cannot pause", driver.name)
        targets = {}
    pool = WarmPool(
        registry=registry,
        runner=runner,
        kit=kit,
        steps=steps,
        settings=PoolSettings(targets, settings.pool_refill_parallel),
        metrics=metrics,
        lock_ttl_s=settings.store_lock_ttl_s,
        shared=shared,
    )
    if pool.enabled:
        metrics.pool_members = pool.members
    reconciler = Reconciler(
        registry=registry,
        driver=driver,
        runner=runner,
        convergence=Convergence(runner=runner, kit=kit, steps=steps, ops=ops),
        caps=kit.caps,
        interval_s=settings.reconcile_interval_s,
        backoff_initial_s=settings.repair_backoff_initial_s,
        backoff_max_s=settings.repair_backoff_max_s,
        event_retention_s=settings.event_retention_s,
        audit=audit,
        routing=kit.routing,
        pool=pool,
        shared=shared,
        report_path=shared_dir(settings.data_dir) / "reconciler.json",
    )
    changes.subscribe(reconciler.forgive)
    changes.subscribe(lambda _store_id, _kind: reconciler.wake())
    stores = StoreService(
        registry=registry,
        deployments=deployments,
        status=status,
        events=events,
        hostnames=hostnames,
        plan_changed=lifecycle.apply_plan,
        pool=pool,
    )
    webhooks = WebhookService(
        registry, secret_store, events, metrics, _retry_policy(settings),
        TargetPolicy(settings.webhook_networks),
    )  # fmt: skip
    tokens = TokenService(registry, shared=shared)
    services: Services
    duties = Duties(
        shared_dir(settings.data_dir) / "duties.lock",
        start=lambda: services.start_duties(),
        waiting=audit.flush,
    )
    services = Services(
        settings=settings,
        registry=registry,
        driver=driver,
        allocator=allocator,
        ops=ops,
        keeper=keeper,
        runner=runner,
        steps=steps,
        status=status,
        deployments=deployments,
        stores=stores,
        reconciler=reconciler,
        tokens=tokens,
        sessions=SessionService(registry, tokens, ttl_s=settings.session_ttl_s),
        audit=audit,
        events=events,
        metrics=metrics,
        webhooks=webhooks,
        lifecycle=lifecycle,
        backups=backups,
        logs=LogService(kit),
        streams=StreamGate(
            settings.streams_per_token,
            settings.streams_max,
            path=shared_dir(settings.data_dir) / "streams",
        ),
        api_keys=ApiKeyService(kit),
        hostnames=hostnames,
        pool=pool,
        nodes=NodeService(kit, runner=runner, steps=steps, backup_for_move=backups.for_move),
        board=Board(
            kit,
            status=status,
            hostnames=hostnames,
            allocator=allocator,
            reconciler=reconciler,
            events=events,
        ),
        duties=duties,
        edge=edge,
    )
    return services


def preflight(settings: Settings) -> None:
    """What must hold before the control plane serves, checked with clear errors (raised as
    `StorefleetError`, one line each): the data dir is private, the keys are valid and
    strong, the registry opens and is migrated, the admin token is usable."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_process_versions(settings)
    users = store_users(settings, warn=False)  # build_services says it, once
    private_data_dir(settings, traversable=users)
    KeyRing(
        settings.data_dir,
        settings.secret_key.get_secret_value() if settings.secret_key is not None else None,
    )
    registry = Registry.open(settings.registry_url)
    try:
        private_data_dir(settings, traversable=users)
        TokenService(registry).bootstrap_admin(
            settings.data_dir,
            settings.admin_token.get_secret_value() if settings.admin_token is not None else None,
        )
    finally:
        registry.close()
