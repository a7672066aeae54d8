"""A store's Compose project on the Docker runtime: the driver's configuration, names and
labels, the rendered compose file, the `docker compose` command and the Engine API client."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import yaml
from docker.errors import DockerException, ImageNotFound

from storefleet.errors import (
    DeadlineExceeded,
    OperationCancelledError,
    PermanentFailure,
    RuntimeFailure,
)
from storefleet.runtime.base import (
    API_KEY,
    DEFAULT_LIMITS,
    Limits,
    Links,
    Ports,
    StackPaths,
    StackSpec,
    write_secret_file,
)
from storefleet.runtime.docker.template import default_template, render

MANAGED = "io.storefleet.managed"
FLEET_LABEL = "io.storefleet.fleet"
STORE_LABEL = "io.storefleet.store_id"
SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "com.docker.compose.project"
DEFAULT_PGDATA = "/var/lib/postgresql/data"
EXPECTED_SERVICES = ("backend", "db")


def split_image(image: str) -> tuple[str, str]:
    """An image's repository and tag (`registry:5000/x/y:1.0` -> `registry:5000/x/y`, `1.0`;
    no tag: `latest`)."""
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "latest")


DISK_FRESH_S = 30.0


def health_of(summary: Mapping[str, Any]) -> bool | None:
    """What Docker's health check said: True, False (unhealthy), None (no check, or none ran
    yet since the container started: a deploy checked the backend itself before it ended)."""
    text = str(summary.get("Status", ""))
    if "(healthy)" in text:
        return True
    if "(unhealthy)" in text:
        return False
    return None


class DockerStack:
    """What every part of the Docker driver stands on (see `driver.py`)."""

    name = "docker"
    secret_names: tuple[str, ...] = ("db_password", API_KEY)

    def __init__(
        self,
        stores_dir: Path,
        *,
        backend_image: str,
        postgres_image: str,
        public_host: str = "127.0.0.1",
        bind_host: str = "127.0.0.1",
        publish_db_port: bool = True,
        template: str | None = None,
        docker_host: str | None = None,
        project_prefix: str = "sf",
        extra_labels: Mapping[str, str] | None = None,
        secret_uid: int = 10001,
        health_interval: str = "1s",
        fleet_id: str = "default",
        crashloop_error_after: int = 5,
        allowed_origins: str = "",
    ) -> None:
        self.stores_dir = stores_dir
        self.allowed_origins = allowed_origins
        self.backend_image = backend_image
        self.postgres_image = postgres_image
        self.public_host = public_host
        self.bind_host = bind_host
        self.publish_db_port = publish_db_port
        self.template = template or default_template()
        self.docker_host = docker_host
        self._published: tuple[float, set[int]] | None = None
        self.project_prefix = project_prefix
        self.extra_labels = dict(extra_labels or {})
        self.secret_uid = secret_uid
        self.health_interval = health_interval
        self.fleet_id = fleet_id
        self.crashloop_error_after = crashloop_error_after
        self._client: docker.DockerClient | None = None
        self._running: set[subprocess.Popen[str]] = set()
        self._running_lock = threading.Lock()
        self._disk: dict[str, tuple[float, int | None]] = {}
        self._check_template()

    def _check_template(self) -> None:
        """Refuse a bad stack template when the control plane starts, not at a store's deploy."""
        sample = "00000000-0000-4000-8000-000000000000"
        render(
            self.template,
            values={**self._values(sample, (1, 2, 3)), "PGDATA": DEFAULT_PGDATA},
            project=self.project(sample),
            labels=self._labels(sample),
            secret_files={name: f"./secrets/{name}" for name in self.secret_names},
            root=self.workspace(sample).resolve(),
            publish_db_port=self.publish_db_port,
        )

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                if self.docker_host:
                    self._client = docker.DockerClient(base_url=self.docker_host, version="auto")
                else:
                    self._client = docker.from_env(version="auto")
            except DockerException as exc:
                raise RuntimeFailure(f"cannot reach the Docker engine: {exc}") from exc
        return self._client

    def project(self, store_id: str) -> str:
        return f"{self.project_prefix}-{store_id}"

    def workspace(self, store_id: str) -> Path:
        return self.stores_dir / store_id / "deploy"

    def volume_name(self, store_id: str) -> str:
        return f"{self.project(store_id)}_dbdata"

    def paths(self, store_id: str) -> StackPaths:
        return StackPaths(str(self.workspace(store_id)), f"volume:{self.volume_name(store_id)}")

    def internal_ports(self) -> Ports:
        """Where a routed stack's services listen inside it (it publishes none)."""
        return Ports(backend_port=8000, websocket_port=8001, db_port=5432)

    def links(self, spec: StackSpec) -> Links:
        if spec.socket_dir is not None:  # routed: the edge gives the back_link, no port is out
            db = f"postgresql://store@db:5432/store (inside {self.project(spec.store_id)})"
            return Links(f"unix:{spec.socket_dir}/http.sock", db)
        if self.publish_db_port:
            db = f"postgresql://store@{self.public_host}:{spec.ports.db_port}/store"
        else:
            db = f"postgresql://store@db:5432/store (inside {self.project(spec.store_id)})"
        return Links(f"http://{self.public_host}:{spec.ports.backend_port}", db)

    def _labels(self, store_id: str) -> dict[str, str]:
        return {
            **self.extra_labels,
            MANAGED: "true",
            FLEET_LABEL: self.fleet_id,
            STORE_LABEL: store_id,
        }

    def _compose(
        self,
        store_id: str,
        args: Sequence[str],
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")}
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        workspace = self.workspace(store_id)
        argv = [
            "docker",
            "compose",
            "--project-name",
            self.project(store_id),
            "--file",
            str(workspace / "compose.yaml"),
            *args,
        ]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=workspace,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot run docker compose: {exc}") from exc
        deadline = time.monotonic() + timeout_s
        with self._running_lock:
            self._running.add(proc)
        try:
            while True:
                try:
                    output, _ = proc.communicate(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if should_stop is not None and should_stop():
                        raise OperationCancelledError(
                            f"docker compose {args[0]} for store {store_id} was cancelled"
                        ) from None
                    if time.monotonic() >= deadline:
                        raise DeadlineExceeded(
                            f"docker compose {args[0]} for store {store_id} did not finish "
                            f"within {timeout_s:g} s"
                        ) from None
        finally:
            with self._running_lock:
                self._running.discard(proc)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            tail = " | ".join((output or "").strip().splitlines()[-4:])
            raise RuntimeFailure(f"docker compose {args[0]} for store {store_id} failed: {tail}")

    def close(self) -> None:
        """End `docker compose` runs still going (their operations are recovered later)."""
        with self._running_lock:
            running = list(self._running)
        for proc in running:
            if proc.poll() is None:
                proc.terminate()

    def _pgdata(self) -> str:
        """The data path the PostgreSQL image declares as a volume."""
        try:
            config = self.client.images.get(self.postgres_image).attrs.get("Config") or {}
        except ImageNotFound as exc:
            raise RuntimeFailure(
                f"image {self.postgres_image} is not on this Docker host (run `make images`)"
            ) from exc
        declared = sorted((config.get("Volumes") or {}).keys())
        env = dict(str(e).split("=", 1) for e in config.get("Env") or [] if "=" in str(e))
        if env.get("PGDATA") in declared:
            return str(env["PGDATA"])
        return str(declared[0]) if declared else str(env.get("PGDATA", DEFAULT_PGDATA))

    @property
    def _repository(self) -> str:
        return split_image(self.backend_image)[0]

    def _values(
        self,
        store_id: str,
        ports: tuple[int, int, int],
        version: str = "",
        limits: Limits | None = None,
    ) -> dict[str, str]:
        limits = limits or DEFAULT_LIMITS
        return {
            "STORE_ID": store_id,
            "BACKEND_IMAGE": f"{self._repository}:{version or self.default_version()}",
            "BACKEND_VERSION": version or self.default_version(),
            "CPU_LIMIT": f"{limits.cpus:g}",
            "MEMORY_LIMIT": f"{limits.memory_mb}m",
            "POSTGRES_IMAGE": self.postgres_image,
            "BACKEND_PORT": str(ports[0]),
            "WS_PORT": str(ports[1]),
            "DB_PORT": str(ports[2]),
            "BIND_HOST": self.bind_host,
            "DB_BIND_HOST": "127.0.0.1",
            "HEALTH_INTERVAL": self.health_interval,
            "ALLOWED_ORIGINS": self.allowed_origins,
        }

    def render(self, spec: StackSpec) -> dict[str, Any]:
        ports = (spec.ports.backend_port, spec.ports.websocket_port, spec.ports.db_port)
        values = self._values(spec.store_id, ports, spec.version, spec.limits)
        return render(
            self.template,
            values={**values, "PGDATA": self._pgdata()},
            project=self.project(spec.store_id),
            labels=self._labels(spec.store_id),
            secret_files={name: f"./secrets/{name}" for name in self.secret_names},
            root=self.workspace(spec.store_id).resolve(),
            publish_db_port=self.publish_db_port,
            socket_dir=spec.socket_dir,
        )

    def _write_workspace(self, spec: StackSpec) -> None:
        workspace = self.workspace(spec.store_id)
        doc = self.render(spec)
        workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
        if spec.socket_dir is not None:  # the backend's user makes its sockets there
            spec.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            try:
                os.chown(spec.socket_dir, self.secret_uid, self.secret_uid)
            except PermissionError:
                spec.socket_dir.chmod(0o777)
        secrets_dir = workspace / "secrets"
        secrets_dir.mkdir(exist_ok=True, mode=0o711)
        for name in self.secret_names:
            value = spec.secrets.get(name)
            if value is None:
                raise PermanentFailure(f"secret {name} of store {spec.store_id} was not provided")
            # the backend's user (secret_uid) reads it
            write_secret_file(secrets_dir / name, value, self.secret_uid)
        header = "# Rendered by storefleet for one store. Secrets are files in ./secrets/.\n"
        (workspace / "compose.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False))

    def _service_containers(self, store_id: str, service: str) -> list[Mapping[str, Any]]:
        """Summaries of the store's containers of one Compose service (one Engine API call)."""
        return [
            c
            for c in self._containers(f"{STORE_LABEL}={store_id}")
            if (c.get("Labels") or {}).get(SERVICE_LABEL) == service
        ]

    def _containers(self, label: str) -> list[Mapping[str, Any]]:
        try:
            found = self.client.api.containers(all=True, filters={"label": label})
            return list(found)
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(
                f"cannot reach the Docker engine (listing containers): {exc}"
            ) from exc

    def _volumes(self, label: str) -> set[str]:
        try:
            found = self.client.api.volumes(filters={"label": label}).get("Volumes") or []
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(
                f"cannot reach the Docker engine (listing volumes): {exc}"
            ) from exc
        return {str((v.get("Labels") or {}).get(STORE_LABEL, "")) for v in found}

    def default_version(self) -> str:
        return split_image(self.backend_image)[1]
