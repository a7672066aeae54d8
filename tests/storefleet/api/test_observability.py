"""Observability with a real control plane and real store processes: JSON logs, the SSE event
stream, signed webhooks to a real local receiver, /metrics and per-store usage."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from helpers import Server, store_body, wait_for
from storefleet.services.webhooks import SIGNATURE_HEADER, verify

DEPLOY_STEPS = ["intent", "lease_ports", "secrets", "apply", "record"]


class Receiver:
    """A real HTTP server on 127.0.0.1 that records webhook requests; it answers with the
    status codes of `script` in turn (then 200)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    code = receiver.script.pop(0) if receiver.script else 200
                    receiver.received.append((dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def collect_events(server: Server, token: str | None = None, **params: Any) -> Iterator[list[Any]]:
    """Follow the SSE stream in a thread; the list fills as events arrive."""
    got: list[Any] = []
    ready = threading.Event()
    stop = threading.Event()

    def run() -> None:
        headers = {"Authorization": f"Bearer {token or server.token}"}
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=30) as client,
            connect_sse(client, "GET", "/api/v1/events", params=params) as source,
        ):
            got.append(source.response.status_code)
            ready.set()
            with contextlib.suppress(httpx.HTTPError):  # the server stopped: the stream ends
                for sse in source.iter_sse():
                    if sse.data:
                        event = json.loads(sse.data)
                        got.append({**event, "sse_event": sse.event, "sse_id": sse.id})
                    if stop.is_set():
                        return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.3)  # the server has set up its tail
    try:
        yield got
    finally:
        stop.set()


def _steps(events: list[Any], op_id: str) -> list[tuple[str, str]]:
    return [
        (e["data"]["step"], e["data"]["state"])
        for e in events
        if isinstance(e, dict) and e["type"] == "operation.step" and e["op_id"] == op_id
    ]


def test_sse_shows_a_deploy_step_by_step(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "En Vivo")).json()["store"][
            "id"
        ]
        with collect_events(server, store_id=sid) as got:
            op = api.post(f"/stores/{sid}/deploy", params={"wait": "false"}).json()
            wait_for(
                lambda: any(isinstance(e, dict) and e["type"] == "operation.finished" for e in got),
                timeout_s=60,
            )
        assert got[0] == 200
        events = got[1:]
        assert all(e["store_id"] == sid for e in events)
        assert [e["sse_id"] for e in events] == [str(e["id"]) for e in events]
        assert all(e["sse_event"] == e["type"] for e in events)
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))  # in order, each once
        mine = [e for e in events if e["op_id"] == op["id"]]
        assert mine[0]["type"] == "operation.started" and mine[0]["data"]["kind"] == "deploy"
        assert mine[-1]["type"] == "operation.finished"
        assert mine[-1]["data"]["state"] == "succeeded" and mine[-1]["data"]["duration_s"] > 0
        expected = [(s, state) for s in DEPLOY_STEPS for state in ("running", "ok")]
        assert _steps(mine, op["id"]) == expected
        # the reconciler reports the status change it observed
        with collect_events(server, store_id=sid, types="store.status", after=0) as changes:
            wait_for(
                lambda: any(isinstance(e, dict) and e["data"]["to"] == "running" for e in changes)
            )


def test_sse_replay_filters_and_ownership(server: Server) -> None:
    with server.client() as api:
        a = api.post("/stores/", json=store_body(api, "Propia")).json()["store"]["id"]
        b = api.post("/stores/", json=store_body(api, "Vecina")).json()["store"]["id"]
        store_a = api.post("/tokens", json={"role": "store", "store_id": a}).json()["token"]
        replay = api.get("/events", params={"follow": "false", "after": 0})
        assert replay.status_code == 200
        assert replay.headers["content-type"].startswith("text/event-stream")
        assert "operation.finished" in replay.text and a in replay.text and b in replay.text
        only_steps = api.get(
            "/events", params={"follow": "false", "after": 0, "types": "operation.step"}
        )
        assert "event: operation.step" in only_steps.text
        assert "event: operation.started" not in only_steps.text
        bad = api.get("/events", params={"follow": "false", "types": "operation.nope"})
        assert bad.status_code == 422 and "are not event types" in bad.json()["detail"]
    with server.client(store_a) as own:
        mine = own.get("/events", params={"follow": "false", "after": 0})
        assert mine.status_code == 200 and a in mine.text and b not in mine.text
        assert own.get("/events", params={"follow": "false", "store_id": b}).status_code == 404


def test_signed_webhooks_are_retried_and_logged(start_server: Callable[..., Server]) -> None:
    server = start_server(
        STOREFLEET_WEBHOOK_RETRY_INITIAL_S="0.2", STOREFLEET_WEBHOOK_ALLOW_NETS="127.0.0.0/8"
    )
    with Receiver(script=[500, 503]) as receiver, server.client() as api:
        created = api.post(
            "/webhooks", json={"url": receiver.url, "events": ["operation.finished"]}
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        secret = hook["secret"]
        assert secret.startswith("whsec_")
        assert "secret" not in api.get(f"/webhooks/{hook['id']}").json()
        assert secret not in api.get("/webhooks").text
        sid = api.post("/stores/", json=store_body(api, "Avisada")).json()["store"]["id"]
        wait_for(lambda: any(code == 200 for _h, _b, code in receiver.received), timeout_s=30)
        first_event = json.loads(receiver.received[0][1])
        for headers, body, _code in receiver.received:
            event = json.loads(body)
            assert verify(secret, headers[SIGNATURE_HEADER], body)
            assert not verify(secret, headers[SIGNATURE_HEADER], body.replace(b"}", b" }", 1))
            assert not verify("whsec_other", headers[SIGNATURE_HEADER], body)
            assert headers["Storefleet-Event"] == event["type"] == "operation.finished"
        assert first_event["store_id"] == sid and first_event["data"]["kind"] == "deploy"
        # three attempts of the same delivery: 500, 503, then 200, with growing pauses
        same = [h["Storefleet-Delivery"] for h, _b, _c in receiver.received]
        assert same == [same[0]] * 3
        log = api.get(f"/webhooks/{hook['id']}/deliveries").json()
        assert len(log) == 1
        delivery = log[0]
        assert delivery["state"] == "delivered" and delivery["attempts"] == 3
        assert [a["status_code"] for a in delivery["log"]] == [500, 503, 200]
        assert delivery["log"][0]["error"] == "answered HTTP 500"
        assert delivery["event_type"] == "operation.finished"
        assert api.delete(f"/webhooks/{hook['id']}").status_code == 204
        assert api.get(f"/webhooks/{hook['id']}").status_code == 404
    assert secret not in server.log()
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_webhook_gives_up_after_max_attempts(start_server: Callable[..., Server]) -> None:
    server = start_server(
        STOREFLEET_WEBHOOK_RETRY_INITIAL_S="0.1",
        STOREFLEET_WEBHOOK_MAX_ATTEMPTS="3",
        STOREFLEET_WEBHOOK_ALLOW_NETS="127.0.0.1/32",
    )
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Sorda")).json()["store"]["id"]
        closed = f"http://127.0.0.1:{_closed_port()}/nobody"
        hook = api.post(
            "/webhooks", json={"url": closed, "events": ["operation.*"], "store_id": sid}
        ).json()
        api.post(f"/stores/{sid}/deploy")

        def all_failed() -> bool:
            log = api.get(f"/webhooks/{hook['id']}/deliveries").json()
            return bool(log) and all(d["state"] == "failed" for d in log)

        wait_for(all_failed, timeout_s=30)
        log = api.get(f"/webhooks/{hook['id']}/deliveries").json()
        assert {d["attempts"] for d in log} == {3}
        assert all("ConnectError" in d["last_error"] for d in log)
        assert {d["event_type"] for d in log} >= {"operation.started", "operation.finished"}
        for bad in (
            {"url": "ftp://x/y", "events": ["*"]},
            {"url": "http://user:pw@127.0.0.1/x", "events": ["*"]},
            {"url": "http://127.0.0.1/x", "events": ["nothing.here"]},
            {"url": "http://127.0.0.1/x", "events": []},
        ):
            assert api.post("/webhooks", json=bad).status_code == 422, bad
        # only the allowed network: other non-public addresses stay refused
        refused = api.post("/webhooks", json={"url": "http://169.254.169.254/", "events": ["*"]})
        assert refused.status_code == 422
        assert refused.json()["code"] == "webhook_address_refused"


def _closed_port() -> int:
    from helpers import free_port

    return free_port()


def test_metrics_in_prometheus_format(server: Server) -> None:
    assert httpx.get(server.url + "/metrics").status_code == 401
    with server.client() as api:
        api.post("/stores/", json=store_body(api, "Medida"))
        api.post("/stores/?deploy=false", json=store_body(api, "Quieta"))
        # the supervisor's own health check (read by fleet status) follows the deploy's
        wait_for(lambda: 'storefleet_stores{status="running"} 1.0' in _metrics(server))
        text = _metrics(server)
    response = httpx.get(
        server.url + "/metrics", headers={"Authorization": f"Bearer {server.token}"}
    )
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'storefleet_operations_total{kind="deploy",outcome="succeeded"} 1.0' in text
    assert 'storefleet_deploy_duration_seconds_count{outcome="succeeded"} 1.0' in text
    assert 'storefleet_stores{status="running"} 1.0' in text
    assert 'storefleet_stores{status="not_deployed"} 1.0' in text
    assert "storefleet_ports_leased 3.0" in text
    assert "storefleet_ports_total 60.0" in text
    assert "storefleet_reconciler_lag_seconds" in text
    assert "storefleet_reconciler_errors_total 0.0" in text


def _metrics(server: Server) -> str:
    headers = {"Authorization": f"Bearer {server.token}"}
    return httpx.get(server.url + "/metrics", headers=headers).text


def test_usage_of_a_running_store(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Consumo")).json()["store"]["id"]
        back = api.get(f"/stores/{sid}").json()["back_link"]
        stop = threading.Event()

        def load() -> None:  # keep the store's backend busy while it is measured
            with httpx.Client() as client:
                while not stop.is_set():
                    client.get(back + "/api/v1/orders")

        workers = [threading.Thread(target=load) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            usage = api.get(f"/stores/{sid}/usage")
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert usage.status_code == 200, usage.text
        body = usage.json()
        assert body["store_id"] == sid and body["window_s"] >= 0.2
        assert body["cpu_percent"] > 1.0  # it was answering requests all along
        assert body["memory_bytes"] > 10 * 2**20
        assert body["disk_bytes"] > 0
        assert {s["name"] for s in body["services"]} == {"supervisor", "backend"}
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["usage"] is not None and status["usage"]["memory_bytes"] > 10 * 2**20
        api.delete(f"/stores/{sid}/deploy")
        stopped = api.get(f"/stores/{sid}/usage")
        assert stopped.status_code == 409 and stopped.json()["code"] == "not_running"
        assert api.get(f"/stores/{sid}/deploy/status").json()["usage"] is None


def test_json_logs_carry_store_and_operation_ids(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/", json=store_body(api, "Registrada")).json()["store"]["id"]
        op_id = api.get(f"/stores/{sid}/operations").json()[0]["id"]
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    deployed = [line for line in lines if "deployed on ports" in line["msg"]]
    assert deployed and deployed[0]["store_id"] == sid and deployed[0]["op_id"] == op_id
    assert re.search(r"ports \d+/\d+/\d+ ", deployed[0]["msg"])  # values, not a Python repr
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    raw = server.log()
    assert "\x1b[" not in raw and "\\u001b" not in raw and "color_message" not in raw


def test_cli_deploy_shows_progress_and_events_lists_them(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/?deploy=false", json=store_body(api, "Terminal")).json()["store"][
            "id"
        ]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")},
        "STOREFLEET_URL": server.url,
        "STOREFLEET_TOKEN": server.token,
        "COLUMNS": "200",
    }
    cli = [sys.executable, "-m", "storefleet.cli"]
    done = subprocess.run(
        [*cli, "deploy", sid, "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "deployed"
    for step in DEPLOY_STEPS:
        assert f"✓ {step}" in done.stderr, done.stderr
    listed = subprocess.run(
        [*cli, "events", "--store", sid, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    types = [json.loads(line)["type"] for line in listed.stdout.splitlines()]
    assert types[0] == "store.created" and "operation.finished" in types
    followed = server.data_dir / "followed.txt"
    with followed.open("w") as out:
        follower = subprocess.Popen(
            [*cli, "events", "--follow", "--after", "0", "--store", sid, "--types", "operation.*"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for(lambda: "deploy succeeded" in followed.read_text())  # the replay
        with server.client() as api:
            api.delete(f"/stores/{sid}/deploy")
        wait_for(lambda: "undeploy succeeded" in followed.read_text())  # followed live
    finally:
        follower.terminate()
        follower.wait(10)
    assert "undeploy step remove_stack ok" in followed.read_text()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_format_setting(start_server: Callable[..., Server], fmt: str) -> None:
    server = start_server(STOREFLEET_LOG_FORMAT=fmt)
    first = next(line for line in server.log().splitlines() if "storefleet" in line)
    assert first.startswith("{") == (fmt == "json")


def test_one_replay_rule_and_replays_are_never_cut(server: Server) -> None:
    from storefleet.registry.db import Registry
    from storefleet.registry.models import Event, utcnow

    registry = Registry.open(f"sqlite:///{server.data_dir / 'storefleet.db'}")
    try:
        with registry.transaction() as session:
            session.add_all(
                Event(type="reconciler.action", data=json.dumps({"action": f"n{i}"}), at=utcnow())
                for i in range(1500)
            )
    finally:
        registry.close()
    with server.client() as api:
        everything = api.get("/events", params={"follow": "false", "after": 0}).text
        ids = [int(line[4:]) for line in everything.splitlines() if line.startswith("id: ")]
        assert len(ids) >= 1500 and ids == sorted(set(ids))  # past 1,000: every page
        newest = api.get("/events", params={"follow": "false"}).text
        newest_ids = [int(line[4:]) for line in newest.splitlines() if line.startswith("id: ")]
        assert newest_ids == ids[-100:]  # without `after`: the newest 100
        few = api.get("/events", params={"follow": "false", "last": 3}).text
        assert [int(x[4:]) for x in few.splitlines() if x.startswith("id: ")] == ids[-3:]
    cli = subprocess.run(
        [sys.executable, "-m", "storefleet.cli", "--url", server.url, "events", "--json"],
        env={**os.environ, "STOREFLEET_TOKEN": server.token},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [json.loads(line)["id"] for line in cli.stdout.splitlines()] == ids[-100:]
