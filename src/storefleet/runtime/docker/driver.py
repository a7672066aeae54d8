"""Docker runtime: every store is one Compose project with its own PostgreSQL on a private network.

- Project `<prefix>-<store id>`; every container, network and volume carries
  `io.storefleet.managed=true` and `io.storefleet.store_id=<id>` (plus configured extra labels).
- Workspace `stores_dir/<id>/deploy/`: `compose.yaml` (no secret inside) and `secrets/`
  (files of mode 0600 handed to containers as Compose secrets).
- Apply runs `docker compose up -d` (argv list, deadline), then polls the backend's /health.
  Remove runs `compose down` without `--volumes`; a named volume is removed only on purge,
  through the Engine API.
- Status comes from the Engine API by label: one call for one store, one for the whole fleet.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from docker.errors import DockerException, NotFound

from storefleet.errors import OperationCancelledError, RuntimeFailure
from storefleet.runtime.base import (
    DEFAULT_LIMITS,
    Observed,
    StackSpec,
    bind_probe,
    write_secret_file,
)
from storefleet.runtime.docker.backup import DockerBackups
from storefleet.runtime.docker.logs import DockerLogs
from storefleet.runtime.docker.observe import DockerObserver
from storefleet.runtime.docker.stack import PROJECT_LABEL, SERVICE_LABEL, STORE_LABEL
from storefleet.runtime.health import NotYet, wait_healthy

if TYPE_CHECKING:
    from storefleet.config import Settings

log = logging.getLogger(__name__)


class DockerDriver(DockerObserver, DockerBackups, DockerLogs):
    """Runs each store as a Compose project (see the module docstring): applies, stops and
    removes stacks here; observing (`observe.py`), backups (`backup.py`), logs (`logs.py`) and
    the project itself (`stack.py`) are its parts."""

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

    def apply(
        self,
        spec: StackSpec,
        *,
        timeout_s: float,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """`compose up` without `--wait`: every service starts at once (the backend retries
        its database until it answers), then the backend's /health, which reaches the
        database, is polled every 10 ms rather than at Docker's health-check interval; done
        when it answers and every service runs, and the plan's CPU limit is set (see
        `_limit_cpus`). A service that exits while starting fails the apply at once, saying
        which."""
        started = time.monotonic()
        self._write_workspace(spec)
        remaining = max(1.0, timeout_s - (time.monotonic() - started))
        self._compose(
            spec.store_id,
            ["up", "--detach", "--remove-orphans", "--quiet-pull"],
            timeout_s=remaining + 5,
            should_stop=should_stop,
        )
        remaining = max(1.0, timeout_s - (time.monotonic() - started))

        def watch(answered: bool) -> None:
            if should_stop is not None and should_stop():
                raise OperationCancelledError(
                    f"starting the stack of store {spec.store_id} was cancelled"
                )
            stack = self.status(spec.store_id)
            down = [s for s in stack.services if s.state in ("restarting", "exited", "dead")]
            if down:
                said = ", ".join(f"{s.name} {s.state}" for s in down)
                raise RuntimeFailure(f"the stack of store {spec.store_id} did not start: {said}")
            if answered and stack.observed is not Observed.RUNNING:
                raise NotYet(stack.detail or "not every service runs yet")

        self._await_backend(spec, timeout_s=remaining, watch=watch)
        self._limit_cpus(spec)

    def _limit_cpus(self, spec: StackSpec) -> None:
        """The plan's CPU limit on every container of the stack, set once it is healthy. The
        default stack starts without one: a database's first start (initdb) and the backend's
        imports are CPU-bound, and at a basic plan's 0.5 CPU they took about 1.5 times as
        long. (Compose keeps a limit set this way: it compares its own configuration, not
        the container's, so the next `up` leaves the container as it is.)"""
        nano_cpus = int((spec.limits or DEFAULT_LIMITS).cpus * 1e9)
        api = self.client.api
        try:
            for summary in self._containers(f"{PROJECT_LABEL}={self.project(spec.store_id)}"):
                # docker-py's update_container predates NanoCpus (the Engine API has it)
                url = f"{api.base_url}/v{api.api_version}/containers/{summary['Id']}/update"
                api.post(url, json={"NanoCpus": nano_cpus}, timeout=30).raise_for_status()
        except (DockerException, OSError) as exc:  # requests' errors are OSErrors
            raise RuntimeFailure(
                f"cannot set the CPU limit of store {spec.store_id}'s containers: {exc}"
            ) from exc

    def _await_backend(
        self, spec: StackSpec, *, timeout_s: float, watch: Callable[[bool], None] | None = None
    ) -> None:
        """Until the backend's /health answers: over its edge socket when it is routed, else at
        its published port."""
        if spec.socket_dir is not None:
            wait_healthy(
                "http://store/health",
                uds=spec.socket_dir / "http.sock",
                timeout_s=timeout_s,
                watch=watch,
            )
        else:
            host = "127.0.0.1" if self.bind_host in ("0.0.0.0", "") else self.bind_host  # noqa: S104
            wait_healthy(
                f"http://{host}:{spec.ports.backend_port}/health", timeout_s=timeout_s, watch=watch
            )

    def stop(self, store_id: str, *, timeout_s: float) -> None:
        if (self.workspace(store_id) / "compose.yaml").is_file():
            self._compose(store_id, ["stop", "--timeout", "10"], timeout_s=timeout_s)

    def pause(self, store_id: str) -> None:
        """The engine's pause (cgroup freezer) of every container of the store."""
        try:
            for summary in self._containers(f"{STORE_LABEL}={store_id}"):
                if summary.get("State") == "running":
                    self.client.api.pause(summary["Id"])
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"pausing the stack of store {store_id} failed: {exc}") from exc

    def resume(self, spec: StackSpec, *, timeout_s: float) -> None:
        """Unpause the database first, then the backend; healthy when the backend's /health
        answers (over its edge socket when it is routed, else at its published port)."""
        containers = self._containers(f"{STORE_LABEL}={spec.store_id}")
        order = sorted(containers, key=lambda c: (c.get("Labels") or {}).get(SERVICE_LABEL) != "db")
        try:
            for summary in order:
                if summary.get("State") == "paused":
                    self.client.api.unpause(summary["Id"])
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(
                f"unpausing the stack of store {spec.store_id} failed: {exc}"
            ) from exc
        self._await_backend(spec, timeout_s=timeout_s)

    def refresh_secrets(self, store_id: str, secrets: Mapping[str, str]) -> None:
        secrets_dir = self.workspace(store_id) / "secrets"
        if not secrets_dir.is_dir():
            return
        for name, value in secrets.items():
            if name in self.secret_names:  # in place: the containers' bind mounts follow
                write_secret_file(secrets_dir / name, value, self.secret_uid)

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
