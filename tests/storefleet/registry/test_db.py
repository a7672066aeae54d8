from __future__ import annotations

import pytest

from helpers import add_bare_stores
from storefleet.errors import ConcurrentChangeError
from storefleet.registry.db import Registry
from storefleet.registry.models import Store


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
