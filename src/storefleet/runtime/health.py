"""Waiting for a store's backend to answer its health check (which reaches its database)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from storefleet.errors import DeadlineExceeded


def wait_healthy(
    url: str,
    *,
    uds: Path | None = None,
    timeout_s: float,
    poll_s: float = 0.01,
    watch: Callable[[bool], None] | None = None,
    watch_every_s: float = 0.25,
) -> None:
    """GET `url` (over the unix socket `uds` when given) until it answers 200, or raise
    `DeadlineExceeded` after `timeout_s` saying what it answered last.

    `watch(answered)`, when given, is called every `watch_every_s` while waiting and once the
    URL answers 200: it raises to give up early (a container that exited, a cancel) and, once
    the URL answered, returns only when the stack is whole (else the wait goes on)."""
    deadline = time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        client = _client(stack, uds, timeout_s=1.0)
        last = "no answer"
        watched = time.monotonic()
        while True:
            answered = False
            try:
                response = client.get(url)
                answered = response.status_code == 200
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if answered and watch is None:
                return
            if watch is not None and (answered or time.monotonic() - watched >= watch_every_s):
                watched = time.monotonic()
                try:
                    watch(answered)
                    if answered:
                        return
                except NotYet as exc:
                    last = str(exc)
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"the backend was not healthy within {timeout_s:g} s ({last})"
                )
            time.sleep(poll_s)


def answers(url: str, *, uds: Path | None = None, timeout_s: float = 0.5) -> bool:
    """Whether one GET of `url` (over the unix socket `uds` when given) answers 200 within
    `timeout_s`."""
    try:
        with contextlib.ExitStack() as stack:
            return _client(stack, uds, timeout_s=timeout_s).get(url).status_code == 200
    except (httpx.HTTPError, OSError):
        return False


def _client(stack: contextlib.ExitStack, uds: Path | None, *, timeout_s: float) -> httpx.Client:
    transport = None
    if uds is not None:
        # A unix socket's path holds at most 107 bytes: one deep in a long data dir is reached
        # through its folder's descriptor (`/proc/self/fd/N/<name>`).
        folder = os.open(uds.parent, os.O_PATH | os.O_DIRECTORY)
        stack.callback(os.close, folder)
        transport = httpx.HTTPTransport(uds=f"/proc/self/fd/{folder}/{uds.name}")
    return stack.enter_context(
        httpx.Client(transport=transport, timeout=timeout_s, trust_env=False)
    )


class NotYet(Exception):
    """Raised by a `watch` of `wait_healthy`: the backend answers, the rest is not ready yet."""
