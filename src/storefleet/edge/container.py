"""The edge as a Docker container (`<prefix>-edge`, the Docker runtime's edge).

It uses the host's network (it listens on the edge's address and reaches the control plane's
`ask` endpoint on loopback, with no port published) and mounts only the edge's folder, at the
same path as on this host: the route table and the stores' socket folders. It has no restart
policy of its own: the reconciler starts it again when it is gone."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

import docker
from docker.errors import DockerException, NotFound
from docker.types import LogConfig

from storefleet.edge.base import EdgeSettings
from storefleet.edge.caddy import CaddyEdge
from storefleet.errors import RuntimeFailure

START_TIMEOUT_S = 20.0
EDGE_LABEL = "io.storefleet.edge"


class CaddyContainer(CaddyEdge):
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        client: Callable[[], docker.DockerClient],
        image: str,
        name: str,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(settings)
        self._client = client
        self.image = image
        self.container_name = name
        self.labels = {**labels, EDGE_LABEL: "true"}

    def _container(self) -> object | None:
        try:
            return self._client().containers.get(self.container_name)
        except NotFound:
            return None
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot reach the Docker engine (edge): {exc}") from exc

    def _running(self) -> bool:
        try:
            found = self._container()
        except RuntimeFailure:
            return False
        return found is not None and getattr(found, "status", "") == "running"

    def _start(self) -> None:
        root = self.settings.root
        (root / "admin.sock").unlink(missing_ok=True)
        try:
            found = self._container()
            if found is not None:
                found.remove(force=True)  # type: ignore[attr-defined]
            self._client().containers.run(
                self.image,
                # root in the container (it binds 443 on the host), in the control plane's
                # group, umask 007: the admin socket and the certificates it writes stay the
                # control plane's to read, and nobody else's (the data dir is private too)
                ["sh", "-c", 'umask 007 && exec caddy run --config "$0"', str(root / "boot.json")],
                user=f"0:{os.getgid()}",
                name=self.container_name,
                detach=True,
                network_mode="host",
                working_dir=str(root),
                volumes={str(root): {"bind": str(root), "mode": "rw"}},
                environment={
                    "HOME": str(root),
                    "XDG_DATA_HOME": str(root / "data"),
                    "XDG_CONFIG_HOME": str(root / "config"),
                },
                labels=self.labels,
                log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
            )
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot start the edge container: {exc}") from exc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.admin.answers():
            if time.monotonic() > deadline or not self._running():
                raise RuntimeFailure(
                    f"the edge container {self.container_name} did not start "
                    f"(docker logs {self.container_name})"
                )
            time.sleep(0.05)

    def _stop(self) -> None:
        try:
            found = self._container()
            if found is not None:
                found.remove(force=True)  # type: ignore[attr-defined]
        except (DockerException, RuntimeFailure):
            pass
