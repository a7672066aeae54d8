"""Log lines leave the control plane with every secret redacted."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fakes import FakeDriver
from helpers import new_store
from storefleet.errors import InvalidInputError
from storefleet.services.store_logs import REDACTED, Redactor
from storefleet.services.wiring import Services


def test_store_secrets_and_credentials_are_redacted(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    password = services.deployments.kit.secrets.ensure(sid, ("db_password",))["db_password"]
    driver = services.driver
    assert isinstance(driver, FakeDriver)
    driver.log_lines[sid] = [
        f"connecting with {password}",
        "url postgresql://store:hunter2hunter2@db:5432/store",
        "PASSWORD=abc123xyz token: t0k3n-value other=fine",
        "Authorization: Bearer sf_abcdefghijkl",
        "an ordinary line",
    ]
    lines = [
        line
        for line in services.logs.open(sid, service=None, tail=None, since=None, follow=False)
        if line is not None
    ]
    text = "\n".join(lines)
    for secret in (password, "hunter2hunter2", "abc123xyz", "t0k3n-value", "sf_abcdefghijkl"):
        assert secret not in text
    assert lines[0] == f"connecting with {REDACTED}"
    assert "other=fine" in lines[2] and lines[4] == "an ordinary line"
    tail = services.logs.open(sid, service="backend", tail=2, since=None, follow=False)
    assert len(list(tail)) == 2
    with pytest.raises(InvalidInputError):
        services.logs.open(sid, service="db", tail=1, since=None, follow=False)


def test_redactor_replaces_the_longest_secret_first() -> None:
    redact = Redactor(["abcdef", "abcdefghij", "x"])
    assert redact("abcdefghij abcdef x") == f"{REDACTED} {REDACTED} x"
