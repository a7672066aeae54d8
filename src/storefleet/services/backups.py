"""Backups of a store's database: taken, checked, listed, restored, scheduled, pruned.

A backup is written by the driver (`pg_dump --format=custom` in the store's db container, or
SQLite's online backup) to `data_dir/backups/<store id>/<backup id>.<ext>.part`, flushed to
disk, hashed (SHA-256) and renamed into place; the registry row is written last, so a listed
backup is always complete. A restore checks the SHA-256 first and refuses a file that does not
match. Every backup and restore is an operation holding the store's lock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from storefleet.errors import BusyError, ConflictError, NotFoundError, StorefleetError
from storefleet.registry.models import Backup, DeployPhase, Store, is_store, utcnow
from storefleet.services.operations import OpKind, RunningOp
from storefleet.services.runner import OperationRunner
from storefleet.services.schemas import OperationView
from storefleet.services.steps import Toolkit

log = logging.getLogger(__name__)
EXTENSIONS = {"pg_dump-custom": "dump", "sqlite": "sqlite3"}
# Backups kept only up to the retention; `final` (before a purge) and `pre_restore` (before a
# restore overwrote the data) are always kept.
PRUNABLE = ("manual", "scheduled")


class BackupView(BaseModel):
    id: str
    store_id: str
    created_at: datetime
    reason: str
    runtime: str
    format: str
    size_bytes: int
    sha256: str


class RestoreResult(BaseModel):
    message: str
    store_id: str
    backup_id: str
    # the backup of the data the restore replaced: restore it to undo this restore
    pre_restore_backup_id: str | None = None
    status: str = "restored"


def _view(row: Backup) -> BackupView:
    return BackupView(
        id=row.id,
        store_id=row.store_id,
        created_at=row.created_at,
        reason=row.reason,
        runtime=row.runtime,
        format=row.format,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BackupService:
    def __init__(
        self,
        runner: OperationRunner,
        kit: Toolkit,
        root: Path,
        *,
        retention: int = 7,
        interval_s: float = 0.0,
    ) -> None:
        self.runner = runner
        self.kit = kit
        self.driver = kit.driver
        self.root = root
        self.retention = retention
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def folder(self, store_id: str) -> Path:
        return self.root / store_id

    # -- taking -----------------------------------------------------------------------------

    def _take(self, store_id: str, reason: str) -> BackupView:
        """Write, hash and record one backup (the caller holds the store's lock)."""
        folder = self.folder(store_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        backup_id = str(uuid.uuid4())
        part = folder / f"{backup_id}.part"
        try:
            fmt = self.kit.caps.need_backups().backup(
                store_id, part, timeout_s=self.runner.timeouts.deploy_s
            )
            with part.open("rb") as handle:
                os.fsync(handle.fileno())
            digest = sha256_of(part)
            final = folder / f"{backup_id}.{EXTENSIONS.get(fmt, 'bin')}"
            part.replace(final)
        finally:
            part.unlink(missing_ok=True)
        row = Backup(
            id=backup_id,
            store_id=store_id,
            created_at=utcnow(),
            reason=reason,
            runtime=self.driver.name,
            format=fmt,
            filename=final.name,
            size_bytes=final.stat().st_size,
            sha256=digest,
        )
        with self.kit.registry.transaction() as session:
            session.add(row)
        log.info("store %s: %s backup %s (%d bytes)", store_id, reason, backup_id, row.size_bytes)
        if reason in PRUNABLE:
            self._prune(store_id)
        return _view(row)

    def for_move(self, store_id: str) -> Path:
        """The backup a move carries to the new node (kept, reason `move`): its file."""
        view = self._take(store_id, "move")
        with self.kit.registry.transaction() as session:
            row = session.get(Backup, view.id)
            assert row is not None
            return self.folder(store_id) / row.filename

    def final(self, store_id: str) -> BackupView | None:
        """The backup taken before a purge; None when the store never had data (nothing is
        lost: a store registered and never deployed can be purged)."""
        data = self.kit.caps.data
        if data is not None and store_id not in data.data_owners():
            log.info("store %s has no data: no final backup needed", store_id)
            return None
        return self._take(store_id, "final")

    def _prune(self, store_id: str) -> None:
        """Keep the newest `retention` manual and scheduled backups (final and pre-restore
        ones always)."""
        with self.kit.registry.transaction() as session:
            rows = list(
                session.scalars(
                    select(Backup)
                    .where(Backup.store_id == store_id, Backup.reason.in_(PRUNABLE))
                    .order_by(Backup.created_at.desc(), Backup.id)
                )
            )
            old = rows[self.retention :]
            for row in old:
                session.delete(row)
        for row in old:
            (self.folder(store_id) / row.filename).unlink(missing_ok=True)

    def create(
        self, store_id: str, *, reason: str = "manual", wait: bool = True
    ) -> BackupView | OperationView:
        self.kit.caps.need_backups()  # 501 before an operation is recorded

        def body(run: RunningOp) -> BackupView:
            store = self.kit.load(store_id)
            if store.phase not in (DeployPhase.DEPLOYED, DeployPhase.STOPPED):
                raise ConflictError(
                    f"store {store_id} is {store.phase}: there is no running database to back up",
                    code="not_deployed",
                )
            with run.step("dump"):
                return self._take(store_id, reason)

        return self.runner.operation(store_id, OpKind.BACKUP, body, {"reason": reason}, wait=wait)

    # -- reading ----------------------------------------------------------------------------

    def for_store(self, store_id: str) -> list[BackupView]:
        self.kit.load(store_id)
        with self.kit.registry.transaction() as session:
            rows = session.scalars(
                select(Backup)
                .where(Backup.store_id == store_id)
                .order_by(Backup.created_at.desc(), Backup.id)
            )
            return [_view(r) for r in rows]

    def get(self, store_id: str, backup_id: str) -> BackupView:
        self.kit.load(store_id)
        with self.kit.registry.transaction() as session:
            row = session.get(Backup, backup_id)
            if row is None or row.store_id != store_id:
                raise NotFoundError(f"backup {backup_id} of store {store_id} does not exist")
            return _view(row)

    def verified_file(self, store_id: str, backup_id: str) -> tuple[BackupView, Path]:
        """The backup's file, after checking its SHA-256 (a corrupted one is refused)."""
        view = self.get(store_id, backup_id)
        path = self.folder(store_id) / f"{backup_id}.{EXTENSIONS.get(view.format, 'bin')}"
        if not path.is_file():
            raise ConflictError(
                f"the file of backup {backup_id} is missing from {path.parent}",
                code="backup_missing",
            )
        actual = sha256_of(path)
        if actual != view.sha256:
            raise ConflictError(
                f"backup {backup_id} is corrupted: its SHA-256 is {actual}, "
                f"{view.sha256} was recorded; it will not be restored",
                code="backup_corrupted",
            )
        return view, path

    # -- restoring --------------------------------------------------------------------------

    def restore(
        self, store_id: str, backup_id: str, *, wait: bool = True
    ) -> RestoreResult | OperationView:
        """Put the backup's data back into the same store, then bring it back healthy."""
        self.kit.caps.need_backups()
        self.verified_file(store_id, backup_id)  # refuse a bad backup before anything acts

        def body(run: RunningOp) -> RestoreResult:
            store = self.kit.load(store_id)
            ports = self.kit.ports_of(store_id)
            if store.phase != DeployPhase.DEPLOYED or ports is None:
                raise ConflictError(
                    f"store {store_id} is {store.phase}: start it before restoring",
                    code="not_deployed",
                )
            with run.step("verify"):
                _, path = self.verified_file(store_id, backup_id)
            with run.step("pre_restore"):  # the way back from a wrong restore (kept, not pruned)
                before = self._take(store_id, "pre_restore")
            try:
                with run.step("restore", cancellable=False):
                    self.kit.caps.need_backups().restore(
                        store_id, path, timeout_s=self.runner.timeouts.deploy_s
                    )
            finally:
                with run.step("start", cancellable=False):
                    self.driver.apply(
                        self.kit.spec(store, ports), timeout_s=self.runner.timeouts.deploy_s
                    )
                    self.kit.await_route(store_id)
            return RestoreResult(
                message=f"store {store_id} restored from backup {backup_id}",
                store_id=store_id,
                backup_id=backup_id,
                pre_restore_backup_id=before.id,
            )

        params = {"backup_id": backup_id}
        return self.runner.operation(store_id, OpKind.RESTORE, body, params, wait=wait)

    # -- schedule ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="backups", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        pause = max(0.2, min(self.interval_s / 4, 60.0))
        while not self._stop.wait(pause):
            try:
                self.run_schedule()
            except Exception:  # e.g. the registry is briefly away: log it, try again later
                log.exception("scheduled backups failed")

    def due(self) -> list[str]:
        """Deployed stores whose newest backup is older than the interval (or missing)."""
        if self.kit.caps.backups is None:
            return []
        cutoff = utcnow() - timedelta(seconds=self.interval_s)
        with self.kit.registry.transaction() as session:
            stores = list(
                session.scalars(
                    select(Store.id).where(Store.phase == DeployPhase.DEPLOYED, is_store())
                )
            )
            newest: dict[str, datetime] = {}
            for sid, created in session.execute(select(Backup.store_id, Backup.created_at)):
                if sid not in newest or created > newest[sid]:
                    newest[sid] = created
        return [s for s in stores if s not in newest or newest[s] < cutoff]

    def run_schedule(self, pick: Callable[[list[str]], list[str]] = lambda due: due) -> int:
        taken = 0
        for store_id in pick(self.due()):
            if self._stop.is_set():
                break
            try:
                self._scheduled(store_id)
                taken += 1
            except BusyError:
                continue  # another operation holds it: next round
            except StorefleetError as exc:
                log.warning("scheduled backup of store %s failed: %s", store_id, exc.message)
        return taken

    def _scheduled(self, store_id: str) -> Any:
        op = self.runner.ops.create(store_id, OpKind.BACKUP, {"reason": "scheduled"})
        cutoff_s = self.interval_s

        def body(run: RunningOp) -> BackupView | None:
            newest = self.for_store(store_id)
            if newest and (utcnow() - newest[0].created_at).total_seconds() < cutoff_s:
                return None  # another control plane took it meanwhile
            with run.step("dump"):
                return self._take(store_id, "scheduled")

        try:
            return self.runner.execute(op.id, store_id, OpKind.BACKUP, body, wait_s=0)
        except BusyError:
            self.runner.ops.delete_unstarted(op.id)
            raise
