from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, update

from helpers import add_bare_stores
from storefleet.errors import ConcurrentChangeError
from storefleet.registry.db import Registry
from storefleet.registry.models import Store
from storefleet.shared import Numbers


def test_a_row_deleted_under_a_transaction_is_a_conflict(registry_url: str) -> None:
    """Found by the schema fuzzer: a PATCH racing a DELETE of the same store answered 500
    (SQLAlchemy's StaleDataError). It is a 409 the client can act on."""
    registry = Registry.open(registry_url)
    (store_id,) = add_bare_stores(registry, 1)
    with pytest.raises(ConcurrentChangeError), registry.transaction() as session:
        store = session.get(Store, store_id)
        assert store is not None
        with registry.transaction() as other:  # another request deletes it meanwhile
            other.delete(other.get(Store, store_id))
        store.tokens_disponibles = 5
    registry.engine.dispose()


def test_generation_moves_with_committed_writes_only(registry_url: str) -> None:
    """In-memory views (services/recent.py) are current while the generation stands still:
    every committed write moves it, a read or a rolled-back write does not."""
    registry = Registry.open(registry_url)
    start = registry.generation
    (store_id,) = add_bare_stores(registry, 1)  # an ORM insert
    after_insert = registry.generation
    assert after_insert > start
    with registry.transaction() as session:  # a read
        assert session.get(Store, store_id) is not None
    assert registry.generation == after_insert
    with registry.transaction() as session:  # an UPDATE statement, no flush
        session.execute(update(Store).where(Store.id == store_id).values(tokens_disponibles=3))
    after_update = registry.generation
    assert after_update > after_insert
    with pytest.raises(RuntimeError), registry.transaction() as session:
        found = session.get(Store, store_id)
        assert found is not None
        found.tokens_disponibles = 9
        session.flush()
        raise RuntimeError("rolled back")
    assert registry.generation == after_update
    with registry.transaction() as session:  # statements that match no row change nothing
        session.execute(update(Store).where(Store.id == "none").values(tokens_disponibles=1))
        session.execute(delete(Store).where(Store.id == "none"))
    assert registry.generation == after_update
    with registry.transaction() as session:  # a DELETE statement that matched
        session.execute(delete(Store).where(Store.id == store_id))
    assert registry.generation > after_update
    registry.engine.dispose()


def test_a_shared_generation_moves_with_every_process_writes(
    registry_url: str, tmp_path: Path
) -> None:
    """The workers of one control plane share the generation (a file of `storefleet.shared`):
    a write committed by one makes the views the other keeps old at once."""
    path = tmp_path / "shared" / "numbers"
    one = Registry.open(registry_url, Numbers(path))
    other = Registry.open(registry_url, Numbers(path))
    alone = Registry.open(registry_url)  # shares nothing: sees only its own writes
    seen, seen_alone = other.generation, alone.generation
    add_bare_stores(one, 1)
    assert other.generation > seen
    assert one.generation == other.generation
    assert alone.generation == seen_alone
    for registry in (one, other, alone):
        registry.close()
