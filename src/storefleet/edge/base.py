"""What the control plane needs of an edge, whatever runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from storefleet.edge.routes import RouteTable


@dataclass(frozen=True)
class EdgeSettings:
    root: Path  # the edge's folder: route table, admin socket, certificates
    base_domain: str  # stores are `<slug>.<base_domain>`
    https_port: int
    http_port: int
    bind: str  # the address the edge listens on
    ask_url: str  # the control plane's on-demand TLS check (`/api/v1/edge/ask`)
    acme_email: str | None = None  # ACME instead of the internal CA

    @property
    def connect_host(self) -> str:
        """Where this host reaches the edge."""
        return "127.0.0.1" if self.bind in ("0.0.0.0", "::", "") else self.bind  # noqa: S104

    def url_of(self, host: str) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{host}{port}"


class Edge(Protocol):
    """The reverse proxy in front of every store.

    Contract:
    - `ensure` starts the edge when it does not run and gives it its configuration through its
      admin API when what it runs differs (never otherwise: a reload closes proxied websockets);
      it returns True when it had to start or configure it. It raises `RuntimeFailure`.
    - `alive` is observed on every call: the edge runs and its admin API answers.
    - Routes are `routes` (a `RouteTable`): publishing one never touches the proxy's process.
    - `probe` asks `GET /health` of a host through the edge over TLS (the certificate checked
      against `ca_pem`) and returns None when it answers 200, else why not.
    - `ca_pem` is the root certificate of the edge's own CA (None with ACME or while the edge
      cannot say), read through its admin API.
    - `close` is called when the control plane stops: the edge keeps running (like stores).
    - `shutdown` stops and removes the edge (tests, and `storefleet edge stop`).
    """

    name: str
    settings: EdgeSettings
    routes: RouteTable

    def ensure(self) -> bool: ...

    def alive(self) -> bool: ...

    def ca_pem(self) -> str | None: ...

    def probe(self, host: str, *, timeout_s: float = 2.0) -> str | None: ...

    def close(self) -> None: ...

    def shutdown(self) -> None: ...
