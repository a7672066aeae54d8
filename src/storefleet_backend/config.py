"""Configuration from the environment and from secret files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote


class ConfigError(Exception):
    """The store backend was started with a missing or malformed setting."""


@dataclass(frozen=True)
class BackendConfig:
    store_id: str
    bind_host: str
    http_port: int
    ws_port: int
    database_url: str = field(repr=False)
    version: str = ""
    # The file holding the store's API key (re-read when it changes: a rotation needs no
    # restart). Without it the orders API and the websocket refuse every request.
    api_key_file: str | None = None
    # Browser origins allowed to call the API or open the websocket; a request carrying
    # another `Origin` is refused. Requests without `Origin` (not from a browser) need the key.
    allowed_origins: tuple[str, ...] = ()
    # A folder where the backend also listens on unix sockets, `http.sock` and `ws.sock` (the
    # edge proxies the store's hostname to them).
    socket_dir: str | None = None


def _port(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "")
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name} must be a TCP port, got {raw!r}")
    return int(raw)


def load(env: Mapping[str, str] = os.environ) -> BackendConfig:
    """Read `STORE_*` variables. A database password is read from a file, never from the env.

    - `STORE_DATABASE_URL`: SQLAlchemy URL without password (`sqlite:///...` or
      `postgresql://user@host:port/db`).
    - `STORE_DATABASE_PASSWORD_FILE`: optional file holding the database password.
    - `STORE_API_KEY_FILE`: the file holding the store's API key.
    - `STORE_ALLOWED_ORIGINS`: comma-separated browser origins allowed (none by default).
    - `STORE_SOCKET_DIR`: optional folder for the unix sockets the edge dials.
    """
    store_id = env.get("STORE_ID", "")
    if not store_id:
        raise ConfigError("STORE_ID is required")
    url = env.get("STORE_DATABASE_URL", "")
    if not url:
        raise ConfigError("STORE_DATABASE_URL is required")
    password_file = env.get("STORE_DATABASE_PASSWORD_FILE")
    if password_file:
        password = Path(password_file).read_text().strip()
        scheme, rest = url.split("://", 1)
        user, host = rest.split("@", 1)
        url = f"{scheme}://{user}:{quote(password, safe='')}@{host}"
    return BackendConfig(
        store_id=store_id,
        bind_host=env.get("STORE_BIND_HOST", "127.0.0.1"),
        http_port=_port(env, "STORE_HTTP_PORT"),
        ws_port=_port(env, "STORE_WS_PORT"),
        database_url=url,
        version=env.get("STORE_BACKEND_VERSION", ""),
        api_key_file=env.get("STORE_API_KEY_FILE") or None,
        allowed_origins=tuple(
            o.strip().rstrip("/")
            for o in env.get("STORE_ALLOWED_ORIGINS", "").split(",")
            if o.strip()
        ),
        socket_dir=env.get("STORE_SOCKET_DIR") or None,
    )
