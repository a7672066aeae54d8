"""Secrets at rest: key rings, rotation with a configured key and under a running plane."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select

from helpers import Server, add_bare_stores
from storefleet.registry.db import Registry
from storefleet.registry.models import Store, StoreSecret, Webhook
from storefleet.services.secrets import (
    KEY_FILE,
    NEW_KEY_FILE,
    RETIRED_KEY_FILE,
    KeyRing,
    SecretStore,
)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STOREFLEET_")}
    return subprocess.run(
        [sys.executable, "-m", "storefleet.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ciphertexts(url: str) -> list[bytes]:
    registry = Registry.open(url)
    try:
        with registry.transaction() as session:
            rows = [r.ciphertext for r in session.scalars(select(StoreSecret))]
            return rows + [h.secret_ciphertext for h in session.scalars(select(Webhook))]
    finally:
        registry.close()


def _seed_secrets(url: str, keys: KeyRing | list[bytes]) -> dict[str, str]:
    registry = Registry.open(url)
    try:
        add_bare_stores(registry, 1)
        with registry.transaction() as session:
            store = session.scalars(select(Store)).one()
            store.id = "s1"
        return SecretStore(registry, keys).ensure("s1", ("db_password", "api_key"))
    finally:
        registry.close()


def test_rotation_with_a_configured_key_uses_it_and_writes_no_key_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    url = f"sqlite:///{data_dir / 'storefleet.db'}"
    old, new = Fernet.generate_key(), Fernet.generate_key()
    before = _seed_secrets(url, [old])
    (tmp_path / "new.key").write_bytes(new)
    env = {
        "STOREFLEET_DATA_DIR": str(data_dir),
        "STOREFLEET_SECRET_KEY": old.decode(),
    }
    done = _cli(env, "secrets", "rotate-key", "--new-key-file", str(tmp_path / "new.key"))
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 secret(s)" in done.stdout
    assert not (data_dir / KEY_FILE).exists() and not (data_dir / NEW_KEY_FILE).exists()
    for ciphertext in _ciphertexts(url):
        Fernet(new).decrypt(ciphertext)
    registry = Registry.open(url)
    assert set(SecretStore(registry, [new]).existing("s1")) == set(before.values())
    registry.close()
    # NEW,OLD configured (planes were given the new key first): rotates to the first
    newer = Fernet.generate_key()
    env["STOREFLEET_SECRET_KEY"] = f"{newer.decode()},{new.decode()}"
    done = _cli(env, "secrets", "rotate-key")
    assert done.returncode == 0, done.stderr
    assert "set STOREFLEET_SECRET_KEY to the new key alone" in done.stdout
    for ciphertext in _ciphertexts(url):
        Fernet(newer).decrypt(ciphertext)
    # one configured key and no new one: a clear one-line refusal
    env["STOREFLEET_SECRET_KEY"] = newer.decode()
    refused = _cli(env, "secrets", "rotate-key")
    assert refused.returncode == 2 and "--new-key-file" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_running_plane_picks_up_the_rotated_key(start_server: Callable[..., Server]) -> None:
    server = start_server(STOREFLEET_WEBHOOK_ALLOW_NETS="127.0.0.0/8")
    data_dir = server.data_dir
    old_key = (data_dir / KEY_FILE).read_bytes().strip()
    with server.client() as api:
        api.post("/webhooks", json={"url": "http://127.0.0.1:9/a", "events": ["*"]})
    done = _cli({"STOREFLEET_DATA_DIR": str(data_dir)}, "secrets", "rotate-key")
    assert done.returncode == 0, done.stderr
    new_key = (data_dir / KEY_FILE).read_bytes().strip()
    assert new_key != old_key
    assert not (data_dir / RETIRED_KEY_FILE).exists()  # no secret needs the old key
    with server.client() as api:  # the running plane encrypts under the new key
        assert api.post(
            "/webhooks", json={"url": "http://127.0.0.1:9/b", "events": ["*"]}
        ).is_success
    server.stop()
    server.start()
    with server.client() as api:
        assert api.post(
            "/webhooks", json={"url": "http://127.0.0.1:9/c", "events": ["*"]}
        ).is_success
    url = f"sqlite:///{data_dir / 'storefleet.db'}"
    ciphertexts = _ciphertexts(url)
    assert len(ciphertexts) == 3
    for ciphertext in ciphertexts:  # every secret decrypts with the one key left on disk
        Fernet(new_key).decrypt(ciphertext)
        try:
            Fernet(old_key).decrypt(ciphertext)
        except InvalidToken:
            continue
        raise AssertionError("a secret is still under the old key")


def test_a_key_ring_rereads_changed_key_files(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, None)
    first = ring.keys()
    assert len(first) == 1 and (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    pending = Fernet.generate_key()
    (tmp_path / NEW_KEY_FILE).write_bytes(pending + b"\n")
    assert ring.keys() == [pending, *first]
    token = ring.fernet().encrypt(b"x")
    assert Fernet(pending).decrypt(token) == b"x"  # the pending key encrypts at once
