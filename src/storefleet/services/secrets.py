"""Per-store secrets: generated here, encrypted in the registry, given to runtimes as files.

The Fernet key is STOREFLEET_SECRET_KEY, or `data_dir/secret.key` (mode 0600, made once).
`rotate_key` re-encrypts every secret under a new key; a crash half-way is safe because the new
key is written to `secret.key.new` first and both keys decrypt until the rotation completes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from storefleet.errors import StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import StoreSecret, Webhook
from storefleet.services.auth import check_strong

KEY_FILE = "secret.key"
NEW_KEY_FILE = "secret.key.new"


def _write_0600(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _valid(key: bytes, what: str) -> bytes:
    try:
        Fernet(key)
    except ValueError as exc:
        raise StorefleetError(f"{what} is not a valid Fernet key", code="bad_key") from exc
    return key


def load_keys(data_dir: Path, configured: str | None) -> list[bytes]:
    """The Fernet keys, primary first: the configured one, else the key file (made once).
    A `secret.key.new` left by an interrupted rotation comes first."""
    if configured is not None:
        check_strong(configured, "STOREFLEET_SECRET_KEY", min_length=32)
        return [_valid(configured.encode(), "STOREFLEET_SECRET_KEY")]
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes().strip()
    else:
        key = Fernet.generate_key()
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
    keys = [_valid(key, str(path))]
    pending = data_dir / NEW_KEY_FILE
    if pending.is_file():
        keys.insert(0, _valid(pending.read_bytes().strip(), str(pending)))
    return keys


class SecretStore:
    def __init__(self, registry: Registry, keys: list[bytes]) -> None:
        self.registry = registry
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken as exc:
            raise StorefleetError(
                "a secret does not decrypt with the configured key", code="bad_key"
            ) from exc

    def existing(self, store_id: str) -> list[str]:
        """Plaintext of the secrets the store has (none is made)."""
        with self.registry.transaction() as session:
            rows = session.scalars(select(StoreSecret).where(StoreSecret.store_id == store_id))
            return [self.decrypt(row.ciphertext) for row in rows]

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


def rotate_key(registry: Registry, data_dir: Path, new_key: bytes | None = None) -> int:
    """Re-encrypt every secret (store secrets, webhook secrets) under a new key. In key-file
    mode the new key replaces `secret.key`; returns how many secrets were re-encrypted."""
    old = load_keys(data_dir, None)
    new = _valid(new_key, "the new key") if new_key else Fernet.generate_key()
    _write_0600(data_dir / NEW_KEY_FILE, new)
    both = MultiFernet([Fernet(new), *[Fernet(k) for k in old]])
    with registry.transaction() as session:
        rows = list(session.scalars(select(StoreSecret)))
        for row in rows:
            row.ciphertext = both.rotate(row.ciphertext)
        hooks = list(session.scalars(select(Webhook)))
        for hook in hooks:
            hook.secret_ciphertext = both.rotate(hook.secret_ciphertext)
    (data_dir / NEW_KEY_FILE).replace(data_dir / KEY_FILE)
    return len(rows) + len(hooks)
