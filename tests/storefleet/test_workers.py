"""`storefleet serve` with several worker processes (STOREFLEET_WORKERS=2) is one control plane.

Each client below keeps one connection, and we know which worker holds it (the worker process
that owns the server side of that TCP connection), so a change goes through one worker and is
looked at through the other."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psutil

from helpers import Server, store_body, wait_for
from storefleet.shared import shared_dir


def _worker_of(client: httpx.Client, server: Server) -> int:
    """The PID of the worker process serving the client's (kept-alive) connection."""
    answer = client.get("/countries")
    answer.raise_for_status()
    stream = answer.extensions["network_stream"]
    port = stream.get_extra_info("client_addr")[1]
    assert server.proc is not None
    for worker in psutil.Process(server.proc.pid).children():
        for conn in worker.net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == port and conn.laddr.port == server.port:
                return int(worker.pid)
    raise AssertionError("no worker serves this connection")


@contextmanager
def one_client_per_worker(
    server: Server, token: str | None = None
) -> Iterator[dict[int, httpx.Client]]:
    """A client on each of the two workers: connections opened 16 at once (an idle worker may
    be slower to accept than a busy one) until both workers hold one."""
    with ExitStack() as stack, ThreadPoolExecutor(16) as pool:
        found: dict[int, httpx.Client] = {}
        for _ in range(20):
            clients = [stack.enter_context(server.client(token)) for _ in range(16)]
            for client, pid in zip(
                clients, pool.map(lambda c: _worker_of(c, server), clients), strict=True
            ):
                found.setdefault(pid, client)
            if len(found) == 2:
                break
        assert len(found) == 2, "the kernel never handed a connection to the second worker"
        yield found


def _duties_holder(data_dir: Path) -> int | None:
    """The PID holding the flock of the control plane's duties (from /proc/locks)."""
    inode = (shared_dir(data_dir) / "duties.lock").stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and int(fields[-3].rsplit(":", 1)[1]) == inode:
            return int(fields[-4])
    return None


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + " (.+)"
    match = re.search(rf"^{pattern}$", text, re.MULTILINE)
    assert match, f"{name} {labels} not in the scrape"
    return float(match.group(1))


def test_what_one_worker_changes_the_other_shows_at_once(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        STOREFLEET_WORKERS="2",
        STOREFLEET_RATE_LIMIT_PER_MINUTE="1",  # nothing refills during the test
        STOREFLEET_RATE_LIMIT_BURST="8",
    )
    with one_client_per_worker(server) as clients:
        one, other = clients.values()
        # the status window is 0.5 s: a change shows at once only because the other worker
        # learns that the registry moved (a write of one makes the other's answers old)
        assert other.get("/stores/").json() == []
        sid = one.post("/stores/?deploy=false", json=store_body(one, "Uno")).json()["store"]["id"]
        assert [s["id"] for s in other.get("/stores/").json()] == [sid]
        assert other.get(f"/stores/{sid}/deploy/status").json()["status"] == "not_deployed"
        other.patch(f"/stores/{sid}", json={"nombre": "Dos"}).raise_for_status()
        assert one.get("/stores/").json()[0]["nombre"] == "Dos"
        assert one.get(f"/stores/{sid}").json()["nombre"] == "Dos"

        # a token revoked through one worker is refused at once by the other, which had it
        # cached
        made = one.post("/tokens", json={"role": "operator"}).json()
        with one_client_per_worker(server, made["token"]) as as_operator:
            by_other = as_operator[next(p for p in as_operator if p != _worker_of(one, server))]
            assert by_other.get("/stores/").status_code == 200
            one.delete(f"/tokens/{made['id']}").raise_for_status()
            assert by_other.get("/stores/").status_code == 401

        # an operator's rate limit counts its requests in both workers (8 at once)
        limited = one.post("/tokens", json={"role": "operator"}).json()
        with one_client_per_worker(server, limited["token"]) as as_limited:
            pair = list(as_limited.values())
            codes = [
                pair[i % 2].post("/stores/?deploy=false", json=store_body(one, f"L{i}")).status_code
                for i in range(10)
            ]
        assert codes == [201] * 8 + [429] * 2

        # deploys through each worker; every scrape counts both (and the one reconciler's
        # passes), whichever worker answers it
        sids = [sid, one.get("/stores/").json()[1]["id"]]
        clients_in_turn = [one, other]
        for client, store_id in zip(clients_in_turn, sids, strict=True):
            client.post(f"/stores/{store_id}/deploy").raise_for_status()
        for client in clients_in_turn:
            scrape = client.get(server.url + "/metrics").text
            ok = _metric(scrape, "storefleet_operations_total", kind="deploy", outcome="succeeded")
            assert ok == 2
            assert _metric(scrape, "storefleet_reconciler_passes_total") >= 1
            assert _metric(scrape, "storefleet_reconciler_lag_seconds") >= 0
            assert client.get("/reconciler").json()["passes"] >= 1
            for store_id in sids:
                status = client.get(f"/stores/{store_id}/deploy/status").json()
                assert status["status"] == "running"

        # the event stream of one worker carries what the other did
        seen: list[str] = []
        ready = threading.Event()

        def follow() -> None:  # on the other worker's connection
            with other.stream("GET", "/events", params={"last": 0}) as feed:
                ready.set()
                for line in feed.iter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:])
                        if event["type"] == "store.created":
                            seen.append(event["store_id"])
                            return

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        assert ready.wait(30)
        made_later = one.post("/stores/?deploy=false", json=store_body(one, "Cuatro")).json()
        reader.join(30)
        assert seen == [made_later["store"]["id"]]
    assert "Traceback" not in server.log()


def test_another_worker_takes_the_duties_over_when_their_worker_dies(
    start_server: Callable[..., Server],
) -> None:
    # (the option instead of STOREFLEET_WORKERS)
    server = start_server(args=["--workers", "2"], STOREFLEET_RECONCILE_INTERVAL_S="0.5")
    assert server.proc is not None
    parent = psutil.Process(server.proc.pid)
    wait_for(lambda: _duties_holder(server.data_dir) is not None, 30)
    holder = _duties_holder(server.data_dir)
    assert holder is not None and holder in {child.pid for child in parent.children()}
    with server.client() as api:
        before = api.get("/reconciler").json()["passes"]
        assert before >= 1
        os.kill(holder, signal.SIGKILL)
        # the other worker takes the duties (within its 1 s retry); uvicorn starts a new one
        wait_for(lambda: _duties_holder(server.data_dir) not in (None, holder), 30)
        wait_for(lambda: len([c for c in parent.children() if c.pid != holder]) >= 2, 60)
        new_holder = _duties_holder(server.data_dir)
        assert new_holder in {child.pid for child in parent.children()}

        def passes_again() -> bool:
            with server.client() as fresh:  # whichever worker answers
                report = fresh.get("/reconciler").json()
            return bool(report["passes"] >= 2 and report["last_error"] is None)

        wait_for(passes_again, 30)
        assert api.get("/stores/").status_code == 200
    # the first holder, then the one that took over (the other worker or the new one)
    assert server.log().count("this process runs the reconciler and the fleet's other") == 2
