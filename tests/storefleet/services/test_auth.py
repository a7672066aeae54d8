"""API tokens (hashed, revocable, expiring, per role) and the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import new_store
from storefleet.errors import InvalidInputError, NotFoundError
from storefleet.registry.models import ApiToken, utcnow
from storefleet.services.auth import UNAUTHENTICATED, TokenCreate, hash_token
from storefleet.services.wiring import Services


@pytest.fixture
def services(make_services: Callable[..., Services]) -> Services:
    return make_services()


def test_tokens_are_kept_hashed_and_name_their_role(services: Services) -> None:
    created = services.tokens.create(TokenCreate(role="operator"))
    with services.registry.transaction() as session:
        row = session.get(ApiToken, created.id)
        assert row is not None and row.token_hash == hash_token(created.token)
        assert created.token not in (row.token_hash, row.prefix)
    principal = services.tokens.authenticate(created.token)
    assert principal is not None and principal.role == "operator"
    assert principal.at_least("operator") and not principal.at_least("admin")
    assert services.tokens.authenticate(created.token + "x") is None


def test_a_revoked_or_expired_token_no_longer_authenticates(services: Services) -> None:
    revoked = services.tokens.create(TokenCreate(role="admin"))
    services.tokens.revoke(revoked.id)
    assert services.tokens.authenticate(revoked.token) is None
    soon = services.tokens.create(
        TokenCreate(role="operator", expires_at=utcnow() + timedelta(hours=1))
    )
    assert services.tokens.authenticate(soon.token) is not None
    with services.registry.transaction() as session:
        row = session.get(ApiToken, soon.id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    services.tokens.forget()  # the cache of checked tokens
    assert services.tokens.authenticate(soon.token) is None


def test_a_store_token_names_an_existing_store(services: Services) -> None:
    sid = new_store(services, "Con token")
    mine = services.tokens.create(TokenCreate(role="store", store_id=uuid.UUID(sid)))
    principal = services.tokens.authenticate(mine.token)
    assert principal is not None and principal.store_id == sid
    with pytest.raises(NotFoundError):
        services.tokens.create(TokenCreate(role="store", store_id=uuid.uuid4()))
    with pytest.raises(InvalidInputError):
        services.tokens.create(
            TokenCreate(role="operator", expires_at=utcnow() - timedelta(minutes=1))
        )


def test_requests_without_a_token_are_counted_per_client_and_written_once(
    services: Services,
) -> None:
    for _ in range(5):
        services.audit.count_unauthenticated("10.0.0.7", 401)
    services.audit.count_unauthenticated("10.0.0.8", 401)
    services.audit.flush()
    services.audit.flush()  # nothing new: nothing written
    rows = [e for e in services.audit.query() if e.action == UNAUTHENTICATED]
    assert sorted((e.client, e.count) for e in rows) == [("10.0.0.7", 5), ("10.0.0.8", 1)]


def test_a_revocation_in_one_worker_ends_the_token_in_the_others_at_once(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    """Two services on one data dir are two workers of one control plane: a token revoked in
    one is refused by the other's very next check, though it had the token's check cached. A
    control plane of another data dir sees it when its cached check ends (2 s)."""
    here, there = make_services(), make_services()
    elsewhere = make_services(data_dir=tmp_path / "other-plane")
    created = here.tokens.create(TokenCreate(role="operator"))
    for services in (here, there, elsewhere):
        assert services.tokens.authenticate(created.token) is not None  # now cached
    assert there.tokens.from_cache(created.token) is not None
    here.tokens.revoke(created.id)
    assert there.tokens.from_cache(created.token) is None
    assert there.tokens.authenticate(created.token) is None
    assert not there.tokens.active(created.id)
    assert elsewhere.tokens.from_cache(created.token) is not None  # within its 2 s
