"""Reaching stores through a real edge: HTTPS and websockets by hostname, on 127.0.0.1.

glibc does not resolve names under `.localhost` (curl and browsers do): these helpers connect to
the edge's address and send the hostname as SNI and `Host`, and check the certificate against
the CA the control plane serves."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from helpers.ports import free_port
from helpers.servers import Server


def edge_env(**extra: str) -> dict[str, str]:
    """Settings of a control plane whose edge listens on ports of its own."""
    return {
        "STOREFLEET_EDGE": "caddy",
        "STOREFLEET_EDGE_HTTPS_PORT": str(free_port()),
        "STOREFLEET_EDGE_HTTP_PORT": str(free_port()),
        **extra,
    }


class EdgeClient:
    """HTTPS to stores by hostname through the edge of `server` (its CA trusted, nothing else)."""

    def __init__(self, server: Server, tmp: Path) -> None:
        self.https_port = int(server.env["STOREFLEET_EDGE_HTTPS_PORT"])
        self.http_port = int(server.env["STOREFLEET_EDGE_HTTP_PORT"])
        pem = httpx.get(server.url + "/api/v1/edge/ca.pem", timeout=10)
        assert pem.status_code == 200, pem.text
        assert pem.text.startswith("-----BEGIN CERTIFICATE-----")
        self.ca = tmp / f"edge-ca-{self.https_port}.pem"
        self.ca.write_text(pem.text)
        self.tls = ssl.create_default_context(cafile=str(self.ca))

    def host_header(self, host: str) -> str:
        return f"{host}:{self.https_port}"

    def get(
        self, host: str, path: str = "/health", *, header_host: str | None = None, **kw: Any
    ) -> httpx.Response:
        """GET `path` of `host` over TLS (SNI `host`); `header_host` sends another Host."""
        return self.request("GET", host, path, header_host=header_host, **kw)

    def request(
        self,
        method: str,
        host: str,
        path: str,
        *,
        header_host: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        sent = {"Host": header_host if header_host is not None else self.host_header(host)}
        with httpx.Client(verify=self.tls, timeout=10) as client:
            return client.request(
                method,
                f"https://127.0.0.1:{self.https_port}{path}",
                headers={**sent, **(headers or {})},
                extensions={"sni_hostname": host},
                **kw,
            )

    def plain(self, path: str, host_header: str) -> httpx.Response:
        """Plain HTTP to the edge's HTTP port with this Host header (redirects not followed)."""
        with httpx.Client(timeout=10) as client:
            return client.get(
                f"http://127.0.0.1:{self.http_port}{path}", headers={"Host": host_header}
            )

    def websocket(self, host: str, api_key: str) -> ClientConnection:
        """A websocket to `wss://<host>/ws` through the edge.

        A handshake left unanswered for 10 s is tried again on a new connection, three times at
        most (seen once, on Swarm, where the edge finds the backend through the overlay's DNS).
        The kernel's receive timeout on the socket bounds what websockets does after a failed
        handshake (it joins its reader thread, whose blocking TLS read otherwise waits until the
        edge closes the connection: minutes)."""
        unanswered = 0
        while True:
            sock = socket.create_connection(("127.0.0.1", self.https_port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 60, 0))
            try:
                return connect(
                    f"wss://{self.host_header(host)}/ws",
                    sock=sock,
                    ssl=self.tls,
                    server_hostname=host,
                    additional_headers={"X-Api-Key": api_key},
                    open_timeout=10,
                )
            except TimeoutError:
                unanswered += 1
                if unanswered == 3:
                    raise

    def handshake_refused(self, host: str) -> bool:
        """True when the edge refuses a TLS handshake for `host` (no certificate for it)."""
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=10) as raw:
            try:
                with self.tls.wrap_socket(raw, server_hostname=host):
                    return False
            except (ssl.SSLError, ConnectionError):
                return True
