"""Real control-plane servers (`storefleet serve`) and the bodies tests send them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from helpers.ports import free_port, next_port_range

REPO = Path(__file__).resolve().parents[2]


# Settings of a control plane that notices a dead one's operations within a second or two (the
# crash tests): short store locks, frequent reconciler passes, a short repair back-off.
FAST_RECOVERY = {
    "STOREFLEET_STORE_LOCK_TTL_S": "1",
    "STOREFLEET_RECONCILE_INTERVAL_S": "0.3",
    "STOREFLEET_REPAIR_BACKOFF_INITIAL_S": "0.5",
}


class Server:
    """A real `storefleet serve` process."""

    def __init__(
        self, data_dir: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.args = list(args)  # of `storefleet serve`
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "sf_test_" + uuid.uuid4().hex + uuid.uuid4().hex
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")},
            "STOREFLEET_ADMIN_TOKEN": self.token,
            "STOREFLEET_RATE_LIMIT_PER_MINUTE": "1000000",
            "STOREFLEET_RATE_LIMIT_BURST": "100000",
            "STOREFLEET_AUTH_FAILURES_PER_MINUTE": "1000000",
            "STOREFLEET_AUTH_FAILURES_BURST": "100000",
            "STOREFLEET_DATA_DIR": str(data_dir),
            "STOREFLEET_PORT": str(self.port),
            "STOREFLEET_PORT_RANGE": next_port_range(),
            "STOREFLEET_DEPLOY_TIMEOUT_S": "30",
            **(env or {}),
        }
        self.log_path = data_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "storefleet.cli", "serve", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url + "/api/v1", timeout=120, headers=headers, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """`storefleet ARGS --url <server>` with the server's admin token."""
    return subprocess.run(
        [sys.executable, "-m", "storefleet.cli", *args, "--url", server.url],
        env={**os.environ, "STOREFLEET_TOKEN": server.token},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def country_id(client: httpx.Client, code: str = "ES") -> str:
    return str(next(c["id"] for c in client.get("/countries").json() if c["code"] == code))


def store_body(
    client: httpx.Client, nombre: str, plan: str = "basic", tokens: int = 10
) -> dict[str, Any]:
    return {
        "nombre": nombre,
        "country_id": country_id(client),
        "tokens_disponibles": tokens,
        "plan": plan,
    }
