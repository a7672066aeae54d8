"""A store's logs on the Docker runtime, read from the Engine API (bounded tails, follows that
notice a client that left)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from docker.errors import DockerException

from storefleet.errors import (
    RuntimeFailure,
)
from storefleet.runtime import logfiles
from storefleet.runtime.docker.stack import EXPECTED_SERVICES, DockerStack

log = logging.getLogger(__name__)


class DockerLogs(DockerStack):
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
        yield from lines_of(stream, store_id)


def lines_of(stream: Any, store_id: str) -> Iterator[str | None]:
    """The lines of an Engine API log stream (a container's, or a Swarm service's), with None
    at least every second while none comes (see `Logs.logs`)."""
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
