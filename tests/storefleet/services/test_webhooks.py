"""Webhook signatures, URL checks, and the delivery rules (with a real local receiver)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from cryptography.fernet import Fernet

from helpers import new_store
from storefleet.errors import InvalidInputError
from storefleet.services.webhooks import (
    RetryPolicy,
    TargetPolicy,
    WebhookCreate,
    check_url,
    sign,
    verify,
)
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
        "http://example.com/x#q\x85",  # NEL: whitespace to Python, not to ECMA's \s (found by
        "http://example.com/x\ufeff",  # the schema fuzzer): both spelled out in the pattern
        "http://example.com/x\u3000",
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
    services = make_services(webhook_allow_nets="127.0.0.0/8")
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


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x",
        "http://172.16.5.4/x",
        "http://192.168.1.1/x",
        "http://100.64.0.1/x",  # shared address space
        "http://0.0.0.0/x",
        "http://[::1]/x",
        "http://[fd00::1]/x",  # unique local
        "http://[fe80::1]/x",  # link-local
        "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped loopback
        "http://[::ffff:169.254.169.254]/x",
        "http://2130706433/x",  # 127.0.0.1 as one decimal number
        "https://224.0.0.1/x",  # multicast
    ],
)
def test_non_public_webhook_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        TargetPolicy().check_url(url)
    assert refused.value.code == "webhook_address_refused"
    assert "STOREFLEET_WEBHOOK_ALLOW_NETS" in refused.value.message


def test_allowed_networks_and_public_addresses_pass() -> None:
    import ipaddress

    policy = TargetPolicy([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("fd00::/8")])
    policy.check_url("http://127.0.0.1:8080/hook")
    policy.check_url("http://[fd00::1]/hook")
    policy.check_url("https://203.0.113.7/hook".replace("203.0.113.7", "8.8.8.8"))
    with pytest.raises(InvalidInputError):
        policy.check_url("http://169.254.169.254/")  # not in an allowed network
    # a name that does not resolve now is checked again at each delivery
    TargetPolicy().check_url("https://hooks.invalid/x")


def test_a_delivery_connects_to_the_checked_address() -> None:
    import ipaddress

    policy = TargetPolicy([ipaddress.ip_network("127.0.0.0/8")])
    url, headers, extensions = policy.pinned("https://localhost:8443/a/b?c=1")
    assert url == "https://127.0.0.1:8443/a/b?c=1"
    assert headers == {"Host": "localhost:8443"}
    assert extensions == {"sni_hostname": "localhost"}
    with pytest.raises(InvalidInputError):
        TargetPolicy().pinned("http://localhost/x")


def test_a_secret_that_does_not_decrypt_fails_its_delivery_only(
    make_services: Callable[..., Services],
) -> None:
    from sqlalchemy import update

    from storefleet.registry.models import Webhook

    services = make_services(
        webhook_allow_nets="127.0.0.0/8", webhook_retry_initial_s=0.05, webhook_timeout_s=1
    )
    sid = new_store(services, "Llave")
    broken = services.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/x", events=["*"]))
    fine = services.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/y", events=["*"]))
    with services.registry.transaction() as session:  # encrypted under a key nobody has
        session.execute(
            update(Webhook)
            .where(Webhook.id == broken.id)
            .values(secret_ciphertext=Fernet(Fernet.generate_key()).encrypt(b"whsec_x"))
        )
    services.deployments.deploy(sid)
    while any(d.attempts == 0 for d in services.webhooks.deliveries(fine.id)):
        services.webhooks.deliver_due()
    failed = services.webhooks.deliveries(broken.id)
    assert failed and all(d.state == "failed" and d.attempts == 1 for d in failed)
    assert all("does not decrypt" in (d.last_error or "") for d in failed)
    others = services.webhooks.deliveries(fine.id)  # tried (port 9 refuses): to be retried
    assert others and all(d.state == "pending" and d.attempts >= 1 for d in others)
    assert all("ConnectError" in (d.last_error or "") for d in others)


def test_a_webhook_deleted_after_its_deliveries_were_claimed_is_skipped(
    make_services: Callable[..., Services],
) -> None:
    """Found by the schema fuzzer: deleting a webhook while a delivery pass holds its claimed
    deliveries made the pass fail (an assertion) for every delivery after it."""
    services = make_services(webhook_allow_nets="127.0.0.0/8", webhook_timeout_s=1)
    sid = new_store(services, "Borrada")
    gone = services.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/gone", events=["*"]))
    kept = services.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/kept", events=["*"]))
    services.deployments.deploy(sid)
    claimed = services.webhooks._claim()
    assert claimed
    services.webhooks.delete(gone.id)
    for delivery_id in claimed:
        services.webhooks._attempt(delivery_id)  # no error for the deleted webhook's ones
    tried = [d for d in services.webhooks.deliveries(kept.id) if d.id in claimed]
    assert tried and all(d.attempts == 1 for d in tried)
