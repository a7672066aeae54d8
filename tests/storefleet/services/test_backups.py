"""Backups with the fake driver: checksums, restore, corruption, retention, schedule, purge."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import update

from fakes import fake_of
from helpers import new_store
from storefleet.errors import ConflictError
from storefleet.registry.models import Backup, utcnow
from storefleet.services.backups import BackupView, RestoreResult, sha256_of
from storefleet.services.wiring import Services


def _backup(services: Services, sid: str) -> BackupView:
    view = services.backups.create(sid)
    assert isinstance(view, BackupView)
    return view


def test_backup_restore_round_trip(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    fake_of(services).rows[sid] = ["a", "b"]
    taken = _backup(services, sid)
    path = services.backups.folder(sid) / f"{taken.id}.bin"
    assert path.is_file() and sha256_of(path) == taken.sha256 and taken.size_bytes > 0
    assert not list(services.backups.folder(sid).glob("*.part"))
    fake_of(services).rows[sid] = ["a", "b", "c", "d"]
    restored = services.backups.restore(sid, taken.id)
    assert fake_of(services).rows[sid] == ["a", "b"]
    assert sid in fake_of(services).stacks  # applied again after the restore
    kinds = [op.kind for op in services.ops.for_store(sid)]
    assert kinds[:2] == ["restore", "backup"]
    # the data the restore replaced was backed up first: the restore can be undone
    assert isinstance(restored, RestoreResult) and restored.pre_restore_backup_id
    before = services.backups.get(sid, restored.pre_restore_backup_id)
    assert before.reason == "pre_restore"
    steps = [s.name for s in services.ops.for_store(sid)[0].steps]
    assert steps.index("verify") < steps.index("pre_restore") < steps.index("restore")
    services.backups.restore(sid, before.id)
    assert fake_of(services).rows[sid] == ["a", "b", "c", "d"]


def test_a_corrupted_backup_is_refused(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)
    fake_of(services).rows[sid] = ["keep"]
    taken = _backup(services, sid)
    path = services.backups.folder(sid) / f"{taken.id}.bin"
    path.write_bytes(path.read_bytes().replace(b"keep", b"evil"))
    fake_of(services).rows[sid] = ["now"]
    with pytest.raises(ConflictError) as refused:
        services.backups.restore(sid, taken.id)
    assert refused.value.code == "backup_corrupted" and "SHA-256" in refused.value.message
    assert fake_of(services).rows[sid] == ["now"]  # nothing was touched


def test_retention_keeps_the_newest(make_services: Callable[..., Services]) -> None:
    services = make_services(backup_retention=2)
    sid = new_store(services)
    services.deployments.deploy(sid)
    first = _backup(services, sid)
    restored = services.backups.restore(sid, first.id)
    assert isinstance(restored, RestoreResult)
    taken = [_backup(services, sid) for _ in range(4)]
    kept = services.backups.for_store(sid)
    # the newest 2 manual ones, and the pre-restore one (never pruned)
    assert [b.id for b in kept] == [taken[3].id, taken[2].id, restored.pre_restore_backup_id]
    assert len(list(services.backups.folder(sid).iterdir())) == 3


def test_scheduled_backups_take_what_is_due(make_services: Callable[..., Services]) -> None:
    services = make_services(backup_interval_s=3600)
    fresh, stale, idle = (new_store(services, n) for n in ("Fresca", "Vieja", "Parada"))
    services.deployments.deploy(fresh)
    services.deployments.deploy(stale)
    _backup(services, fresh)
    _backup(services, stale)
    with services.registry.transaction() as session:
        session.execute(
            update(Backup)
            .where(Backup.store_id == stale)
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    assert services.backups.due() == [stale]
    assert services.backups.run_schedule() == 1
    newest = services.backups.for_store(stale)[0]
    assert newest.reason == "scheduled"
    assert services.backups.due() == []
    assert idle not in services.backups.due()  # never deployed: nothing to back up


def test_purge_takes_a_final_backup_unless_told_not_to(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    kept, dropped = new_store(services, "Con copia"), new_store(services, "Sin copia")
    for sid in (kept, dropped):
        services.deployments.deploy(sid)
        fake_of(services).rows[sid] = ["last order"]
    services.stores.delete(kept, purge=True)
    services.stores.delete(dropped, purge=True, final_backup=False)
    finals = list(services.backups.folder(kept).iterdir())
    assert len(finals) == 1 and "last order" in finals[0].read_text()
    assert not services.backups.folder(dropped).exists()
    with services.registry.transaction() as session:
        row = session.query(Backup).filter_by(store_id=kept).one()
        assert row.reason == "final"


def test_a_failed_final_backup_purges_nothing(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    services.deployments.deploy(sid)

    def broken(*_args: object, **_kwargs: object) -> str:
        raise ConflictError("the database is not running")

    fake_of(services).backup = broken  # type: ignore[method-assign]
    with pytest.raises(ConflictError):
        services.stores.delete(sid, purge=True)
    assert services.status.status(sid).status == "running"
    assert sid in fake_of(services).data


def test_purging_a_store_that_never_had_data_needs_no_backup(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    sid = new_store(services, "Nunca desplegada")
    services.stores.delete(sid, purge=True)
    assert not services.backups.folder(sid).exists()  # no empty folder left either


def test_backup_needs_a_deployed_store(make_services: Callable[..., Services]) -> None:
    services = make_services()
    sid = new_store(services)
    with pytest.raises(ConflictError):
        services.backups.create(sid)
