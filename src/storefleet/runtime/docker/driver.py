"""Docker runtime: every store is one Compose project with its own PostgreSQL on a private network.

- Project `<prefix>-<store id>`; every container, network and volume carries
  `io.storefleet.managed=true` and `io.storefleet.store_id=<id>` (plus configured extra labels).
- Workspace `stores_dir/<id>/deploy/`: `compose.yaml` (no secret inside) and `secrets/`
  (files of mode 0600 handed to containers as Compose secrets).
- Apply runs `docker compose up -d --wait` (argv list, deadline). Remove runs `compose down`
  without `--volumes`; a named volume is removed only on purge, through the Engine API.
- Status comes from the Engine API by label: one call for one store, one for the whole fleet.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import yaml
from docker.errors import DockerException, ImageNotFound, NotFound

from storefleet.errors import (
    DeadlineExceeded,
    OperationCancelledError,
    PermanentFailure,
    RuntimeFailure,
)
from storefleet.runtime import logfiles
from storefleet.runtime.base import (
    API_KEY,
    Limits,
    Links,
    Observed,
    ServiceState,
    ServiceUsage,
    StackPaths,
    StackSpec,
    StackStatus,
    StackUsage,
    bind_probe,
    write_secret_file,
)
from storefleet.runtime.docker.template import default_template, render

if TYPE_CHECKING:
    from storefleet.config import Settings

log = logging.getLogger(__name__)

MANAGED = "io.storefleet.managed"
FLEET_LABEL = "io.storefleet.fleet"
STORE_LABEL = "io.storefleet.store_id"
SERVICE_LABEL = "com.docker.compose.service"
DEFAULT_PGDATA = "/var/lib/postgresql/data"
EXPECTED_SERVICES = ("backend", "db")
DISK_FRESH_S = 30.0


def _health_of(summary: Mapping[str, Any]) -> bool | None:
    text = str(summary.get("Status", ""))
    if "(healthy)" in text:
        return True
    if "(unhealthy)" in text or "(health: starting)" in text:
        return False
    return None


class DockerDriver:
    """Runs each store as a Compose project (see the module docstring)."""

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

    @classmethod
    def from_settings(cls, settings: Settings, fleet_id: str = "default") -> DockerDriver:
        template = settings.stack_template.read_text() if settings.stack_template else None
        return cls(
            settings.stores_dir,
            backend_image=settings.backend_image,
            postgres_image=settings.postgres_image,
            public_host=settings.public_host,
            bind_host=settings.backend_bind_host,
            publish_db_port=settings.publish_db_port,
            template=template,
            docker_host=settings.docker_host,
            project_prefix=settings.project_prefix,
            extra_labels=settings.extra_label_map,
            health_interval=settings.docker_health_interval,
            fleet_id=fleet_id,
            crashloop_error_after=settings.crashloop_error_after,
            allowed_origins=settings.store_allowed_origins,
        )

    # -- plumbing ---------------------------------------------------------------------------

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

    def links(self, spec: StackSpec) -> Links:
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

    # -- apply ------------------------------------------------------------------------------

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
        """The backend image without its tag (`registry:5000/x/y:1.0` -> `registry:5000/x/y`)."""
        name, _, tag = self.backend_image.rpartition(":")
        return name if name and "/" not in tag else self.backend_image

    def default_version(self) -> str:
        name, _, tag = self.backend_image.rpartition(":")
        return tag if name and "/" not in tag else "latest"

    def port_is_free(self, port: int) -> bool:
        """A local engine publishes on this host: a bind probe here. A remote one
        (`STOREFLEET_DOCKER_HOST=tcp://...`, `ssh://...`): the host ports its containers
        publish (read at most once a second)."""
        host = self.docker_host or os.environ.get("DOCKER_HOST", "")
        if not host or host.startswith("unix://"):
            return bind_probe(port)
        return port not in self._published_ports()

    def _published_ports(self) -> set[int]:
        now = time.monotonic()
        if self._published is not None and now - self._published[0] < 1.0:
            return self._published[1]
        try:
            containers = self.client.containers.list()
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot list the containers of the engine: {exc}") from exc
        ports = {
            int(binding["HostPort"])
            for container in containers
            for bindings in (container.ports or {}).values()
            for binding in bindings or ()
            if binding.get("HostPort", "").isdigit()
        }
        self._published = (now, ports)
        return ports

    def versions(self) -> list[str]:
        """Tags of the backend image's repository present on the Docker host."""
        try:
            images = self.client.images.list(name=self._repository)
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot list the backend images: {exc}") from exc
        prefix = self._repository + ":"
        return sorted(
            {t[len(prefix) :] for image in images for t in image.tags if t.startswith(prefix)}
        )

    def _values(
        self,
        store_id: str,
        ports: tuple[int, int, int],
        version: str = "",
        limits: Limits | None = None,
    ) -> dict[str, str]:
        limits = limits or Limits(cpus=1.0, memory_mb=512)
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
        )

    def _write_workspace(self, spec: StackSpec) -> None:
        workspace = self.workspace(spec.store_id)
        doc = self.render(spec)
        workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
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

    def apply(
        self,
        spec: StackSpec,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        started = time.monotonic()
        self._write_workspace(spec)
        remaining = max(1.0, timeout_s - (time.monotonic() - started))
        self._compose(
            spec.store_id,
            [
                "up",
                "--detach",
                "--wait",
                "--wait-timeout",
                str(int(remaining) + 1),
                "--remove-orphans",
                "--quiet-pull",
            ],
            timeout_s=remaining + 5,
            should_stop=should_stop,
        )

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        if (self.workspace(store_id) / "compose.yaml").is_file():
            self._compose(store_id, ["stop", "--timeout", "10"], timeout_s=timeout_s)

    # -- backups ----------------------------------------------------------------------------

    def _service_containers(self, store_id: str, service: str) -> list[Mapping[str, Any]]:
        """Summaries of the store's containers of one Compose service (one Engine API call)."""
        return [
            c
            for c in self._containers(f"{STORE_LABEL}={store_id}")
            if (c.get("Labels") or {}).get(SERVICE_LABEL) == service
        ]

    def _db_container(self, store_id: str) -> Any:
        found = [c for c in self._service_containers(store_id, "db") if c.get("State") == "running"]
        if not found:
            raise RuntimeFailure(f"the database of store {store_id} is not running")
        return self.client.containers.get(found[0]["Id"])

    def _exec(self, container: Any, argv: list[str], what: str) -> None:
        result = container.exec_run(argv, user="postgres")
        if result.exit_code != 0:
            tail = " | ".join(result.output.decode(errors="replace").strip().splitlines()[-3:])
            raise RuntimeFailure(f"{what} failed: {tail}")

    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        """`pg_dump --format=custom` inside the db container (local socket, no password),
        then copied out through the Engine API."""
        # a path inside the store's own db container, not on this host
        inside = f"/tmp/storefleet-backup-{os.getpid()}-{threading.get_ident()}.dump"  # noqa: S108
        try:
            db = self._db_container(store_id)
            self._exec(
                db,
                [
                    "pg_dump",
                    "--format=custom",
                    "--username=store",
                    "--dbname=store",
                    "--file",
                    inside,
                ],
                f"pg_dump of store {store_id}",
            )
            stream, _ = db.get_archive(inside)
            with tempfile.TemporaryFile() as tar_file:
                for chunk in stream:
                    tar_file.write(chunk)
                tar_file.seek(0)
                with tarfile.open(fileobj=tar_file) as tar:
                    member = tar.next()
                    handle = tar.extractfile(member) if member else None
                    if handle is None:
                        raise RuntimeFailure(f"the dump of store {store_id} came back empty")
                    with dest.open("wb") as out:
                        shutil.copyfileobj(handle, out)
            db.exec_run(["rm", "-f", inside], user="postgres")
        except (DockerException, OSError, tarfile.TarError) as exc:
            raise RuntimeFailure(f"backup of store {store_id} failed: {exc}") from exc
        return "pg_dump-custom"

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        """Stop the backend, copy the dump into the db container, `pg_restore --clean`."""
        self._compose(store_id, ["stop", "--timeout", "10", "backend"], timeout_s=timeout_s)
        # a path inside the store's own db container, not on this host
        inside = f"/tmp/storefleet-restore-{os.getpid()}-{threading.get_ident()}.dump"  # noqa: S108
        try:
            db = self._db_container(store_id)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                info = tar.gettarinfo(str(source), arcname=Path(inside).name)
                info.uid = info.gid = 0
                info.mode = 0o644
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            if not db.put_archive(str(Path(inside).parent), buffer.getvalue()):
                raise RuntimeFailure(f"could not copy the backup into store {store_id}")
            self._exec(
                db,
                [
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--single-transaction",
                    "--username=store",
                    "--dbname=store",
                    inside,
                ],
                f"pg_restore of store {store_id}",
            )
            db.exec_run(["rm", "-f", inside], user="root")
        except (DockerException, OSError, tarfile.TarError) as exc:
            raise RuntimeFailure(f"restore of store {store_id} failed: {exc}") from exc

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
        found = self._service_containers(store_id, service)
        if not found:
            return
        try:
            container = self.client.containers.get(found[0]["Id"])
            stream = container.logs(
                stream=True,
                follow=follow,
                timestamps=True,
                tail="all" if tail is None else tail,
                since=since,
            )
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot read the logs of store {store_id}: {exc}") from exc
        # The Engine API stream blocks until the container writes: a thread of this stream's
        # own reads it into a bounded queue, so that this iterator yields None while idle and
        # closing it (closing the stream's socket) ends the thread at once.
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=256)
        closed = threading.Event()

        def pump() -> None:
            try:
                for chunk in stream:
                    while not closed.is_set():
                        try:
                            chunks.put(chunk, timeout=0.25)
                            break
                        except queue.Full:
                            continue
                    if closed.is_set():
                        return
            except Exception as exc:  # closed under us (the reader left), or Docker went away
                log.debug("log stream of store %s ended: %s", store_id, exc, exc_info=True)
            finally:
                with contextlib.suppress(queue.Full):
                    chunks.put_nowait(None)

        reader = threading.Thread(target=pump, name=f"logs-{store_id[:8]}", daemon=True)
        reader.start()
        pending = b""
        try:
            while True:
                try:
                    chunk = chunks.get(timeout=logfiles.IDLE_TICK_S)
                except queue.Empty:
                    yield None
                    continue
                if chunk is None:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            closed.set()
            with contextlib.suppress(Exception):
                stream.close()
            reader.join(timeout=2)

    def refresh_secrets(self, store_id: str, secrets: Mapping[str, str]) -> None:
        secrets_dir = self.workspace(store_id) / "secrets"
        if not secrets_dir.is_dir():
            return
        for name, value in secrets.items():
            if name in self.secret_names:  # in place: the containers' bind mounts follow
                write_secret_file(secrets_dir / name, value, self.secret_uid)

    # -- remove -----------------------------------------------------------------------------

    def remove(self, store_id: str, *, purge: bool, timeout_s: float) -> None:
        workspace = self.workspace(store_id)
        if (workspace / "compose.yaml").is_file():
            try:
                self._compose(
                    store_id,
                    ["down", "--remove-orphans", "--timeout", "10"],
                    timeout_s=timeout_s,
                )
            except RuntimeFailure as exc:
                # The label sweep below removes what compose could not.
                log.warning("compose down of store %s failed: %s", store_id, exc.message)
        self._sweep(store_id, volumes=purge)
        shutil.rmtree(workspace, ignore_errors=True)
        if purge:
            shutil.rmtree(self.stores_dir / store_id, ignore_errors=True)

    def _sweep(self, store_id: str, *, volumes: bool) -> None:
        """Remove every container and network (and with `volumes`, volume) of the store."""
        label = f"{STORE_LABEL}={store_id}"
        try:
            for container in self.client.containers.list(all=True, filters={"label": label}):
                try:
                    container.remove(force=True)
                except NotFound:
                    continue
            for network in self.client.networks.list(filters={"label": label}):
                try:
                    network.remove()
                except NotFound:
                    continue
            if volumes:
                for volume in self.client.volumes.list(filters={"label": label}):
                    try:
                        volume.remove(force=True)
                    except NotFound:
                        continue
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"removing the stack of store {store_id} failed: {exc}") from exc

    # -- observe ----------------------------------------------------------------------------

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

    def _judge(
        self, store_id: str, containers: Sequence[Mapping[str, Any]], has_volume: bool
    ) -> StackStatus:
        services = tuple(
            sorted(
                (
                    ServiceState(
                        name=str((c.get("Labels") or {}).get(SERVICE_LABEL, "?")),
                        state=str(c.get("State", "unknown")),
                        healthy=_health_of(c),
                    )
                    for c in containers
                ),
                key=lambda s: s.name,
            )
        )
        names = {s.name for s in services}
        running = [s for s in services if s.state == "running"]
        backend_exists = "backend" in names or self.workspace(store_id).is_dir()
        if not services:
            observed = Observed.STOPPED if self.workspace(store_id).is_dir() else Observed.ABSENT
        elif (
            all(n in names for n in EXPECTED_SERVICES)
            and len(running) == len(services)
            and all(s.healthy is not False for s in services)
        ):
            observed = Observed.RUNNING
        elif running or any(s.state == "restarting" for s in services):
            observed = Observed.DEGRADED
        else:
            observed = Observed.STOPPED
        detail = None
        crashing = self._crash_loop(containers)
        if crashing is not None:
            observed, detail = Observed.ERROR, crashing
        elif observed is not Observed.RUNNING and services:
            detail = ", ".join(
                f"{s.name}: {s.state}{'' if s.healthy is not False else ' (unhealthy)'}"
                for s in services
            )
        gone = {"exited", "dead", "created"}
        repairable = self.workspace(store_id).is_dir() and (
            any(n not in names for n in EXPECTED_SERVICES) or any(s.state in gone for s in services)
        )
        return StackStatus(observed, backend_exists, has_volume, services, detail, repairable)

    def data_owners(self) -> set[str]:
        return self._volumes(f"{FLEET_LABEL}={self.fleet_id}") - {""}

    def _crash_loop(self, containers: Sequence[Mapping[str, Any]]) -> str | None:
        """A service that keeps crashing (Docker restarts it with its own growing back-off):
        its reason. Only restarting containers are inspected, so this stays cheap."""
        for summary in containers:
            if summary.get("State") != "restarting":
                continue
            try:
                attrs = self.client.api.inspect_container(summary["Id"])
            except (DockerException, OSError):
                continue
            restarts = int(attrs.get("RestartCount") or 0)
            if restarts >= self.crashloop_error_after:
                service = (summary.get("Labels") or {}).get(SERVICE_LABEL, "?")
                code = (attrs.get("State") or {}).get("ExitCode")
                return (
                    f"{service} keeps crashing: exited with code {code}, restarted {restarts} "
                    "times (Docker retries with a growing back-off)"
                )
        return None

    def status(self, store_id: str) -> StackStatus:
        label = f"{STORE_LABEL}={store_id}"
        return self._judge(store_id, self._containers(label), store_id in self._volumes(label))

    def usage(self, store_id: str) -> StackUsage | None:
        """From the Engine API: one one-shot stats call per running container, and the size of
        the database directory measured inside the db container (`du`)."""
        running = [
            c for c in self._containers(f"{STORE_LABEL}={store_id}") if c.get("State") == "running"
        ]
        services = []
        disk: int | None = None
        try:
            for summary in running:
                name = str((summary.get("Labels") or {}).get(SERVICE_LABEL, "?"))
                stats = self.client.api.stats(summary["Id"], stream=False, one_shot=True)
                cpu_ns = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get(
                    "total_usage"
                ) or 0
                memory = stats.get("memory_stats") or {}
                detail = memory.get("stats") or {}
                # what the kernel could not reclaim at once: usage minus inactive page cache
                cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
                used = max(0, int(memory.get("usage") or 0) - int(cache or 0))
                services.append(ServiceUsage(name, cpu_ns / 1e9, used))
                if name == "db":
                    disk = self._db_disk(summary["Id"])
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot read the usage of store {store_id}: {exc}") from exc
        if not services:
            return None
        return StackUsage(tuple(sorted(services, key=lambda s: s.name)), disk)

    def _db_disk(self, container_id: str) -> int | None:
        """`du` of the database directory; cached for DISK_FRESH_S (a `du` is an exec, ~60 ms,
        and the size of a database moves slowly)."""
        cached = self._disk.get(container_id)
        if cached is not None and time.monotonic() - cached[0] < DISK_FRESH_S:
            return cached[1]
        size = self._measure_disk(container_id)
        self._disk[container_id] = (time.monotonic(), size)
        return size

    def _measure_disk(self, container_id: str) -> int | None:
        result = self.client.api.exec_create(
            container_id, ["du", "-s", "-B1", self._pgdata()], user="postgres"
        )
        output = self.client.api.exec_start(result["Id"])
        try:
            return int(output.split()[0])
        except (ValueError, IndexError):
            return None

    def fleet_status(self) -> Mapping[str, StackStatus]:
        label = f"{FLEET_LABEL}={self.fleet_id}"
        by_store: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for container in self._containers(label):
            store_id = (container.get("Labels") or {}).get(STORE_LABEL)
            if store_id:
                by_store[str(store_id)].append(container)
        with_volume = self._volumes(label)
        stores = set(by_store)
        if self.stores_dir.is_dir():
            stores.update(e.name for e in self.stores_dir.iterdir() if (e / "deploy").is_dir())
        return {sid: self._judge(sid, by_store.get(sid, []), sid in with_volume) for sid in stores}
