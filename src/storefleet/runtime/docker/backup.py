"""Backups of a store on the Docker runtime: pg_dump and pg_restore inside its db container."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from docker.errors import DockerException

from storefleet.errors import (
    RuntimeFailure,
)
from storefleet.runtime.docker.stack import (
    DockerStack,
)


class DockerBackups(DockerStack):
    def _db_container(self, store_id: str) -> Any:
        found = [c for c in self._service_containers(store_id, "db") if c.get("State") == "running"]
        if not found:
            raise RuntimeFailure(f"the database of store {store_id} is not running")
        return self.client.containers.get(found[0]["Id"])

    def _exec(self, container: Any, argv: list[str], what: str) -> None:
        result = container.exec_run(argv, user="postgres")
        if result.exit_code != 0:
            tail = " | ".join(result.output.decode(errors="replace").strip().splitlines()[-3:])
            raise RuntimeFailure(f"{what} failed: {tail}")

    def backup(self, store_id: str, dest: Path, *, timeout_s: float) -> str:
        """`pg_dump --format=custom` inside the db container (local socket, no password),
        then copied out through the Engine API."""
        # a path inside the store's own db container, not on this host
        inside = f"/tmp/storefleet-backup-{os.getpid()}-{threading.get_ident()}.dump"  # noqa: S108
        try:
            db = self._db_container(store_id)
            self._exec(
                db,
                [
                    "pg_dump",
                    "--format=custom",
                    "--username=store",
                    "--dbname=store",
                    "--file",
                    inside,
                ],
                f"pg_dump of store {store_id}",
            )
            stream, _ = db.get_archive(inside)
            with tempfile.TemporaryFile() as tar_file:
                for chunk in stream:
                    tar_file.write(chunk)
                tar_file.seek(0)
                with tarfile.open(fileobj=tar_file) as tar:
                    member = tar.next()
                    handle = tar.extractfile(member) if member else None
                    if handle is None:
                        raise RuntimeFailure(f"the dump of store {store_id} came back empty")
                    with dest.open("wb") as out:
                        shutil.copyfileobj(handle, out)
            db.exec_run(["rm", "-f", inside], user="postgres")
        except (DockerException, OSError, tarfile.TarError) as exc:
            raise RuntimeFailure(f"backup of store {store_id} failed: {exc}") from exc
        return "pg_dump-custom"

    def restore(self, store_id: str, source: Path, *, timeout_s: float) -> None:
        """Stop the backend, copy the dump into the db container, `pg_restore --clean`."""
        self._compose(store_id, ["stop", "--timeout", "10", "backend"], timeout_s=timeout_s)
        # a path inside the store's own db container, not on this host
        inside = f"/tmp/storefleet-restore-{os.getpid()}-{threading.get_ident()}.dump"  # noqa: S108
        try:
            db = self._db_container(store_id)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                info = tar.gettarinfo(str(source), arcname=Path(inside).name)
                info.uid = info.gid = 0
                info.mode = 0o644
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            if not db.put_archive(str(Path(inside).parent), buffer.getvalue()):
                raise RuntimeFailure(f"could not copy the backup into store {store_id}")
            self._exec(
                db,
                [
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--single-transaction",
                    "--username=store",
                    "--dbname=store",
                    inside,
                ],
                f"pg_restore of store {store_id}",
            )
            db.exec_run(["rm", "-f", inside], user="root")
        except (DockerException, OSError, tarfile.TarError) as exc:
            raise RuntimeFailure(f"restore of store {store_id} failed: {exc}") from exc
