"""Dashboard sessions: a cookie for a valid token, its CSRF token, its end (sign-out, expiry,
its token revoked or expired)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from storefleet.registry.models import ApiToken, DashboardSession, utcnow
from storefleet.services.auth import TokenCreate
from storefleet.services.sessions import _digest
from storefleet.services.wiring import Services


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services()


def test_a_session_acts_as_its_token_and_keeps_only_the_cookies_hash(
    services: Services,
) -> None:
    token = services.tokens.create(TokenCreate(role="operator"))
    assert services.sessions.sign_in(token.token + "x") is None
    signed = services.sessions.sign_in(token.token)
    assert signed is not None
    cookie, session = signed
    assert session.principal.role == "operator" and session.principal.token_id == token.id
    assert cookie != session.csrf and len(cookie) >= 43 and len(session.csrf) >= 43
    with services.registry.transaction() as db:
        row = db.get(DashboardSession, _digest(cookie))
        assert row is not None and cookie not in (row.id_hash, row.token_id)
    checked = services.sessions.check(cookie)
    assert checked is not None and checked.principal == session.principal
    assert checked.csrf_ok(session.csrf)
    assert not checked.csrf_ok(None) and not checked.csrf_ok("") and not checked.csrf_ok("x")
    assert services.sessions.check(cookie + "x") is None
    assert services.sessions.check("") is None


def test_sign_out_ends_the_session(services: Services) -> None:
    token = services.tokens.create(TokenCreate(role="admin"))
    signed = services.sessions.sign_in(token.token)
    assert signed is not None
    services.sessions.sign_out(signed[0])
    assert services.sessions.check(signed[0]) is None


def test_revoking_the_token_ends_its_sessions_at_once(services: Services) -> None:
    token = services.tokens.create(TokenCreate(role="operator"))
    signed = services.sessions.sign_in(token.token)
    assert signed is not None and services.sessions.check(signed[0]) is not None  # cached now
    services.tokens.revoke(token.id)
    assert services.sessions.check(signed[0]) is None
    with services.registry.transaction() as db:
        assert db.get(DashboardSession, _digest(signed[0])) is None


def test_a_session_never_outlives_its_token_or_its_ttl(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(session_ttl_s=3600)
    token = services.tokens.create(
        TokenCreate(role="operator", expires_at=utcnow() + timedelta(minutes=5))
    )
    signed = services.sessions.sign_in(token.token)
    assert signed is not None
    assert signed[1].expires_at <= utcnow() + timedelta(minutes=5)
    lasting = services.tokens.create(TokenCreate(role="operator"))
    other = services.sessions.sign_in(lasting.token)
    assert other is not None
    assert timedelta(minutes=59) < other[1].expires_at - utcnow() <= timedelta(hours=1)
    # the token expires: the session is dead, whatever its own expiry says
    with services.registry.transaction() as db:
        row = db.get(ApiToken, token.id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    services.tokens.forget()
    assert services.sessions.check(signed[0]) is None
    # a session past its own expiry is dead, and removed at the next sign-in
    with services.registry.transaction() as db:
        row2 = db.get(DashboardSession, _digest(other[0]))
        assert row2 is not None
        row2.expires_at = utcnow() - timedelta(seconds=1)
    services.sessions._cache.clear()
    assert services.sessions.check(other[0]) is None
    assert services.sessions.sign_in(lasting.token) is not None
    with services.registry.transaction() as db:
        assert db.get(DashboardSession, _digest(other[0])) is None


def test_a_sign_out_in_one_worker_ends_the_session_in_the_others_at_once(
    make_services: Callable[..., Services],
) -> None:
    here, there = make_services(), make_services()  # one data dir: one control plane
    token = here.tokens.create(TokenCreate(role="operator"))
    signed = here.sessions.sign_in(token.token)
    assert signed is not None
    cookie, _ = signed
    assert there.sessions.check(cookie) is not None  # now cached there
    here.sessions.sign_out(cookie)
    assert there.sessions.check(cookie) is None
