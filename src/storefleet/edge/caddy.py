"""Caddy as the edge: its JSON configuration, its admin API (on a unix socket) and what the
process and container variants share.

The configuration never names a store. Two servers:
- HTTPS (`https_port`): a request is proxied only when its `Host` is a well-formed name whose
  route exists (`h/<host>/http.sock`, see `routes.py`); `/ws` goes to the store's websocket
  socket, the rest to its HTTP socket. Anything else gets 404 and is proxied nowhere.
- HTTP (`http_port`): a routed host is redirected to HTTPS (308); anything else gets 404.
Certificates: with the internal CA, one wildcard certificate for `*.<base domain>` and
on-demand certificates for custom domains, each approved first by the control plane (`ask`);
with ACME (`acme_email`), on-demand certificates for every host, approved the same way.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from storefleet.edge.base import EdgeSettings
from storefleet.edge.routes import HOST_FORM, HOSTS, HTTP_SOCKET, WS_SOCKET, RouteTable
from storefleet.errors import RuntimeFailure

ADMIN_SOCKET = "admin.sock"
DATA = "data"
WILDCARD_WAIT_S = 10.0

log = logging.getLogger(__name__)
HOST = "{http.request.host}"


def _routed(extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Matcher sets: a well-formed Host whose route exists (and `extra`)."""
    match: dict[str, Any] = {
        "vars_regexp": {HOST: {"pattern": HOST_FORM}},  # before the table is looked at
        "file": {"root": HOSTS, "try_files": [f"/{HOST}/{HTTP_SOCKET}"]},
    }
    for item in extra or []:
        match.update(item)
    return [match]


def unix_dial(socket_name: str) -> str:
    """The store's own socket, found by the request's host in the route table."""
    return f"unix/{HOSTS}/{HOST}/{socket_name}"


def _proxy(socket_name: str, dial: Callable[[str], str]) -> dict[str, Any]:
    return {"handler": "reverse_proxy", "upstreams": [{"dial": dial(socket_name)}]}


def _not_found() -> dict[str, Any]:
    return {
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": "no store is served at this address\n",
                "close": True,
            }
        ]
    }


def config(settings: EdgeSettings, dial: Callable[[str], str] = unix_dial) -> dict[str, Any]:
    """The whole Caddy configuration of an edge (JSON), loaded through its admin API. `dial`
    gives the upstream of a routed request for the socket it would use (`http.sock`,
    `ws.sock`): the store's socket, or (Swarm) its backend by name on the edge's network."""
    root = settings.root
    https_port = "" if settings.https_port == 443 else f":{settings.https_port}"
    bind = settings.bind
    listen_https = f"{bind}:{settings.https_port}" if bind else f":{settings.https_port}"
    listen_http = f"{bind}:{settings.http_port}" if bind else f":{settings.http_port}"
    wildcard = f"*.{settings.base_domain}"
    acme = settings.acme_email is not None
    policies: list[dict[str, Any]] = []
    tls: dict[str, Any] = {}
    if acme:
        policies.append(
            {"issuers": [{"module": "acme", "email": settings.acme_email}], "on_demand": True}
        )
    else:
        policies.append({"subjects": [wildcard], "issuers": [{"module": "internal"}]})
        policies.append({"issuers": [{"module": "internal"}], "on_demand": True})
        tls["certificates"] = {"automate": [wildcard]}
    tls["automation"] = {
        "policies": policies,
        "on_demand": {"ask": settings.ask_url},
    }
    return {
        "admin": {"listen": f"unix/{root / ADMIN_SOCKET}"},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "storage": {"module": "file_system", "root": str(root / DATA)},
        "apps": {
            "http": {
                "http_port": settings.http_port,
                "https_port": settings.https_port,
                "servers": {
                    "https": {
                        "listen": [listen_https],
                        "automatic_https": {"disable_redirects": True}
                        if acme
                        else {"disable": True},
                        "tls_connection_policies": [{}],
                        "routes": [
                            {
                                "match": _routed([{"path": ["/ws", "/ws/*"]}]),
                                "handle": [_proxy(WS_SOCKET, dial)],
                                "terminal": True,
                            },
                            {
                                "match": _routed(),
                                "handle": [_proxy(HTTP_SOCKET, dial)],
                                "terminal": True,
                            },
                            _not_found(),
                        ],
                    },
                    "http": {
                        "listen": [listen_http],
                        "automatic_https": {"disable_redirects": True}
                        if acme
                        else {"disable": True},
                        "routes": [
                            {
                                "match": _routed(),
                                "handle": [
                                    {
                                        "handler": "static_response",
                                        "status_code": 308,
                                        "headers": {
                                            "Location": [
                                                f"https://{HOST}{https_port}{{http.request.uri}}"
                                            ]
                                        },
                                    }
                                ],
                                "terminal": True,
                            },
                            _not_found(),
                        ],
                    },
                },
            },
            "tls": tls,
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }


def boot_config(root: Path) -> dict[str, Any]:
    """What Caddy starts with: its admin API only (the rest comes through it)."""
    return {"admin": {"listen": f"unix/{root / ADMIN_SOCKET}"}}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class CaddyAdmin:
    """Caddy's admin API on its unix socket (Caddy wants an empty Host there)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def request(
        self, method: str, path: str, body: Any = None, *, timeout_s: float = 10.0
    ) -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket_path, timeout_s)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", "")
            data = b""
            if body is not None:
                data = json.dumps(body).encode()
                conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def answers(self) -> bool:
        try:
            status, _ = self.request("GET", "/config/admin", timeout_s=2.0)
        except OSError:
            return False
        return status == 200

    def current(self) -> Any:
        status, body = self.request("GET", "/config/")
        if status != 200:
            raise RuntimeFailure(f"the edge's admin API answered {status} for its configuration")
        return json.loads(body or b"null")

    def load(self, doc: dict[str, Any]) -> None:
        status, body = self.request("POST", "/load", doc, timeout_s=30.0)
        if status != 200:
            text = body.decode(errors="replace")[:300]
            raise RuntimeFailure(f"the edge refused its configuration ({status}): {text}")


class CaddyEdge:
    """What both ways of running Caddy share; subclasses say how it runs (`_running`,
    `_start`, `_stop`)."""

    name = "caddy"

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.routes = RouteTable(settings.root)
        self.admin = CaddyAdmin(settings.root / ADMIN_SOCKET)
        self._tls: tuple[str | None, ssl.SSLContext] | None = None
        self._ca: str | None = None
        # one start at a time: the threads of this process (a deploy, the reconciler) and,
        # through a file lock, the other processes of the control plane (`_one_at_a_time`)
        self._lock = threading.Lock()

    # -- how it runs (subclasses) ------------------------------------------------------------

    def _running(self) -> bool:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return config(self.settings)

    # -- the contract ---------------------------------------------------------------------

    def prepare(self) -> None:
        root = self.settings.root
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.routes.prepare()
        (root / "boot.json").write_text(json.dumps(boot_config(root)))

    def alive(self) -> bool:
        return self._running() and self.admin.answers()

    @contextmanager
    def _one_at_a_time(self) -> Iterator[None]:
        with self._lock:
            root = self.settings.root
            root.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(root / "edge.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # lets go of the flock

    def ensure(self) -> bool:
        with self._one_at_a_time():
            acted = False
            if not self.alive():
                self.prepare()
                self._start()
                self._ca = None  # read again from the edge that runs now
                acted = True
            wanted = self._config()
            if acted or self.admin.current() != wanted:
                self.admin.load(wanted)
                acted = True
                self._await_wildcard()
            return acted

    def _await_wildcard(self) -> None:
        """With the edge's own CA: until its wildcard certificate is in storage (tens of ms
        after a start). A TLS handshake while Caddy writes it can make Caddy read the key file
        still empty, delete the half-written certificate and retry only a minute later (seen
        in CI: 'Deleting certificates/local/wildcard_... because key is empty'), so the first
        store's route waits for nothing of the kind. Bounded; a storage this process may not
        read (an edge running as another user) is not waited for."""
        if self.settings.acme_email is not None:
            return
        name = f"wildcard_.{self.settings.base_domain}"
        folder = self.settings.root / DATA / "certificates" / "local" / name
        deadline = time.monotonic() + WILDCARD_WAIT_S
        while time.monotonic() < deadline:
            try:
                if all((folder / f"{name}.{ext}").stat().st_size > 0 for ext in ("crt", "key")):
                    return
            except PermissionError:
                return
            except OSError:
                pass  # not written yet
            time.sleep(0.02)
        log.warning("the edge has no certificate for *.%s yet", self.settings.base_domain)

    def ca_pem(self) -> str | None:
        """The root certificate of the edge's CA, from its admin API (its files are the edge's
        own: Caddy makes its storage folders 0700, whoever runs the control plane)."""
        if self.settings.acme_email is not None:
            return None
        if self._ca is None:
            try:
                status, body = self.admin.request("GET", "/pki/ca/local", timeout_s=5.0)
            except OSError:
                return None
            if status != 200:
                return None
            pem = json.loads(body).get("root_certificate")
            self._ca = str(pem) if pem else None
        return self._ca

    def _context(self) -> ssl.SSLContext:
        """TLS trusting the edge's CA (or the system's, with ACME)."""
        ca = self.ca_pem()
        if self._tls is None or self._tls[0] != ca:
            context = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
            self._tls = (ca, context)
        return self._tls[1]

    def probe(self, host: str, *, timeout_s: float = 2.0) -> str | None:
        settings = self.settings
        url = f"https://{settings.connect_host}:{settings.https_port}/health"
        shown = settings.url_of(host)
        try:
            with httpx.Client(verify=self._context(), timeout=timeout_s) as client:
                response = client.get(
                    url,
                    headers={"Host": shown.removeprefix("https://")},
                    extensions={"sni_hostname": host},
                )
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            return f"{shown} does not answer: {type(exc).__name__}: {exc}"[:300]
        if response.status_code != 200:
            return f"{shown} answers {response.status_code}"
        return None

    def close(self) -> None:
        """The edge outlives the control plane, as stores do."""

    def shutdown(self) -> None:
        self._stop()
