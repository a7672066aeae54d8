"""Swarm runtime: every store is a stack of Swarm services on a Docker Swarm, placed on a node.

- Stack `<prefix>-<store id>`: services `db` (PostgreSQL) and `backend`, on an overlay network
  of the store's own (internal, not attachable: only the stack's services join it), every
  service, network, secret and volume labelled like the Docker runtime's objects.
- Placement: at its first deploy the store is placed on the least loaded node (the CPU limits
  of the plans of the stores already placed there) among the nodes that are `ready` and
  `active` and match `STOREFLEET_NODE_LABELS`; both services are pinned there by the node's label
  `io.storefleet.node` (the database's volume is local to that node). The choice is kept in the
  store's folder (`stores/<id>/node`) until the store's data is purged.
- Secrets are Swarm secrets (kept encrypted in the managers' Raft log), one per store, name and
  content (`<prefix>-<store id>-<name>-<sha256 prefix>`, at most 64 characters): never in the
  rendered file nor in an environment; a changed value is a new secret, the old one removed.
- The backend publishes its ports in host mode on its node (the ingress routing mesh does not
  work on every kernel), so its back_link is `http://<node address>:<port>`; services resolve
  each other by DNS round robin (`endpoint_mode: dnsrr`: no IPVS virtual IP).
- `apply` is `docker stack deploy` of the rendered file (the CLI turns a Compose file into
  services, networks and secrets references the way users know), then it watches the services'
  tasks through the Engine API until each runs healthy (a task with a health check runs only
  once healthy), or fails, or the deadline passes.
- Purging a store's data removes its volume on its node with a one-off job on that node (the
  manager's API sees no other node's volumes).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import yaml
from docker.errors import APIError, DockerException, NotFound

from storefleet.errors import (
    DeadlineExceeded,
    OperationCancelledError,
    PermanentFailure,
    RuntimeFailure,
)
from storefleet.runtime.base import (
    API_KEY,
    DEFAULT_LIMITS,
    Links,
    NodeInfo,
    Observed,
    Ports,
    ServiceState,
    StackPaths,
    StackSpec,
    StackStatus,
)

# the labels of every object a store has, as on the Docker runtime
from storefleet.runtime.docker.logs import lines_of
from storefleet.runtime.docker.stack import (
    EXPECTED_SERVICES,
    FLEET_LABEL,
    MANAGED,
    STORE_LABEL,
    split_image,
)
from storefleet.runtime.swarm.jobs import JOB_LABEL, Job, run_job

if TYPE_CHECKING:
    from storefleet.config import Settings

log = logging.getLogger(__name__)

NODE_LABEL = "io.storefleet.node"  # the node label stores are pinned by
PAUSED_LABEL = "io.storefleet.paused"  # a node being drained: no store is placed there
STACK_LABEL = "com.docker.stack.namespace"
SERVICES = ("db", "backend")
PGDATA = "/var/lib/postgresql/data"
POLL_S = 0.25
DUMP_PART = 400_000  # bytes of a dump per Swarm secret (Swarm takes at most 500 KiB)
DUMP_PARTS_MAX = 2_500  # 1 GB: a bigger store is moved by its operator's own means
FAILED_TASKS_MAX = 3  # a service whose tasks failed this often while deploying: give up


@dataclass(frozen=True)
class Node(NodeInfo):
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.state == "ready" and self.availability == "active"


def _node(raw: Mapping[str, Any]) -> Node:
    spec = raw.get("Spec") or {}
    labels = dict(spec.get("Labels") or {})
    availability = str(spec.get("Availability", "active"))
    if labels.get(PAUSED_LABEL) == "true" and availability == "active":
        availability = "pause"
    status = raw.get("Status") or {}
    hostname = str((raw.get("Description") or {}).get("Hostname", ""))
    return Node(
        id=str(raw.get("ID", "")),
        name=labels.get(NODE_LABEL) or hostname or str(raw.get("ID", ""))[:12],
        state=str(status.get("State", "unknown")),
        availability=availability,
        address=str(status.get("Addr", "")),
        manager=spec.get("Role") == "manager",
        since=str(raw.get("UpdatedAt", ""))[:19].replace("T", " "),
        labels=labels,
    )


def parse_node_labels(value: str) -> dict[str, str]:
    """`STOREFLEET_NODE_LABELS` (`zone=eu,disk=ssd`): the labels a node needs to take stores."""
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in value.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ValueError(f"node label {item!r} is not key=value")
        out[key.strip()] = val.strip()
    return out


class SwarmDriver:
    """Runs each store as a Swarm stack (see the module docstring)."""

    name = "swarm"
    secret_names: tuple[str, ...] = ("db_password", API_KEY)

    @classmethod
    def from_settings(cls, settings: Settings, fleet_id: str = "default") -> SwarmDriver:
        return cls(
            settings.stores_dir,
            backend_image=settings.backend_image,
            postgres_image=settings.postgres_image,
            docker_host=settings.docker_host,
            project_prefix=settings.project_prefix,
            extra_labels=settings.extra_label_map,
            health_interval=settings.swarm_health_interval,
            fleet_id=fleet_id,
            node_labels=parse_node_labels(settings.node_labels),
            allowed_origins=settings.store_allowed_origins,
        )

    def __init__(
        self,
        stores_dir: Path,
        *,
        backend_image: str,
        postgres_image: str,
        docker_host: str | None = None,
        project_prefix: str = "sf",
        extra_labels: Mapping[str, str] | None = None,
        health_interval: str = "1s",
        fleet_id: str = "default",
        node_labels: Mapping[str, str] | None = None,
        allowed_origins: str = "",
    ) -> None:
        self.stores_dir = stores_dir
        self.backend_image = backend_image
        self.postgres_image = postgres_image
        self.docker_host = docker_host
        self.project_prefix = project_prefix
        self.extra_labels = dict(extra_labels or {})
        self.health_interval = health_interval
        self.fleet_id = fleet_id
        self.node_labels = dict(node_labels or {})
        self.allowed_origins = allowed_origins
        self._client: docker.DockerClient | None = None
        self._published: tuple[float, set[int]] | None = None
        self._placing = threading.Lock()

    # -- the engine -----------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = (
                    docker.DockerClient(base_url=self.docker_host, version="auto")
                    if self.docker_host
                    else docker.from_env(version="auto")
                )
            except DockerException as exc:
                raise RuntimeFailure(f"cannot reach the Swarm manager: {exc}") from exc
        return self._client

    def _api(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot reach the Swarm manager ({what}): {exc}") from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- names ----------------------------------------------------------------------------

    def project(self, store_id: str) -> str:
        return f"{self.project_prefix}-{store_id}"

    def workspace(self, store_id: str) -> Path:
        return self.stores_dir / store_id / "deploy"

    def _node_file(self, store_id: str) -> Path:
        return self.stores_dir / store_id / "node"

    def volume_name(self, store_id: str) -> str:
        return f"{self.project(store_id)}_dbdata"

    def paths(self, store_id: str) -> StackPaths:
        node = self.placed_on(store_id)
        where = f" on node {node}" if node else ""
        return StackPaths(
            str(self.workspace(store_id)), f"volume:{self.volume_name(store_id)}{where}"
        )

    def _labels(self, store_id: str) -> dict[str, str]:
        return {
            **self.extra_labels,
            MANAGED: "true",
            FLEET_LABEL: self.fleet_id,
            STORE_LABEL: store_id,
        }

    def default_version(self) -> str:
        return split_image(self.backend_image)[1]

    @property
    def _repository(self) -> str:
        return split_image(self.backend_image)[0]

    def versions(self) -> list[str]:
        """The backend image's tags present on the manager (nodes load the same images)."""
        images = self._api("listing images", lambda: self.client.api.images(self._repository))
        tags = {
            tag.rpartition(":")[2]
            for image in images
            for tag in image.get("RepoTags") or []
            if tag.rpartition(":")[0] == self._repository
        }
        return sorted(tags | {self.default_version()})

    # -- nodes and placement ----------------------------------------------------------------

    def nodes(self) -> list[Node]:
        raw = self._api("listing nodes", lambda: self.client.api.nodes())
        return sorted((_node(n) for n in raw), key=lambda n: n.name)

    def placed_on(self, store_id: str) -> str | None:
        """The node the store is pinned to (None: not placed yet)."""
        try:
            return self._node_file(store_id).read_text().split()[0]
        except (OSError, IndexError):
            return None

    def _place(self, spec: StackSpec) -> Node:
        """The store's node: the one it is pinned to, else the least loaded usable node. One
        placement at a time, so that stores deployed together spread."""
        with self._placing:
            nodes = self.nodes()
            pinned = self.placed_on(spec.store_id)
            if pinned is not None:
                found = [n for n in nodes if n.name == pinned]
                if not found:
                    raise PermanentFailure(
                        f"store {spec.store_id} is pinned to node {pinned}, which left the "
                        "swarm: move it (its data is on that node)"
                    )
                return found[0]
            choice = self._least_loaded(nodes)
            cpus = 2 * (spec.limits.cpus if spec.limits else 1.0)  # backend and database
            path = self._node_file(spec.store_id)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.write_text(f"{choice.name} {cpus:g}\n")
            return choice

    def _least_loaded(self, nodes: Sequence[Node], *, but: str | None = None) -> Node:
        usable = [
            n
            for n in nodes
            if n.usable
            and n.name != but
            and NODE_LABEL in n.labels
            and all(n.labels.get(k) == v for k, v in self.node_labels.items())
        ]
        if not usable:
            wanted = ", ".join(f"{k}={v}" for k, v in self.node_labels.items())
            raise RuntimeFailure(
                "no node can take the store: none is ready, active and labelled "
                f"{NODE_LABEL}"
                + (f" with {wanted}" if wanted else "")
                + (f" (other than {but})" if but else "")
            )
        load = self.load()
        return min(usable, key=lambda n: (load.get(n.name, 0.0), n.name))

    def choose_node(self, store_id: str) -> str:
        with self._placing:
            return self._least_loaded(self.nodes(), but=self.placed_on(store_id)).name

    def set_availability(self, node: str, availability: str) -> None:
        """`pause` is the control plane's own (the node label `io.storefleet.paused`): no
        store is placed there, while the node still runs the jobs that move its stores away
        (Swarm's own `pause` would hold those jobs). `active` and `drain` are Swarm's."""
        found = next((n for n in self.nodes() if n.name == node), None)
        if found is None:
            raise PermanentFailure(f"there is no node {node}")
        raw = self._api("reading a node", lambda: self.client.api.inspect_node(found.id))
        spec = dict(raw["Spec"])
        labels = dict(spec.get("Labels") or {})
        if availability == "pause":
            labels[PAUSED_LABEL] = "true"
        else:
            labels.pop(PAUSED_LABEL, None)
            spec["Availability"] = availability
        if spec.get("Availability") == (raw["Spec"].get("Availability")) and labels == (
            raw["Spec"].get("Labels") or {}
        ):
            return
        spec["Labels"] = labels
        self._api(
            "updating a node",
            partial(self.client.api.update_node, found.id, raw["Version"]["Index"], spec),  # type: ignore[arg-type]
        )

    def load(self) -> dict[str, float]:
        """CPU reserved per node by the plans of the stores placed there (data kept there
        counts until it is purged)."""
        load: dict[str, float] = defaultdict(float)
        for path in self.stores_dir.glob("*/node"):
            try:
                name, cpus = path.read_text().split()[:2]
                load[name] += float(cpus)
            except (OSError, ValueError):
                continue
        return load

    def port_is_free(self, port: int) -> bool:
        """No service of the swarm publishes `port` (read at most once a second)."""
        now = time.monotonic()
        if self._published is None or now - self._published[0] >= 1.0:
            taken = {
                int(p.get("PublishedPort", 0))
                for service in self._api("listing services", lambda: self.client.api.services())
                for p in ((service.get("Spec") or {}).get("EndpointSpec") or {}).get("Ports") or []
            }
            self._published = (now, taken)
        return port not in self._published[1]

    # -- rendering ------------------------------------------------------------------------

    def _secret_name(self, store_id: str, name: str, value: str) -> str:
        """`<prefix>-<store id, no dashes>-<name>-<content digest>`: at most 64 characters,
        as Swarm allows; a new value is a new secret (a Swarm secret can not change)."""
        digest = hashlib.sha256(value.encode()).hexdigest()[:8]
        return f"{self.project_prefix}-{store_id.replace('-', '')}-{name}-{digest}"

    def render(self, spec: StackSpec, node: Node, secrets: Mapping[str, str]) -> dict[str, Any]:
        """The stack's Compose document (no secret value inside: only secrets' names)."""
        labels = self._labels(spec.store_id)
        limits = spec.limits or DEFAULT_LIMITS
        version = spec.version or self.default_version()
        deploy = {
            "endpoint_mode": "dnsrr",
            "labels": labels,
            "placement": {"constraints": [f"node.labels.{NODE_LABEL} == {node.name}"]},
            "resources": {"limits": {"cpus": f"{limits.cpus:g}", "memory": f"{limits.memory_mb}M"}},
            "restart_policy": {"condition": "any", "delay": "1s"},
            "update_config": {"order": "stop-first"},
        }
        health = {"interval": self.health_interval, "timeout": "3s", "retries": 60}
        logging_ = {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
        return {
            "services": {
                "db": {
                    "image": self.postgres_image,
                    "environment": {
                        "POSTGRES_USER": "store",
                        "POSTGRES_DB": "store",
                        "POSTGRES_PASSWORD_FILE": "/run/secrets/db_password",
                    },
                    "secrets": ["db_password"],
                    "volumes": [f"dbdata:{PGDATA}"],
                    "networks": ["db"],
                    "healthcheck": {
                        "test": ["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-U", "store"],
                        **health,
                    },
                    "labels": labels,
                    "logging": logging_,
                    "deploy": deploy,
                },
                "backend": {
                    "image": f"{self._repository}:{version}",
                    "environment": {
                        "STORE_ID": spec.store_id,
                        "STORE_BACKEND_VERSION": version,
                        "STORE_BIND_HOST": "0.0.0.0",  # noqa: S104 (inside its container)
                        "STORE_HTTP_PORT": "8000",
                        "STORE_WS_PORT": "8001",
                        "STORE_DATABASE_URL": "postgresql://store@db:5432/store",
                        "STORE_DATABASE_PASSWORD_FILE": "/run/secrets/db_password",
                        "STORE_API_KEY_FILE": "/run/secrets/api_key",
                        "STORE_ALLOWED_ORIGINS": self.allowed_origins,
                    },
                    "secrets": ["db_password", API_KEY],
                    **self._backend_reach(spec),
                    "healthcheck": {
                        "test": [
                            "CMD",
                            "python3",
                            "-c",
                            "import urllib.request as u; "
                            "u.urlopen('http://127.0.0.1:8000/health', timeout=2)",
                        ],
                        **health,
                    },
                    "labels": labels,
                    "logging": logging_,
                    "deploy": deploy,
                },
            },
            "networks": {
                # only this store's services join it; no route out of it
                "db": {"driver": "overlay", "internal": True, "labels": labels},
                # the backend's own way out (and in, by its host-mode ports): no other store
                "out": {"driver": "overlay", "labels": labels},
                **(
                    {"edge": {"external": True, "name": self.edge_network}}
                    if spec.socket_dir is not None
                    else {}
                ),
            },
            "volumes": {"dbdata": {"labels": labels}},
            "secrets": {
                key: {"external": True, "name": secret_name} for key, secret_name in secrets.items()
            },
        }

    def _backend_reach(self, spec: StackSpec) -> dict[str, Any]:
        """How the backend is reached: routed by the edge, on the edge's network under the
        store's hostnames (the edge dials the name it is asked for) and no port on any host;
        else by its ports, published in host mode on its node."""
        if spec.socket_dir is not None:
            return {
                "networks": {
                    "db": {},
                    "out": {},
                    "edge": {"aliases": list(spec.hostnames)},
                }
            }
        return {
            "ports": [
                {"target": 8000, "published": spec.ports.backend_port, "mode": "host"},
                {"target": 8001, "published": spec.ports.websocket_port, "mode": "host"},
            ],
            "networks": ["db", "out"],
        }

    @property
    def edge_network(self) -> str:
        return f"{self.project_prefix}-edge"

    def ensure_edge_network(self) -> str:
        """The overlay the edge and every routed backend join (made once, labelled like the
        stores' objects, not attachable: only services join it). Returns its id."""
        name = self.edge_network
        found = self._api("listing networks", lambda: self.client.api.networks(names=[name]))
        for network in found:
            if network.get("Name") == name:
                return str(network["Id"])
        labels = {**self.extra_labels, MANAGED: "true", FLEET_LABEL: self.fleet_id}
        try:
            made = self.client.api.create_network(
                name, driver="overlay", labels=labels, check_duplicate=True
            )
        except APIError as exc:  # made meanwhile by another caller
            if exc.status_code == 409:
                return self.ensure_edge_network()
            raise RuntimeFailure(f"cannot create the edge's network: {exc}") from exc
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot create the edge's network: {exc}") from exc
        return str(made["Id"])

    def internal_ports(self) -> Ports:
        """Where a routed stack's backend listens on the edge's network (no host port)."""
        return Ports(backend_port=8000, websocket_port=8001, db_port=5432)

    # -- apply ------------------------------------------------------------------------------

    def _ensure_secrets(self, spec: StackSpec) -> dict[str, str]:
        """The store's Swarm secrets (created when new; a changed value is a new secret)."""
        names: dict[str, str] = {}
        existing = {
            str(s.get("Spec", {}).get("Name"))
            for s in self._api(
                "listing secrets",
                lambda: self.client.api.secrets(
                    filters={"label": f"{STORE_LABEL}={spec.store_id}"}
                ),
            )
        }
        for key in self.secret_names:
            value = spec.secrets.get(key)
            if value is None:
                raise PermanentFailure(f"secret {key} of store {spec.store_id} was not provided")
            name = self._secret_name(spec.store_id, key, value)
            if name not in existing:
                labels = self._labels(spec.store_id)
                self._api(
                    "creating a secret",
                    partial(self.client.api.create_secret, name, value.encode(), labels=labels),
                )
            names[key] = name
        return names

    def _prune_secrets(self, store_id: str, keep: set[str]) -> None:
        for secret in self._api(
            "listing secrets",
            lambda: self.client.api.secrets(filters={"label": f"{STORE_LABEL}={store_id}"}),
        ):
            if str(secret.get("Spec", {}).get("Name")) not in keep:
                # still in use by a task that is going away: the next apply removes it
                with contextlib.suppress(NotFound, APIError):
                    self.client.api.remove_secret(secret["ID"])

    def apply(
        self,
        spec: StackSpec,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        node = self._place(spec)
        secrets = self._ensure_secrets(spec)
        workspace = self.workspace(spec.store_id)
        workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
        if spec.socket_dir is not None:
            self.ensure_edge_network()
        doc = self.render(spec, node, secrets)
        header = "# Rendered by storefleet for one store (Swarm). Secrets are Swarm secrets.\n"
        (workspace / "stack.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))
        self._cli(
            ["stack", "deploy", "--detach=true", "--prune", "--resolve-image=never",
             "-c", str(workspace / "stack.yaml"), self.project(spec.store_id)],
            timeout_s=max(1.0, deadline - time.monotonic()),
        )  # fmt: skip
        self._wait_running(spec.store_id, deadline, should_stop)
        self._prune_secrets(spec.store_id, set(secrets.values()))
        if spec.socket_dir is not None:
            # the route table's mark that the backend answers (no socket: the edge dials it by
            # name on its network)
            spec.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            for mark in ("http.sock", "ws.sock"):  # the names StackSpec.socket_dir promises
                (spec.socket_dir / mark).touch()

    def _cli(self, args: Sequence[str], *, timeout_s: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")}
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        try:
            done = subprocess.run(
                ["docker", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(f"docker {args[0]} {args[1]} took over {timeout_s:g} s") from exc
        except OSError as exc:
            raise RuntimeFailure(f"cannot run the docker CLI: {exc}") from exc
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise RuntimeFailure(f"docker {args[0]} {args[1]} failed: {tail}")

    def _wait_running(
        self, store_id: str, deadline: float, should_stop: Callable[[], bool] | None
    ) -> None:
        project = self.project(store_id)
        while True:
            services = {
                str(s["Spec"]["Name"]).removeprefix(project + "_"): s
                for s in self._services(f"{STORE_LABEL}={store_id}")
            }
            ready, failed = [], {}
            for name in SERVICES:
                service = services.get(name)
                if service is None:
                    continue
                current = self._tasks(service["ID"])
                running = [
                    t for t in current
                    if t["Status"]["State"] == "running" and t.get("DesiredState") == "running"
                    and _task_matches(t, service)
                ]  # fmt: skip
                if running:
                    ready.append(name)
                bad = [t for t in current if t["Status"]["State"] in ("failed", "rejected")]
                if len(bad) >= FAILED_TASKS_MAX:
                    failed[name] = str(bad[0]["Status"].get("Err") or bad[0]["Status"]["State"])
            if len(ready) == len(SERVICES):
                return
            if failed:
                what = "; ".join(f"{k}: {v}" for k, v in failed.items())
                raise RuntimeFailure(f"store {store_id}'s services keep failing on Swarm: {what}")
            if should_stop is not None and should_stop():
                raise OperationCancelledError(f"the deploy of store {store_id} was cancelled")
            if time.monotonic() >= deadline:
                waiting = [n for n in SERVICES if n not in ready]
                raise DeadlineExceeded(
                    f"store {store_id}'s services {', '.join(waiting)} were not running healthy "
                    "in time on Swarm"
                )
            time.sleep(POLL_S)

    # -- stop / remove ----------------------------------------------------------------------

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        """Scale both services to 0 (their data and secrets stay; `apply` starts them)."""
        deadline = time.monotonic() + timeout_s
        for service in self._services(f"{STORE_LABEL}={store_id}"):
            self._scale(service, 0)
        while any(self._live_tasks(s["ID"]) for s in self._services(f"{STORE_LABEL}={store_id}")):
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"store {store_id}'s services did not stop in time")
            time.sleep(POLL_S)

    def _scale(self, service: Mapping[str, Any], replicas: int) -> None:
        spec = service["Spec"]
        mode = spec.get("Mode") or {}
        if (mode.get("Replicated") or {}).get("Replicas") == replicas:
            return
        self._api(
            "scaling a service",
            partial(
                self.client.api.update_service,
                service["ID"],
                version=service["Version"]["Index"],
                task_template=spec.get("TaskTemplate"),
                name=spec.get("Name"),
                labels=spec.get("Labels"),
                mode={"Replicated": {"Replicas": replicas}},
                networks=(spec.get("TaskTemplate") or {}).get("Networks"),
                endpoint_spec=spec.get("EndpointSpec"),
                update_config=spec.get("UpdateConfig"),
            ),
        )

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        node = self.placed_on(store_id)
        services = self._services(f"{STORE_LABEL}={store_id}")
        for service in services:
            try:
                self.client.api.remove_service(service["ID"])
            except NotFound:
                pass
            except (DockerException, OSError) as exc:
                raise RuntimeFailure(f"cannot remove store {store_id}'s services: {exc}") from exc
        # networks and secrets go once no task holds them any more
        while True:
            left = self._leftovers(store_id)
            if not left:
                break
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"store {store_id}'s {', '.join(left)} did not go in time")
            time.sleep(POLL_S)
        if purge and node is not None:
            self._remove_volume(store_id, node, deadline)
        shutil.rmtree(self.workspace(store_id), ignore_errors=True)
        if purge:
            self._node_file(store_id).unlink(missing_ok=True)

    def _leftovers(self, store_id: str) -> list[str]:
        """Remove the store's networks and secrets that can go; name what is still there."""
        label = f"{STORE_LABEL}={store_id}"
        left = []
        for network in self._api(
            "listing networks", lambda: self.client.api.networks(filters={"label": label})
        ):
            # listed is still there: the manager lists a removed network for a moment, and
            # a stack deployed again then would count on it
            left.append(f"network {network.get('Name')}")
            with contextlib.suppress(NotFound, APIError):
                self.client.api.remove_network(network["Id"])
        for secret in self._api(
            "listing secrets", lambda: self.client.api.secrets(filters={"label": label})
        ):
            try:
                self.client.api.remove_secret(secret["ID"])
            except NotFound:
                pass
            except APIError:
                left.append(f"secret {secret.get('Spec', {}).get('Name')}")
        return left

    def _remove_volume(self, store_id: str, node: str, deadline: float) -> None:
        """Remove the store's volume on `node`: a job there, which asks that node's engine
        through its socket (mounted into the job only), after checking that the engine behind
        it is that node's."""
        node_id = next((n.id for n in self.nodes() if n.name == node), None)
        if node_id is None:
            raise RuntimeFailure(f"there is no node {node} to remove store {store_id}'s data on")
        script = (
            # the store's database container may still be going away: its volume is in use
            # (409) until then
            "import http.client, socket, sys, time\n"
            "class C(http.client.HTTPConnection):\n"
            "    def connect(self):\n"
            "        self.sock = socket.socket(socket.AF_UNIX)\n"
            "        self.sock.connect('/var/run/docker.sock')\n"
            "def ask(method, path):\n"
            "    c = C('localhost'); c.request(method, path)\n"
            "    r = c.getresponse(); body = r.read(); c.close(); return r.status, body\n"
            # the engine behind the socket must be this node's: a volume of the same name
            # elsewhere is another copy of the store's data (a move keeps one on each node)
            "import json\n"
            "found = json.loads(ask('GET', '/info')[1]).get('Swarm', {}).get('NodeID')\n"
            "if found != sys.argv[2]:\n"
            "    sys.exit('its docker.sock is the engine of node ' + str(found))\n"
            # gone, and still gone 3 s later (a task that was shutting down can not make it
            # again behind our back)
            "absent = 0\n"
            "for _ in range(240):\n"
            "    status = ask('DELETE', '/volumes/' + sys.argv[1])[0]\n"
            "    if status not in (204, 404, 409): print(status); sys.exit(1)\n"
            "    absent = absent + 1 if status in (204, 404) else 0\n"
            "    if absent >= 12: sys.exit(0)\n"
            "    time.sleep(0.25)\n"
            "sys.exit(1)\n"
        )
        run_job(
            self.client,
            Job(
                name=f"{self.project(store_id)}-purge",
                what=f"purging store {store_id}'s volume on {node}",
                image=self.backend_image,
                argv=["python3", "-c", script, self.volume_name(store_id), node_id],
                labels=self._labels(store_id),
                constraints=[f"node.labels.{NODE_LABEL} == {node}"],
                mounts=[
                    docker.types.Mount("/var/run/docker.sock", "/var/run/docker.sock", type="bind")
                ],
                user="0",
            ),
            deadline=deadline,
        )

    # -- data: backups, restores, moves ------------------------------------------------------

    def _db_job(
        self,
        store_id: str,
        what: str,
        script: str,
        secrets: Sequence[docker.types.SecretReference] = (),
    ) -> Job:
        """A job next to the store's database: on its node, on its `db` network, with its
        password as a secret file (`PGPASSWORD` is set inside the job's shell only)."""
        node = self.placed_on(store_id)
        if node is None:
            raise RuntimeFailure(f"store {store_id} is not placed on any node")
        password = next(
            (
                s
                for s in self._api(
                    "listing secrets",
                    lambda: self.client.api.secrets(filters={"label": f"{STORE_LABEL}={store_id}"}),
                )
                if "-db_password-" in str(s.get("Spec", {}).get("Name"))
            ),
            None,
        )
        if password is None:
            raise RuntimeFailure(f"store {store_id} has no database secret on the swarm")
        references = [
            docker.types.SecretReference(
                password["ID"], password["Spec"]["Name"], filename="db_password"
            ),
            *secrets,
        ]
        prelude = 'export PGPASSWORD="$(cat /run/secrets/db_password)" PGHOST=db PGUSER=store; '
        return Job(
            name=f"{self.project(store_id)}-{what}",
            what=f"the {what} of store {store_id} on {node}",
            image=self.postgres_image,
            argv=["sh", "-ec", prelude + script],
            labels=self._labels(store_id),
            constraints=[f"node.labels.{NODE_LABEL} == {node}"],
            networks=[f"{self.project(store_id)}_db"],
            secrets=references,
        )

    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        """`pg_dump --format=custom` in a job next to the store's database; the dump comes back
        base64-encoded on the job's output, checked against the sha256 the job printed first."""
        script = (
            "pg_dump --format=custom --dbname=store --file=/tmp/dump; "
            "sha256sum /tmp/dump | cut -d' ' -f1; base64 -w 76 /tmp/dump"
        )
        out = run_job(
            self.client,
            self._db_job(store_id, "backup", script),
            deadline=time.monotonic() + timeout_s,
        )
        digest, _, body = out.partition(b"\n")
        try:
            data = base64.b64decode(b"".join(body.split()), validate=True)
        except binascii.Error as exc:
            raise RuntimeFailure(f"the dump of store {store_id} came back garbled") from exc
        if hashlib.sha256(data).hexdigest() != digest.strip().decode(errors="replace"):
            raise RuntimeFailure(f"the dump of store {store_id} came back incomplete")
        with dest.open("wb") as handle:
            handle.write(data)
        return "pg_dump-custom"

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        """Stop the backend, then `pg_restore --clean` in a job next to the database, the dump
        handed over as Swarm secrets (encrypted in the Raft log; at most 500 KiB each, so in
        parts), removed once the job ends. The caller then applies the stack."""
        deadline = time.monotonic() + timeout_s
        self.quiesce(store_id, timeout_s=timeout_s)
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        parts = [data[i : i + DUMP_PART] for i in range(0, len(data), DUMP_PART)] or [b""]
        if len(parts) > DUMP_PARTS_MAX:
            raise PermanentFailure(
                f"the backup of store {store_id} is {len(data)} bytes: over what a restore on "
                f"Swarm takes ({DUMP_PART * DUMP_PARTS_MAX} bytes)"
            )
        created: list[tuple[str, str]] = []
        try:
            for number, part in enumerate(parts):
                name = f"{self.project_prefix}-{store_id.replace('-', '')}-restore-{number:04d}"
                found = self._api(
                    "creating a secret",
                    partial(
                        self.client.api.create_secret,
                        f"{name}-{digest[:8]}",
                        part,
                        labels=self._labels(store_id),
                    ),
                )
                created.append((str(found["ID"]), f"{name}-{digest[:8]}"))
            refs = [
                docker.types.SecretReference(sid, name, filename=f"part-{n:04d}")
                for n, (sid, name) in enumerate(created)
            ]
            script = (
                "cat /run/secrets/part-* > /tmp/dump; "
                f"echo '{digest}  /tmp/dump' | sha256sum -c --quiet; "
                "pg_restore --clean --if-exists --no-owner --single-transaction "
                "--dbname=store /tmp/dump"
            )
            job = self._db_job(store_id, "restore", script, refs)
            run_job(self.client, job, deadline=deadline)
        finally:
            for sid, _ in created:
                with contextlib.suppress(DockerException, OSError):
                    self.client.api.remove_secret(sid)

    def quiesce(self, store_id: str, *, timeout_s: float) -> None:
        """Stop the store's backend (no more writes); its database runs on."""
        deadline = time.monotonic() + timeout_s
        backend = [
            s
            for s in self._services(f"{STORE_LABEL}={store_id}")
            if str(s["Spec"]["Name"]).endswith("_backend")
        ]
        for service in backend:
            self._scale(service, 0)
        while any(self._live_tasks(s["ID"]) for s in backend):
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"store {store_id}'s backend did not stop in time")
            time.sleep(POLL_S)

    def relocate(self, store_id: str, node: str, *, timeout_s: float) -> str:
        """Remove the store's services where they run (its volume stays on that node) and pin
        it to `node`: the next `apply` runs it there, on a new, empty volume. Returns the node
        it left."""
        target = next((n for n in self.nodes() if n.name == node), None)
        if target is None or not target.usable or NODE_LABEL not in target.labels:
            raise PermanentFailure(f"node {node} can not take stores (not ready and active)")
        previous = self.placed_on(store_id)
        if previous is None:
            raise RuntimeFailure(f"store {store_id} is not placed on any node")
        self.remove(store_id, purge=False, timeout_s=timeout_s)
        self.pin(store_id, node)
        return previous

    def pin(self, store_id: str, node: str) -> None:
        """Pin the store to `node` (keeping the CPU its plan reserves)."""
        path = self._node_file(store_id)
        try:
            cpus = path.read_text().split()[1]
        except (OSError, IndexError):
            cpus = "1"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(f"{node} {cpus}\n")

    def drop_data(self, store_id: str, node: str, *, timeout_s: float) -> None:
        """Remove the store's volume on `node` (where it ran before a move)."""
        if node == self.placed_on(store_id):
            raise PermanentFailure(f"store {store_id} runs on {node}: its data there stays")
        self._remove_volume(store_id, node, time.monotonic() + timeout_s)

    # -- logs -------------------------------------------------------------------------------

    def services(self) -> tuple[str, ...]:
        return EXPECTED_SERVICES

    def logs(
        self,
        store_id: str,
        *,
        service: str,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> Iterator[str | None]:
        """The service's logs through the manager (from whichever node its tasks ran on)."""
        found = [
            s
            for s in self._services(f"{STORE_LABEL}={store_id}")
            if s["Spec"]["Name"] == f"{self.project(store_id)}_{service}"
        ]
        if not found:
            return
        try:
            options: dict[str, Any] = {"tail": "all" if tail is None else str(tail)}
            if since is not None:
                options["since"] = int(since.timestamp())
            stream = self.client.api.service_logs(
                found[0]["ID"], stdout=True, stderr=True, follow=follow, timestamps=True, **options
            )
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot read the logs of store {store_id}: {exc}") from exc
        yield from lines_of(stream, store_id)

    # -- observing --------------------------------------------------------------------------

    def _services(self, label: str) -> list[dict[str, Any]]:
        found = self._api(
            "listing services",
            lambda: self.client.api.services(filters={"label": [label, f"{MANAGED}=true"]}),
        )
        return [s for s in found if (s.get("Spec") or {}).get("Labels", {}).get(JOB_LABEL) is None]

    def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        return list(
            self._api(
                "listing tasks", lambda: self.client.api.tasks(filters={"service": service_id})
            )
        )

    def _live_tasks(self, service_id: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self._tasks(service_id)
            if t["Status"]["State"] in ("running", "starting", "preparing", "assigned", "pending")
        ]

    def links(self, spec: StackSpec) -> Links:
        node = self.placed_on(spec.store_id)
        db = f"postgresql://store@db:5432/store (inside {self.project(spec.store_id)}, on {node})"
        if spec.socket_dir is not None:  # routed: the edge gives the back_link
            return Links(f"http://{spec.hostnames[0]}:8000 (on {self.edge_network})", db)
        address = next((n.address for n in self.nodes() if n.name == node), None)
        if address is None:
            raise RuntimeFailure(f"store {spec.store_id} has no node to be reached on")
        return Links(f"http://{address}:{spec.ports.backend_port}", db)

    def status(self, store_id: str) -> StackStatus:
        services = self._services(f"{STORE_LABEL}={store_id}")
        tasks = [t for s in services for t in self._tasks(s["ID"])]
        return self._observe(store_id, services, tasks, {n.name: n for n in self.nodes()})

    def fleet_status(self) -> Mapping[str, StackStatus]:
        """Three Engine API calls for the whole fleet: services, tasks, nodes."""
        services = self._services(f"{FLEET_LABEL}={self.fleet_id}")
        tasks = self._api("listing tasks", lambda: self.client.api.tasks())
        nodes = {n.name: n for n in self.nodes()}
        by_store: dict[str, list[dict[str, Any]]] = {}
        store_of: dict[str, str] = {}
        for service in services:
            sid = (service["Spec"].get("Labels") or {}).get(STORE_LABEL)
            if sid:
                by_store.setdefault(sid, []).append(service)
                store_of[service["ID"]] = sid
        tasks_by_store: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            sid = store_of.get(str(task.get("ServiceID")))
            if sid:
                tasks_by_store.setdefault(sid, []).append(task)
        return {
            sid: self._observe(sid, found, tasks_by_store.get(sid, []), nodes)
            for sid, found in by_store.items()
        }

    def _observe(
        self,
        store_id: str,
        services: list[dict[str, Any]],
        tasks: list[dict[str, Any]],
        nodes: Mapping[str, Node],
    ) -> StackStatus:
        project = self.project(store_id)
        named = {str(s["Spec"]["Name"]).removeprefix(project + "_"): s for s in services}
        if not named:
            return StackStatus(Observed.ABSENT, False, self.placed_on(store_id) is not None)
        node = self.placed_on(store_id) or next(
            (n for s in services if (n := _pinned_node(s["Spec"].get("TaskTemplate") or {}))), None
        )
        states = []
        for name in SERVICES:
            service = named.get(name)
            if service is None:
                states.append(ServiceState(name, "missing", None))
                continue
            replicas = ((service["Spec"].get("Mode") or {}).get("Replicated") or {}).get(
                "Replicas", 1
            )
            mine = [t for t in tasks if t.get("ServiceID") == service["ID"]]
            running = any(
                t["Status"]["State"] == "running" and t.get("DesiredState") == "running"
                for t in mine
            )
            if replicas == 0:
                states.append(ServiceState(name, "stopped", None))
            else:
                states.append(ServiceState(name, "running" if running else "starting", running))
        where = nodes.get(node) if node else None
        if where is not None and where.state != "ready":
            detail = f"node {where.name} is {where.state} since {where.since} UTC"
            return StackStatus(Observed.ERROR, True, True, tuple(states), detail)
        if any(s.state == "missing" for s in states):
            return StackStatus(Observed.DEGRADED, True, True, tuple(states), repairable=True)
        if all(s.state == "stopped" for s in states):
            return StackStatus(Observed.STOPPED, True, True, tuple(states))
        if all(s.state == "running" for s in states):
            return StackStatus(Observed.RUNNING, True, True, tuple(states))
        failing = [
            str(t["Status"].get("Err") or "")
            for t in tasks
            if t["Status"]["State"] in ("failed", "rejected") and t["Status"].get("Err")
        ]
        why = f"restarting: {failing[-1]}" if failing else None
        return StackStatus(Observed.DEGRADED, True, True, tuple(states), why)


def _pinned_node(task_template: Mapping[str, Any]) -> str | None:
    for constraint in (task_template.get("Placement") or {}).get("Constraints") or []:
        key, _, value = str(constraint).partition("==")
        if key.strip() == f"node.labels.{NODE_LABEL}":
            return value.strip()
    return None


def _task_matches(task: Mapping[str, Any], service: Mapping[str, Any]) -> bool:
    """Whether the task runs the service's current spec (not a task of the previous one)."""
    image = (service["Spec"].get("TaskTemplate") or {}).get("ContainerSpec", {}).get("Image", "")
    ran = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", "")
    return bool(image) and str(ran).split("@")[0] == str(image).split("@")[0]
