"""Engine, sessions and migrations of the registry."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from storefleet.errors import ConcurrentChangeError
from storefleet.registry.models import Meta
from storefleet.shared import GENERATION, Numbers

MIGRATIONS = Path(__file__).with_name("migrations")
_WROTE = "storefleet.wrote"


def _mark_written(session: Session, _context: Any) -> None:
    session.info[_WROTE] = True


def _mark_dml(state: ORMExecuteState) -> Result[Any] | None:
    if state.is_insert:
        state.session.info[_WROTE] = True
    elif state.is_update or state.is_delete:
        # run it here to see what it changed: an UPDATE or DELETE that matched no row (the
        # reconciler's sweeps, every pass) leaves the views kept in memory current
        result = state.invoke_statement()
        if getattr(result, "rowcount", -1) != 0:
            state.session.info[_WROTE] = True
        return result
    return None


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite gets WAL, foreign keys and a generous busy timeout."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers run beside the writer: give concurrent requests enough connections.
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=64,  # kept open: a new connection re-runs the PRAGMAs below
            max_overflow=16,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: never corrupts; a power cut may lose the last commits, not more.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the registry schema to the newest migration."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several control planes may start at once on one registry: migrate one at a time.
            connection.execute(text("SELECT pg_advisory_xact_lock(7262736175)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Registry:
    """Owns the engine and hands out short transactions.

    `generation` counts the transactions that committed a write (an ORM flush or an INSERT,
    UPDATE or DELETE through a session): a view kept in memory is current while it has not
    moved. With `shared` it is the count of every process sharing those numbers (the workers of
    this control plane: `storefleet.shared`), else of this process; other control planes'
    writes are not seen here, so such views also expire.
    """

    def __init__(self, engine: Engine, shared: Numbers | None = None) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._local = 0
        self._shared = shared
        self._generation_lock = threading.Lock()
        event.listen(self._sessions, "after_flush", _mark_written)
        event.listen(self._sessions, "do_orm_execute", _mark_dml)

    @classmethod
    def open(cls, url: str, shared: Numbers | None = None) -> Registry:
        engine = make_engine(url)
        migrate(engine)
        return cls(engine, shared)

    @property
    def generation(self) -> int:
        if self._shared is not None:
            return self._shared.get(GENERATION)
        return self._local

    def _moved(self) -> None:
        if self._shared is not None:
            self._shared.bump(GENERATION)
            return
        with self._generation_lock:
            self._local += 1

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One short unit of work: committed on success, rolled back on error.

        Never call the network, a subprocess or a runtime driver inside it. A row that another
        transaction deleted between this one's read and its write is a `ConcurrentChangeError`
        (409: the caller looks again), not a crash.
        """
        try:
            with self._sessions() as session:
                with session.begin():
                    yield session
                if session.info.pop(_WROTE, False):  # committed: views read before are old
                    self._moved()
        except StaleDataError as exc:
            raise ConcurrentChangeError(
                "the record changed or was removed by another request meanwhile; look again"
            ) from exc

    def fleet_id(self) -> str:
        """This registry's fleet id (made once): every runtime object of the fleet carries it,
        so that control planes of other registries on the same host are never touched."""
        with self.transaction() as session:
            row = session.get(Meta, "fleet_id")
            if row is not None:
                return row.value
        try:
            with self.transaction() as session:
                session.add(Meta(key="fleet_id", value=uuid.uuid4().hex[:16]))
        except IntegrityError:
            pass  # another control plane made it first
        with self.transaction() as session:
            made = session.get(Meta, "fleet_id")
            assert made is not None
            return made.value

    def close(self) -> None:
        self.engine.dispose()
