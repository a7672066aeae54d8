"""Who may use a store's orders API and websocket: holders of the store's API key, and from a
browser only the allowed origins.

The key is sent as `X-Api-Key: <key>` or `Authorization: Bearer <key>`; a browser websocket,
which can not set headers, offers it as the subprotocol `apikey.<key>`. The key file is
re-read when it changes, so a rotation takes effect without a restart.
"""

from __future__ import annotations

import hmac
import threading
from pathlib import Path

from starlette.datastructures import Headers

SUBPROTOCOL_PREFIX = "apikey."


class KeyFile:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._key = ""

    def current(self) -> str:
        """The key now ('' when none is configured or readable: everything is refused)."""
        if not self.path:
            return ""
        try:
            stat = self.path.stat()
        except OSError:
            return ""
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._key = self.path.read_text(encoding="utf-8").strip()
                except OSError:
                    return ""
                self._stamp = stamp
            return self._key


def offered_key(headers: Headers) -> str:
    key = headers.get("x-api-key", "")
    scheme, _, rest = headers.get("authorization", "").partition(" ")
    if not key and scheme.lower() == "bearer":
        key = rest.strip()
    if not key:
        for protocol in headers.get("sec-websocket-protocol", "").split(","):
            if protocol.strip().startswith(SUBPROTOCOL_PREFIX):
                key = protocol.strip()[len(SUBPROTOCOL_PREFIX) :]
    return key.strip()


def key_matches(expected: str, offered: str) -> bool:
    return bool(expected) and hmac.compare_digest(expected.encode(), offered.encode())


def origin_allowed(headers: Headers, allowed: tuple[str, ...]) -> bool:
    origin = headers.get("origin")
    return origin is None or origin.rstrip("/") in allowed
