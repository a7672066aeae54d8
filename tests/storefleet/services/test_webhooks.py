"""Webhook signatures, URL checks, and the delivery rules (with a real local receiver)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from helpers import new_store
from storefleet.errors import InvalidInputError
from storefleet.services.webhooks import RetryPolicy, WebhookCreate, check_url, sign, verify
from storefleet.services.wiring import Services


def test_signature_round_trip_and_tampering() -> None:
    now = int(time.time())
    header = sign("whsec_k", now, b'{"a":1}')
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert verify("whsec_k", header, b'{"a":1}')
    assert not verify("whsec_k", header, b'{"a":2}')
    assert not verify("whsec_other", header, b'{"a":1}')
    assert not verify("whsec_k", header.replace(f"t={now}", f"t={now + 1}"), b'{"a":1}')
    old = sign("whsec_k", now - 3600, b"{}")
    assert not verify("whsec_k", old, b"{}")  # a replay an hour later
    assert not verify("whsec_k", "garbage", b"{}")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http:///nohost",
        "http://user:secret@example.com/x",
        "http://example.com/a b",
        "http://example.com/\x00",
        "javascript:alert(1)",
        "http://example.com/" + "x" * 2100,
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError):
        check_url(url)


def test_retry_back_off_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_s=1, max_s=30)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_deliveries_follow_subscriptions(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services, "Suscrita")
    other = new_store(services, "Otra")
    everything = services.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/all", events=["*"]))
    only_sid = services.webhooks.create(
        WebhookCreate(url="http://127.0.0.1:9/one", events=["operation.finished"], store_id=sid)
    )
    services.deployments.deploy(sid)
    services.deployments.deploy(other)
    mine = services.webhooks.deliveries(only_sid.id)
    assert [d.event_type for d in mine] == ["operation.finished"]
    all_types = {d.event_type for d in services.webhooks.deliveries(everything.id)}
    assert {"operation.started", "operation.step", "operation.finished"} <= all_types
    assert all(d.state == "pending" and d.attempts == 0 for d in mine)
