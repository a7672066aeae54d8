"""Followed logs and event streams can never pin the control plane (api/streams.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from helpers import Server, store_body, wait_for
from storefleet.api.streams import LiveEvents, followed
from storefleet.registry.db import Registry
from storefleet.services.events import EventFeed, EventLog, EventTail


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def _open_and_drop(server: Server, paths: list[str], token: str) -> list[int]:
    """Open every path as a followed stream on a raw socket, wait for its status line, then
    drop all the connections at once without reading further. Returns the statuses."""
    sockets: list[socket.socket] = []
    statuses: list[int] = []
    for path in paths:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        sock.sendall(request.encode())
        sockets.append(sock)
    for sock in sockets:
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(256)
            if not chunk:
                break
            head += chunk
        statuses.append(int(head.split(b" ", 2)[1]))
    for sock in sockets:
        sock.close()
    return statuses


def _fastest(call: Callable[[], httpx.Response], tries: int = 5) -> float:
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        assert call().status_code == 200
        best = min(best, time.perf_counter() - start)
    return best


def test_300_dropped_streams_leave_the_server_responsive(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(STOREFLEET_STREAMS_PER_TOKEN="1000", STOREFLEET_STREAMS_MAX="1000")
    assert server.proc is not None
    with server.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Aguante")).json()["store"]["id"]
        api.get("/stores/")
        time.sleep(1)
        baseline = _threads(server.proc.pid)
        logs = f"/api/v1/stores/{sid}/logs?service=supervisor&follow=true&tail=0"
        statuses = _open_and_drop(server, [logs] * 150 + ["/api/v1/events"] * 150, server.token)
        assert statuses == [200] * 300
        with httpx.Client(base_url=server.url, timeout=10) as plain:
            assert _fastest(lambda: plain.get("/health")) < 0.1
        assert _fastest(lambda: api.get(f"/stores/{sid}")) < 0.1
        # every stream noticed its client went away and released its thread (anyio ends a
        # worker idle for 10 s at the next call that needs one: the GET of one store below,
        # a route that runs in that pool; a kept list answer is served without it); the fixed
        # pools that refresh answers ahead (a token check, status and list answers, usage:
        # four threads at most, whatever the load) may have started meanwhile
        pid = server.proc.pid
        wait_for(lambda: api.get(f"/stores/{sid}").is_success and _threads(pid) <= baseline + 6, 40)
        assert "Traceback" not in server.log()


def test_streams_are_capped_per_token_and_slots_come_back(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(STOREFLEET_STREAMS_PER_TOKEN="3")
    with server.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Tope")).json()["store"]["id"]
        token = api.post("/tokens", json={"role": "store", "store_id": sid}).json()["token"]
    logs = f"/api/v1/stores/{sid}/logs?follow=true&tail=0"
    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=server.url, headers=headers, timeout=10) as own,
        contextlib.ExitStack() as streams,
    ):
        held = [streams.enter_context(own.stream("GET", logs)) for _ in range(2)]
        held.append(streams.enter_context(own.stream("GET", "/api/v1/events")))
        assert [r.status_code for r in held] == [200, 200, 200]
        refused = own.get(logs)
        assert refused.status_code == 429
        assert refused.json()["code"] == "too_many_streams"
        assert "STOREFLEET_STREAMS_PER_TOKEN" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        # without follow, reading is not a stream: not capped
        assert own.get(logs.replace("follow=true", "follow=false")).status_code == 200
        # another token has slots of its own
        with httpx.Client(base_url=server.url, timeout=10) as admin:
            admin.headers["Authorization"] = f"Bearer {server.token}"
            with admin.stream("GET", logs) as other:
                assert other.status_code == 200
        streams.close()
        wait_for(lambda: own.get(logs.replace("follow=true", "follow=false")).status_code == 200)
        with own.stream("GET", logs) as again:  # the slots came back
            assert again.status_code == 200


def test_revoked_token_ends_its_open_streams(start_server: Callable[..., Server]) -> None:
    server = start_server()
    with server.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Revocada")).json()["store"]["id"]
        created = api.post("/tokens", json={"role": "store", "store_id": sid}).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    ended: dict[str, float] = {}

    def read(name: str, path: str) -> None:
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=30) as own,
            own.stream("GET", path) as response,
        ):
            assert response.status_code == 200
            for _ in response.iter_bytes():
                pass
        ended[name] = time.monotonic()

    readers = [
        threading.Thread(target=read, args=(n, p), daemon=True)
        for n, p in (
            ("logs", f"/api/v1/stores/{sid}/logs?follow=true&tail=0"),
            ("events", f"/api/v1/events?store_id={sid}"),
        )
    ]
    for reader in readers:
        reader.start()
    time.sleep(1)
    assert not ended
    with server.client() as api:
        revoked_at = time.monotonic()
        assert api.delete(f"/tokens/{created['id']}").status_code == 204
        # visible at once on this plane: the cache is cleared after the commit
        own = httpx.get(f"{server.url}/api/v1/stores/{sid}", headers=headers)
        assert own.status_code == 401
    for reader in readers:
        reader.join(15)
    assert set(ended) == {"logs", "events"}
    assert max(ended.values()) - revoked_at < 10


def test_many_followers_each_get_every_new_event_once_in_order(
    start_server: Callable[..., Server],
) -> None:
    """Forty followed streams share one reader of the registry (services/events.py
    EventFeed): each still gets every event once, in order, with its own filters."""
    server = start_server(STOREFLEET_STREAMS_PER_TOKEN="100")
    got: list[list[str]] = [[] for _ in range(40)]
    opened = threading.Barrier(len(got) + 1, timeout=30)

    def follow(into: list[str], types: str) -> None:
        params = {"types": types, "last": "0"}
        with (
            server.client() as api,
            api.stream("GET", "/events", params=params, timeout=30) as answer,
        ):
            assert answer.status_code == 200
            opened.wait()
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    into.append(json.loads(line[5:])["store_id"])
                    if len(into) == 20:
                        return

    threads = [
        threading.Thread(target=follow, args=(into, "store.created"), daemon=True) for into in got
    ]
    for thread in threads:
        thread.start()
    opened.wait()
    with server.client() as api:
        made = [
            api.post("/stores/?deploy=false", json=store_body(api, f"Seguida {i}")).json()["store"][
                "id"
            ]
            for i in range(20)
        ]
    for thread in threads:
        thread.join(30)
    assert all(into == made for into in got)


class _FlakyFeed:
    """An EventFeed whose first registry read fails (a stand-in: only `LiveEvents` is tested)."""

    def __init__(self) -> None:
        self.head = 0
        self.reads = 0

    def due(self, poll_s: float) -> bool:
        return True

    def refresh(self, poll_s: float) -> int:
        self.reads += 1
        if self.reads == 1:
            raise OSError("the registry went away for a moment")
        self.head += 1
        return self.head


def test_the_event_pump_survives_a_failed_read_and_wakes_its_streams() -> None:
    feed = _FlakyFeed()
    live = LiveEvents(feed, poll_s=0.05, check_s=0.01)  # type: ignore[arg-type]

    async def scenario() -> float:
        pump = asyncio.get_running_loop().create_task(live.run())
        live.followers = 1
        start = time.monotonic()
        await live.wait(0, timeout_s=5)  # woken by the second read, long before 5 s
        pump.cancel()
        return time.monotonic() - start

    assert asyncio.run(scenario()) < 4
    assert feed.reads >= 2 and feed.head >= 1


def test_the_first_follower_of_a_process_misses_nothing_committed_as_it_joins(
    tmp_path: Path,
) -> None:
    """Found with several workers: the shared feed started reading at the newest event only at
    its first read, after its first follower's own read; an event committed between the two
    (by another process) was in neither. The feed now starts before a follower joins."""
    registry = Registry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    events = EventLog(registry)
    events.publish("reconciler.action", data={"action": "before anyone follows"})
    live = LiveEvents(EventFeed(events), poll_s=0.05, check_s=0.01)

    async def scenario() -> list[str]:
        stream = followed(EventTail(events, last=0), live, wait_s=0.1)
        assert await stream.__anext__() == []  # joined: its own read found nothing new
        events.publish("reconciler.action", data={"action": "as it joins"})
        pump = asyncio.get_running_loop().create_task(live.run())
        try:
            async with asyncio.timeout(10):
                async for batch in stream:
                    if batch:
                        return [str(event.data["action"]) for event in batch]
        finally:
            pump.cancel()
            await stream.aclose()
        return []

    assert asyncio.run(scenario()) == ["as it joins"]
    registry.close()
