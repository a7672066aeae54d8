"""Backups of a store on the process runtime: SQLite's online backup, and a checked restore."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from storefleet.errors import (
    RuntimeFailure,
)
from storefleet.runtime.process.stack import (
    ProcessStack,
)


class ProcessBackups(ProcessStack):
    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        """SQLite's online backup: a consistent copy while the backend keeps writing."""
        source = self._db_file(store_id)
        if not source.is_file():
            raise RuntimeFailure(f"store {store_id} has no database to back up yet")
        with (
            contextlib.closing(sqlite3.connect(source, timeout=timeout_s)) as src,
            contextlib.closing(sqlite3.connect(dest)) as out,
        ):
            src.backup(out)
        return "sqlite"

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        """Stop the backend (the caller applies the stack again), then copy the backup into
        the database with SQLite's backup API (its journal and WAL stay consistent)."""
        with contextlib.closing(sqlite3.connect(source)) as check:
            if check.execute("PRAGMA integrity_check").fetchone() != ("ok",):
                raise RuntimeFailure(f"backup {source.name} is not a sound SQLite database")
        self.stop(store_id, timeout_s=timeout_s)
        self._data_dir(store_id).mkdir(parents=True, exist_ok=True, mode=0o700)
        with (
            contextlib.closing(sqlite3.connect(source)) as src,
            contextlib.closing(sqlite3.connect(self._db_file(store_id), timeout=timeout_s)) as db,
        ):
            src.backup(db)
