"""Waiting for a store's backend to answer its health check (which reaches its database)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import httpx

from storefleet.errors import DeadlineExceeded


def wait_healthy(
    url: str, *, uds: Path | None = None, timeout_s: float, poll_s: float = 0.01
) -> None:
    """GET `url` (over the unix socket `uds` when given) until it answers 200, or raise
    `DeadlineExceeded` after `timeout_s` saying what it answered last."""
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        transport = None
        if uds is not None:
            # A unix socket's path holds at most 107 bytes: one deep in a long data dir is
            # reached through its folder's descriptor (`/proc/self/fd/N/<name>`).
            folder = os.open(uds.parent, os.O_PATH | os.O_DIRECTORY)
            stack.callback(os.close, folder)
            transport = httpx.HTTPTransport(uds=f"/proc/self/fd/{folder}/{uds.name}")
        client = stack.enter_context(
            httpx.Client(transport=transport, timeout=1.0, trust_env=False)
        )
        last = "no answer"
        while True:
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"the backend was not healthy within {timeout_s:g} s ({last})"
                )
            time.sleep(poll_s)
