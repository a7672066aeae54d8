"""The edge as a Swarm service (`<prefix>-edge`, the Swarm runtime's edge).

One task, on the manager node this control plane runs on (it mounts the edge's folder, at the
same path as here: the route table, the admin socket, the certificates), attached to the
edge's overlay network, which every routed backend joins under its store's hostnames. A
request is proxied only when its host is routed (the route table, as on the other runtimes),
to `<host>:8000` (`:8001` for `/ws`): Swarm's DNS on that network answers the backend of the
store whose hostname it is, on whatever node it runs. Backends publish no port; the edge
publishes its two ports in host mode on its node (the ingress routing mesh and the IPVS
virtual IP do not work on every kernel; `endpoint_mode: dnsrr`).

Caddy runs in its container with no host network: the control plane's `ask` endpoint (on
loopback) is out of its reach, so on-demand certificates (custom domains, ACME) are refused;
the stores' hostnames are served by the wildcard certificate of the edge's own CA.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import docker
from docker.errors import DockerException, NotFound

from storefleet.edge.base import EdgeSettings
from storefleet.edge.caddy import HOST, CaddyEdge, config
from storefleet.edge.routes import WS_SOCKET
from storefleet.errors import RuntimeFailure

START_TIMEOUT_S = 60.0
EDGE_LABEL = "io.storefleet.edge"
BACKEND_HTTP, BACKEND_WS = 8000, 8001  # where a routed backend listens on the edge's network


def swarm_dial(socket_name: str) -> str:
    return f"{HOST}:{BACKEND_WS if socket_name == WS_SOCKET else BACKEND_HTTP}"


class CaddySwarmService(CaddyEdge):
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        client: Callable[[], docker.DockerClient],
        network: Callable[[], str],
        image: str,
        name: str,
        labels: Mapping[str, str],
    ) -> None:
        # in its container, Caddy listens on every address; the ports are published on the
        # node's (a host-mode port answers on all of them)
        super().__init__(dataclasses.replace(settings, bind=""))
        self._client = client
        self._network = network
        self.image = image
        self.service_name = name
        self.labels = {**labels, EDGE_LABEL: "true"}

    def _config(self) -> dict[str, Any]:
        return config(self.settings, dial=swarm_dial)

    def _service(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._client().api.inspect_service(self.service_name)
        except NotFound:
            return None
        except (DockerException, OSError) as exc:
            raise RuntimeFailure(f"cannot reach the Swarm manager (edge): {exc}") from exc
        return found

    def _running(self) -> bool:
        try:
            service = self._service()
            if service is None:
                return False
            tasks = self._client().api.tasks(
                filters={"service": service["ID"], "desired-state": "running"}
            )
        except (RuntimeFailure, DockerException, OSError):
            return False
        return any(t["Status"]["State"] == "running" for t in tasks)

    def _start(self) -> None:
        root = self.settings.root
        (root / "admin.sock").unlink(missing_ok=True)
        self._stop()
        client = self._client()
        try:
            here = str(client.info()["Swarm"]["NodeID"])
            network = self._network()
            ports: Any = [
                {"Protocol": "tcp", "PublishedPort": p, "TargetPort": p, "PublishMode": "host"}
                for p in (self.settings.https_port, self.settings.http_port)
            ]
            client.api.create_service(
                docker.types.TaskTemplate(
                    container_spec=docker.types.ContainerSpec(
                        self.image,
                        # root in the container (it binds the edge's ports), in the control
                        # plane's group, umask 007: the admin socket and the certificates stay
                        # the control plane's to read, and nobody else's
                        ["sh", "-c", 'umask 007 && exec caddy run --config "$0"'],
                        args=[str(root / "boot.json")],
                        user=f"0:{os.getgid()}",
                        workdir=str(root),
                        env={
                            "HOME": str(root),
                            "XDG_DATA_HOME": str(root / "data"),
                            "XDG_CONFIG_HOME": str(root / "config"),
                        },
                        mounts=[docker.types.Mount(str(root), str(root), type="bind")],
                        labels=self.labels,
                    ),
                    # on this control plane's node: the folder it mounts is here
                    placement=docker.types.Placement(constraints=[f"node.id == {here}"]),
                    restart_policy=docker.types.RestartPolicy(condition="any", delay=1_000_000_000),
                    networks=[network],
                    log_driver=docker.types.DriverConfig(
                        "json-file", {"max-size": "10m", "max-file": "3"}
                    ),
                ),
                name=self.service_name,
                labels=self.labels,
                endpoint_spec=docker.types.EndpointSpec(mode="dnsrr", ports=ports),
            )
        except (DockerException, OSError, KeyError) as exc:
            raise RuntimeFailure(f"cannot start the edge service: {exc}") from exc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self._running() and self.admin.answers()):
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"the edge service {self.service_name} did not start "
                    f"(docker service ps {self.service_name})"
                )
            time.sleep(0.1)

    def _stop(self) -> None:
        try:
            self._client().api.remove_service(self.service_name)
        except (DockerException, OSError):
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # its container gone: its ports free again
            running = self._client().containers.list(
                filters={"label": f"com.docker.swarm.service.name={self.service_name}"}
            )
            if not running:
                return
            time.sleep(0.1)
