"""Per-store secrets: generated here, encrypted in the registry, given to runtimes as files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select

from storefleet.errors import StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import StoreSecret

KEY_FILE = "secret.key"


def load_or_create_key(data_dir: Path, configured: str | None) -> bytes:
    """The Fernet key: the configured one, else `data_dir/secret.key` (created 0600 once)."""
    if configured:
        key = configured.encode()
    else:
        path = data_dir / KEY_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes().strip()
        else:
            key = Fernet.generate_key()
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
    try:
        Fernet(key)
    except ValueError as exc:
        raise StorefleetError(
            "STOREFLEET_SECRET_KEY (or the key file) is not a valid Fernet key", code="bad_key"
        ) from exc
    return key


class SecretStore:
    def __init__(self, registry: Registry, key: bytes) -> None:
        self.registry = registry
        self._fernet = Fernet(key)

    def ensure(self, store_id: str, names: tuple[str, ...]) -> dict[str, str]:
        """Plaintext of the store's secrets `names`, generating the missing ones."""
        if not names:
            return {}
        with self.registry.transaction() as session:
            rows = {
                row.name: row
                for row in session.scalars(
                    select(StoreSecret).where(StoreSecret.store_id == store_id)
                )
            }
            for name in names:
                if name not in rows:
                    value = secrets.token_urlsafe(32)
                    row = StoreSecret(
                        store_id=store_id,
                        name=name,
                        ciphertext=self._fernet.encrypt(value.encode()),
                    )
                    session.add(row)
                    rows[name] = row
            try:
                return {n: self._fernet.decrypt(rows[n].ciphertext).decode() for n in names}
            except InvalidToken as exc:
                raise StorefleetError(
                    f"the secrets of store {store_id} do not decrypt with the configured key",
                    code="bad_key",
                ) from exc
