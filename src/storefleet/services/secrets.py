"""Per-store secrets: generated here, encrypted in the registry, given to runtimes as files.

Keys (Fernet), the first encrypts and every one decrypts:
- `STOREFLEET_SECRET_KEY`: one key, or several separated by commas (`NEW,OLD` while rotating);
- otherwise key files in the data dir, all mode 0600: `secret.key` (made once),
  `secret.key.new` (a rotation under way: it encrypts from the moment it exists) and
  `secret.key.retired` (older keys, one a line, kept until no secret needs them).

Every control plane re-reads the key files when they change (a `stat` per use), so a rotation
run while planes serve never leaves one encrypting under a key that is gone. `rotate_key`
writes the new key first, re-encrypts every secret (store secrets, webhook secrets) under it,
retires the old key, re-encrypts once more what planes wrote meanwhile, and deletes retired
keys only when no secret needs them. A crash half-way is safe: every key still decrypts.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from storefleet.errors import StorefleetError
from storefleet.registry.db import Registry
from storefleet.registry.models import StoreSecret, Webhook
from storefleet.services.auth import check_strong

KEY_FILE = "secret.key"
NEW_KEY_FILE = "secret.key.new"
RETIRED_KEY_FILE = "secret.key.retired"


def _write_0600(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _valid(key: bytes, what: str) -> bytes:
    try:
        Fernet(key)
    except ValueError as exc:
        raise StorefleetError(f"{what} is not a valid Fernet key", code="bad_key") from exc
    return key


def _configured_keys(configured: str) -> list[bytes]:
    keys = [k.strip() for k in configured.split(",") if k.strip()]
    if not keys:
        check_strong("", "STOREFLEET_SECRET_KEY", min_length=32)
    for key in keys:
        check_strong(key, "STOREFLEET_SECRET_KEY", min_length=32)
    return [_valid(k.encode(), "STOREFLEET_SECRET_KEY") for k in keys]


def _read_keys(path: Path) -> list[bytes]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    return [_valid(line.strip(), str(path)) for line in text.splitlines() if line.strip()]


class KeyRing:
    """The Fernet keys of this control plane, primary first (see the module docstring)."""

    def __init__(self, data_dir: Path, configured: str | None) -> None:
        self.data_dir = data_dir
        self.configured = configured
        self._lock = threading.Lock()
        self._seen: tuple[float, ...] | None = None
        self._keys: list[bytes] = []
        if configured is not None:
            self._keys = _configured_keys(configured)
        else:
            self._ensure_key_file()
            self.keys()

    @property
    def from_files(self) -> bool:
        return self.configured is None

    def _ensure_key_file(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.data_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())

    def _stamp(self) -> tuple[float, ...]:
        stamps: list[float] = []
        for name in (KEY_FILE, NEW_KEY_FILE, RETIRED_KEY_FILE):
            try:
                stat = (self.data_dir / name).stat()
                stamps.extend((stat.st_mtime_ns, stat.st_ino, stat.st_size))
            except FileNotFoundError:
                stamps.extend((0, 0, 0))
        return tuple(stamps)

    def keys(self) -> list[bytes]:
        if not self.from_files:
            return list(self._keys)
        stamp = self._stamp()
        with self._lock:
            if stamp != self._seen:
                keys = [
                    *_read_keys(self.data_dir / NEW_KEY_FILE),
                    *_read_keys(self.data_dir / KEY_FILE),
                    *_read_keys(self.data_dir / RETIRED_KEY_FILE),
                ]
                if not keys:
                    raise StorefleetError(
                        f"no secret key in {self.data_dir / KEY_FILE}", code="bad_key"
                    )
                self._keys = list(dict.fromkeys(keys))
                self._seen = stamp
            return list(self._keys)

    def fernet(self) -> MultiFernet:
        return MultiFernet([Fernet(k) for k in self.keys()])


def load_keys(data_dir: Path, configured: str | None) -> list[bytes]:
    """The Fernet keys, primary first (the key file is made once in key-file mode)."""
    return KeyRing(data_dir, configured).keys()


class SecretStore:
    def __init__(self, registry: Registry, keys: KeyRing | list[bytes]) -> None:
        self.registry = registry
        self._ring = keys if isinstance(keys, KeyRing) else None
        self._static = MultiFernet([Fernet(k) for k in keys]) if isinstance(keys, list) else None

    @property
    def _fernet(self) -> MultiFernet:
        if self._ring is not None:
            return self._ring.fernet()
        assert self._static is not None
        return self._static

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken as exc:
            raise StorefleetError(
                "a secret does not decrypt with the configured key(s); after a key rotation "
                "give this control plane the new key (STOREFLEET_SECRET_KEY=NEW,OLD)",
                code="bad_key",
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
        fernet = self._fernet
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
                        ciphertext=fernet.encrypt(value.encode()),
                    )
                    session.add(row)
                    rows[name] = row
            try:
                return {n: fernet.decrypt(rows[n].ciphertext).decode() for n in names}
            except InvalidToken as exc:
                raise StorefleetError(
                    f"the secrets of store {store_id} do not decrypt with the configured key",
                    code="bad_key",
                ) from exc

    def replace(self, store_id: str, name: str) -> str:
        """A new random value for the store's secret `name` (kept encrypted); returns it."""
        value = secrets.token_urlsafe(32)
        ciphertext = self._fernet.encrypt(value.encode())
        with self.registry.transaction() as session:
            row = session.get(StoreSecret, (store_id, name))
            if row is None:
                session.add(StoreSecret(store_id=store_id, name=name, ciphertext=ciphertext))
            else:
                row.ciphertext = ciphertext
        return value


@dataclass(frozen=True)
class Rotation:
    rotated: int  # secrets re-encrypted under the new key
    still_old: int  # secrets that still need an old key afterwards (0: old keys dropped)
    key_files: bool  # key-file mode (else STOREFLEET_SECRET_KEY)


def _reencrypt(registry: Registry, new: bytes, keys: list[bytes], *, only_old: bool) -> int:
    """Re-encrypt under `new` every secret (or only those `new` alone does not decrypt)."""
    both = MultiFernet([Fernet(new), *[Fernet(k) for k in keys if k != new]])
    alone = Fernet(new)

    def needs(ciphertext: bytes) -> bool:
        if not only_old:
            return True
        try:
            alone.decrypt(ciphertext)
        except InvalidToken:
            return True
        return False

    count = 0
    with registry.transaction() as session:
        for row in session.scalars(select(StoreSecret)):
            if needs(row.ciphertext):
                row.ciphertext = both.rotate(row.ciphertext)
                count += 1
        for hook in session.scalars(select(Webhook)):
            if needs(hook.secret_ciphertext):
                hook.secret_ciphertext = both.rotate(hook.secret_ciphertext)
                count += 1
    return count


def _needing_old(registry: Registry, new: bytes) -> int:
    """How many secrets the key `new` alone does not decrypt."""
    alone = Fernet(new)
    count = 0
    with registry.transaction() as session:
        ciphertexts = [r.ciphertext for r in session.scalars(select(StoreSecret))]
        ciphertexts += [h.secret_ciphertext for h in session.scalars(select(Webhook))]
    for ciphertext in ciphertexts:
        try:
            alone.decrypt(ciphertext)
        except InvalidToken:
            count += 1
    return count


def rotate_key(
    registry: Registry,
    data_dir: Path,
    new_key: bytes | None = None,
    *,
    configured: str | None = None,
    grace_s: float = 2.0,
) -> Rotation:
    """Re-encrypt every secret under a new key (see the module docstring).

    Key-file mode (`configured` None): the new key (given or generated) becomes `secret.key`;
    running control planes pick it up at their next use. With `STOREFLEET_SECRET_KEY`
    (`configured`): the new key is `new_key`, or the first configured key when several are
    configured (`NEW,OLD`: planes were given the new key first); no file is written."""
    ring = KeyRing(data_dir, configured)
    keys = ring.keys()
    if configured is not None:
        if new_key is None and len(keys) < 2:
            raise StorefleetError(
                "STOREFLEET_SECRET_KEY holds one key: give the new one with --new-key-file, or "
                "configure NEW,OLD (the new key first) on every control plane and rotate again",
                code="bad_key",
            )
        new = _valid(new_key, "the new key") if new_key else keys[0]
        rotated = _reencrypt(registry, new, keys, only_old=False)
        return Rotation(rotated, _needing_old(registry, new), False)
    new = _valid(new_key, "the new key") if new_key else Fernet.generate_key()
    # 1. the new key exists: from now on every plane encrypts under it
    _write_0600(data_dir / NEW_KEY_FILE, new + b"\n")
    rotated = _reencrypt(registry, new, [new, *keys], only_old=False)
    # 2. the old keys retire (still decrypting), the new one is the key file
    retired = [k for k in keys if k != new]
    _write_0600(data_dir / RETIRED_KEY_FILE, b"".join(k + b"\n" for k in retired))
    _write_0600(data_dir / KEY_FILE, new + b"\n")
    (data_dir / NEW_KEY_FILE).unlink(missing_ok=True)
    # 3. what a plane encrypted under an old key while it had not seen the new one yet
    time.sleep(grace_s)
    _reencrypt(registry, new, [new, *retired], only_old=True)
    still_old = _needing_old(registry, new)
    if still_old == 0:
        (data_dir / RETIRED_KEY_FILE).unlink(missing_ok=True)
    return Rotation(rotated, still_old, True)
