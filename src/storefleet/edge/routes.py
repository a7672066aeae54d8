"""The edge's route table: a folder of symbolic links the proxy reads on every request.

    <root>/s/<store id>/        the store's socket folder: its backend listens on `http.sock`
                                and `ws.sock` there (a Docker backend has only this folder
                                mounted, so no store ever sees another's sockets)
    <root>/h/<host>  ->  ../s/<store id>
                                one link per hostname or custom domain the edge serves

The proxy serves a request only when `h/<Host>/http.sock` exists, and dials that socket: adding
or removing a route is creating or removing one link, atomically, with no reload of the proxy
(a reload of Caddy 2.6 would close every proxied websocket). Paths the proxy dials are relative
to `<root>` (a unix socket path is limited to 107 bytes), which limits a host to `MAX_HOST`.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

HOSTS = "h"
SOCKETS = "s"
HTTP_SOCKET = "http.sock"
WS_SOCKET = "ws.sock"
# "h/" + host + "/http.sock" must fit a unix socket path (107 bytes): hosts of at most 95.
MAX_HOST = 95
# One DNS label, and a host name of two labels or more (lowercase), as regular expressions both
# Python and Caddy (RE2: no lookahead) read; HOST_PATTERN adds the length limit.
LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOST_FORM = rf"^{LABEL}(\.{LABEL})+$"
HOST_PATTERN = re.compile(rf"^(?=.{{1,{MAX_HOST}}}$){HOST_FORM[1:]}")
_STORE_ID = re.compile(r"^[0-9a-f-]{36}$")


class RouteTable:
    """The links of one edge's route table (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts = root / HOSTS
        self.sockets = root / SOCKETS

    def prepare(self) -> None:
        self.hosts.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.sockets.mkdir(parents=True, exist_ok=True, mode=0o755)

    def socket_dir(self, store_id: str) -> Path:
        """Where the store's backend listens (made by the runtime driver that starts it)."""
        if not _STORE_ID.fullmatch(store_id):
            raise ValueError(f"not a store id: {store_id!r}")
        return self.sockets / store_id

    def publish(self, host: str, store_id: str) -> None:
        """Route `host` to the store (replacing any route of that host), atomically."""
        if not HOST_PATTERN.fullmatch(host):
            raise ValueError(f"not a routable host name: {host!r}")
        self.socket_dir(store_id)  # checks the id
        self.prepare()
        link = self.hosts / host
        target = f"../{SOCKETS}/{store_id}"
        with contextlib.suppress(OSError):
            if str(link.readlink()) == target:
                return
        tmp = self.hosts / f".{host}.{uuid.uuid4().hex[:8]}"
        tmp.symlink_to(target)
        tmp.replace(link)

    def unpublish(self, host: str) -> None:
        if not HOST_PATTERN.fullmatch(host):
            return
        with contextlib.suppress(FileNotFoundError):
            (self.hosts / host).unlink()

    def table(self) -> dict[str, str]:
        """Every routed host and the store it goes to."""
        found: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.hosts))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                found[entry.name] = Path(entry.path).readlink().name
        return found

    def answers(self, host: str) -> bool:
        """The host is routed and its store's backend has its socket in place."""
        return (self.hosts / host / HTTP_SOCKET).exists()

    def remove_socket_dir(self, store_id: str) -> None:
        directory = self.socket_dir(store_id)
        for name in (HTTP_SOCKET, WS_SOCKET):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
        with contextlib.suppress(FileNotFoundError, OSError):
            directory.rmdir()
