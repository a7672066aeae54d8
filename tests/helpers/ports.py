"""Ports for test servers and stores: ranges of their own, free ports."""

from __future__ import annotations

import itertools
import os
import socket

_ranges = itertools.count()


def next_port_range(size: int = 60) -> str:
    """A range of its own inside 20000-32767: below Linux's ephemeral ports (32768+), which
    outgoing connections take at any moment (a backend could then not bind its port)."""
    base = 20000 + ((os.getpid() % 50) * 400 + next(_ranges) * size) % (12768 - size)
    return f"{base}-{base + size - 1}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
