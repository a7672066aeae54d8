"""Test helpers: real control-plane servers, free ports, PostgreSQL databases, cleanup."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import update

from storefleet.registry.db import Registry
from storefleet.registry.models import Operation, OpState, Store, utcnow

PG_ADMIN_URL = os.environ.get("STOREFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parent.parent
TEST_LABEL = f"io.storefleet.test={os.getpid()}"

# Each server of this test run gets a port range of its own, away from the default 9000-9999.
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


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test; dropped afterwards."""
    name = f"sf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def count_supervisors(data_dir: Path) -> int:
    """How many store supervisor processes run for stores under `data_dir`."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "storefleet.runtime.process.supervisor" in cmdline and str(data_dir) in cmdline:
            count += 1
    return count


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30) -> float:
    """Poll `predicate` (HTTP errors count as false) until true; return how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"condition not reached within {timeout_s} s")


def add_bare_stores(registry: Registry, count: int) -> list[str]:
    """`count` minimal store rows straight in the registry (for allocator tests and benches)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with registry.transaction() as session:
        session.add_all(
            Store(id=s, nombre=s, nombre_key=s, country_id="x", tokens_disponibles=0, plan="basic")
            for s in ids
        )
    return ids


def new_store(services: Any, name: str = "Tienda") -> str:
    """Register a store through the services (no HTTP); returns its id."""
    from storefleet.services.countries import country_id
    from storefleet.services.schemas import StoreCreate

    request = StoreCreate(
        nombre=name, country_id=country_id("ES"), tokens_disponibles=1, plan="basic"
    )
    return str(services.stores.create(request).id)


def crashed_operation(
    services: Any, store_id: str, phase: str | None, kind: str, params: str = "{}"
) -> str:
    """Leave the registry as a control plane that died mid-operation leaves it (a running
    operation of a dead plane holding an expired lock; `phase` None keeps the phase)."""
    op_id = str(uuid.uuid4())
    with services.registry.transaction() as session:
        session.add(
            Operation(
                id=op_id,
                store_id=store_id,
                kind=kind,
                state=OpState.RUNNING,
                params=params,
                steps="[]",
                cancel_requested=False,
                owner="dead-plane",
                started_at=utcnow(),
            )
        )
        session.execute(
            update(Store)
            .where(Store.id == store_id)
            .values(lock_token=op_id, lock_expires_at=utcnow() - timedelta(seconds=1))
        )
    if phase is not None:
        with services.registry.transaction() as session:
            session.execute(update(Store).where(Store.id == store_id).values(phase=phase))
    return op_id


class BackLink(str):
    """A store's back_link that carries the store's API key (its backend requires it)."""

    key: str

    def __new__(cls, link: str, key: str) -> BackLink:
        made = super().__new__(cls, link)
        made.key = key
        return made

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.key}


def back_of(created: Mapping[str, Any]) -> BackLink:
    """The BackLink of a create answer (`POST /stores/`)."""
    return BackLink(created["deployment"]["back_link"], created["api_key"])


def orders(back: BackLink) -> list[str]:
    """References of the orders a store's backend holds."""
    found = httpx.get(back + "/api/v1/orders", headers=back.headers, timeout=10)
    found.raise_for_status()
    return [o["reference"] for o in found.json()]


def add_order(back: BackLink, reference: str, amount: int = 1) -> None:
    order = {"amount": amount, "currency": "EUR", "reference": reference}
    httpx.post(
        back + "/api/v1/orders", json=order, headers=back.headers, timeout=10
    ).raise_for_status()


def kill_store_processes(data_dir: Path) -> None:
    """SIGKILL every supervisor process group started under `data_dir` (test cleanup)."""
    for pid_file in data_dir.glob("stores/*/deploy/supervisor.pid"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pid_file.read_text())
            if str(pid_file.parent) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                errors="replace"
            ):
                os.killpg(pid, signal.SIGKILL)
    for state_file in data_dir.glob("stores/*/deploy/state.json"):
        with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
            child = json.loads(state_file.read_text())["child_pid"]
            if child and "storefleet_backend" in Path(f"/proc/{child}/cmdline").read_text():
                os.kill(child, signal.SIGKILL)


def remove_docker_objects(label: str = TEST_LABEL) -> None:
    """Remove every container, network and volume carrying `label` (test cleanup)."""
    with contextlib.suppress(Exception):
        import docker

        client = docker.from_env(version="auto")
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)
        for network in client.networks.list(filters={"label": label}):
            network.remove()
        for volume in client.volumes.list(filters={"label": label}):
            volume.remove(force=True)


class Server:
    """A real `storefleet serve` process."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
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
            [sys.executable, "-m", "storefleet.cli", "serve"],
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


def country_id(client: httpx.Client, code: str = "ES") -> str:
    return next(c["id"] for c in client.get("/countries").json() if c["code"] == code)


def store_body(
    client: httpx.Client, nombre: str, plan: str = "basic", tokens: int = 10
) -> dict[str, Any]:
    return {
        "nombre": nombre,
        "country_id": country_id(client),
        "tokens_disponibles": tokens,
        "plan": plan,
    }
