"""One-off jobs on a Swarm node: a service of one task that is never restarted, waited on until
it completes, whose standard output is read back through the manager (service logs reach
every node), then removed.

The manager's API sees no other node's containers or volumes: work that must happen on a
store's node (remove its volume) or next to its database (dump, restore) is such a job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import DockerException

from storefleet.errors import DeadlineExceeded, RuntimeFailure

log = logging.getLogger(__name__)

JOB_LABEL = "io.storefleet.job"  # a job's services are not a store's services
POLL_S = 0.25


@dataclass
class Job:
    name: str  # the service's name
    what: str  # for messages: "the backup of store X"
    image: str
    argv: Sequence[str]  # the container's entrypoint and arguments
    labels: Mapping[str, str]
    constraints: Sequence[str] = ()
    networks: Sequence[str] = ()  # names of the overlay networks it joins
    secrets: Sequence[docker.types.SecretReference] = ()
    mounts: Sequence[docker.types.Mount] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str | None = None


def run_job(client: docker.DockerClient, job: Job, *, deadline: float) -> bytes:
    """Run `job` to its end and return what it wrote on its standard output; raise
    `RuntimeFailure` (with its last lines of standard error) when it fails, and
    `DeadlineExceeded` when it is not done by `deadline` (its service is removed either way)."""
    labels = {**job.labels, JOB_LABEL: job.name}
    try:
        created = client.api.create_service(
            docker.types.TaskTemplate(
                container_spec=docker.types.ContainerSpec(
                    job.image,
                    list(job.argv[:1]),
                    args=list(job.argv[1:]),
                    env=dict(job.env),
                    mounts=list(job.mounts),
                    secrets=list(job.secrets),
                    user=job.user,
                    labels=labels,
                    healthcheck=docker.types.Healthcheck(test=["NONE"]),
                ),
                placement=docker.types.Placement(constraints=list(job.constraints)),
                restart_policy=docker.types.RestartPolicy(condition="none"),
                networks=list(job.networks),
            ),
            name=job.name,
            labels=labels,
            # one task that is not restarted (a replicated job's containers outlive the job's
            # removal on Engine 20.10; a service's go with it)
            mode=docker.types.ServiceMode("replicated", replicas=1),
        )
    except (DockerException, OSError) as exc:
        raise RuntimeFailure(f"{job.what} could not start: {exc}") from exc
    service_id = str(created["ID"])
    try:
        while True:
            tasks = client.api.tasks(filters={"service": service_id})
            states = {t["Status"]["State"]: t for t in tasks}
            if "complete" in states:
                return _output(client, service_id, stdout=True)
            failed = states.get("failed") or states.get("rejected")
            if failed is not None:
                err = _output(client, service_id, stdout=False).decode(errors="replace")
                tail = " | ".join(err.strip().splitlines()[-3:]) or str(
                    failed["Status"].get("Err") or failed["Status"]["State"]
                )
                raise RuntimeFailure(f"{job.what} failed: {tail}")
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"{job.what} did not end in time")
            time.sleep(POLL_S)
    except (DockerException, OSError) as exc:
        raise RuntimeFailure(f"{job.what}: the Swarm manager did not answer: {exc}") from exc
    finally:
        try:
            client.api.remove_service(service_id)
        except (DockerException, OSError):
            log.warning("could not remove the job service %s", job.name)


def _output(client: docker.DockerClient, service_id: str, *, stdout: bool) -> bytes:
    chunks: Any = client.api.service_logs(
        service_id, stdout=stdout, stderr=not stdout, follow=False, timestamps=False
    )
    return b"".join(chunks)
