"""Database engine and sessions: SQLite by default (WAL), PostgreSQL by URL.

Schema changes are Alembic migrations under ``connector/store/migrations``; ``open_database``
applies them before anything else touches the database.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlmodel import Session, create_engine

from connector.errors import ConfigError, Unavailable

__all__ = ["Database", "RawTransaction", "open_database"]

log = logging.getLogger(__name__)
_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works: it only has to be the same for every replica of a connector.
_MIGRATION_LOCK_KEY = 0x7464735F6D6967  # "tds_mig"


class Database:
    """An engine plus session factory for one connector's state."""

    def __init__(self, engine: Engine, write_lock: _SqliteWriteLock | None = None) -> None:
        self.engine = engine
        self._write_lock = write_lock
        self._driver: Any = engine.dialect.dbapi
        self.postgres = engine.dialect.name == "postgresql"
        self._connections = _DriverConnections(
            engine, ping_idle=_PING_IDLE if self.postgres else None
        )

    @contextmanager
    def transaction(self) -> Iterator[RawTransaction]:
        """One transaction on a reused driver connection: commits on success.

        For the hot paths, where SQLAlchemy's cost per statement (0.2 to 0.4 ms, against
        about 0.02 ms for the driver) was most of each step's work. The connections are
        set up as the engine's (the same pragmas and SQLite write turn as sessions), but
        kept apart from its pool, whose checkout and return cost more than a short
        transaction itself. Errors come as SQLAlchemy's.
        """
        conn = self._connections.take()
        reuse = True  # unless the driver failed: then the connection may be broken
        tx = RawTransaction(conn, self)
        try:
            try:
                yield tx
                conn.commit()
                tx.committed = True
            except BaseException:
                conn.rollback()
                raise
            finally:
                tx.ended()
        except self._driver.IntegrityError as exc:
            raise IntegrityError("transaction", None, exc) from None
        except self._driver.OperationalError as exc:
            reuse = False
            raise OperationalError("transaction", None, exc) from None
        except self._driver.Error:
            reuse = False
            raise
        finally:
            self._connections.give_back(conn, reuse=reuse)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def migrate(self) -> None:
        """Apply every pending migration (idempotent; serialised across replicas)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        """Release every pooled connection."""
        self._connections.close()
        self.engine.dispose()


# A PostgreSQL connection idle this long is checked before use (SQLAlchemy's pre-ping
# checked on every checkout: a round trip per transaction).
_PING_IDLE = 10.0


class _DriverConnections:
    """Driver connections for ``Database.transaction``, reused most recent first.

    Each is made by the engine (so its connect events, pragmas and SQLite connection class
    apply) and detached from the engine's pool. Up to ``keep`` idle ones are kept; a
    connection that failed for any reason other than a refused statement is closed, not
    reused, and a PostgreSQL one idle for ``ping_idle`` seconds is checked first, so a
    restarted server costs at most the transaction that met the broken connection.
    """

    def __init__(self, engine: Engine, *, ping_idle: float | None, keep: int = 16) -> None:
        self._engine = engine
        self._ping_idle = ping_idle
        self._keep = keep
        self._idle: list[tuple[Any, float]] = []
        self._lock = threading.Lock()

    def take(self) -> Any:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if self._ping_idle is None or time.monotonic() - since < self._ping_idle:
                return conn
            if self._alive(conn):
                return conn
            self._close(conn)
        fairy = self._engine.raw_connection()
        conn = fairy.dbapi_connection
        fairy.detach()  # ours now: closed by us, never returned to the engine's pool
        return conn

    def give_back(self, conn: Any, *, reuse: bool) -> None:
        if reuse and not getattr(conn, "closed", False):
            with self._lock:
                if len(self._idle) < self._keep:
                    self._idle.append((conn, time.monotonic()))
                    return
        self._close(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            self._close(conn)

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
            conn.rollback()
        except Exception:
            return False
        return True

    @staticmethod
    def _close(conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()


class RawTransaction:
    """Statements of one transaction, written with ``?`` markers for either database."""

    def __init__(self, conn: Any, db: Database) -> None:
        self._conn = conn  # the driver's connection
        self._postgres = db.postgres
        self._turn = db._write_lock
        self._on_end: list[Callable[[bool], None]] = []
        self.committed = False

    def claim_write(self) -> None:
        """Take this process's SQLite write turn now, before the first write needs it.

        For a writer that must hold the turn before a lock of its own (the audit log's
        sequence): every writer takes the turn first, so none waits in the other order.
        """
        if self._turn is not None:
            self._turn.before(self._conn, "INSERT")

    def on_end(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(committed)`` once the transaction has committed or rolled back."""
        self._on_end.append(callback)

    def ended(self) -> None:
        callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            try:
                callback(self.committed)
            except Exception:  # a hook must not hide the transaction's own outcome
                log.exception("a transaction end hook failed")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the cursor, for results."""
        if self._turn is not None:
            self._turn.before(self._conn, sql)
        cur = self._conn.cursor()
        cur.execute(sql.replace("?", "%s") if self._postgres else sql, tuple(params))
        return cur

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each of ``rows``."""
        if not rows:
            return
        if self._turn is not None:
            self._turn.before(self._conn, sql)
        cur = self._conn.cursor()
        try:
            cur.executemany(sql.replace("?", "%s") if self._postgres else sql, rows)
        finally:
            cur.close()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row, or None."""
        cur = self.execute(sql, params)
        try:
            row = cur.fetchone()
        finally:
            cur.close()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row."""
        cur = self.execute(sql, params)
        try:
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers proceed during a write; NORMAL sync is durable at each checkpoint
    # boundary in WAL mode, FULL makes every commit durable, which the evidence log needs.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    # 32 MiB of page cache per connection keeps the upper Merkle levels hot for proofs.
    cur.execute("PRAGMA cache_size=-32768")
    cur.close()


class _SqliteWriteLock:
    """Writers of one SQLite file in this process take turns on a lock, not SQLite's sleep.

    A write transaction holds SQLite's RESERVED lock; another writer that wants it gets
    SQLITE_BUSY, and the busy handler sleeps 1, 2, 5, 10 ... ms before retrying. Under a few
    concurrent negotiations those sleeps were most of each step's time. Python's sqlite3
    begins a transaction at the first INSERT/UPDATE/DELETE, so taking this lock just before
    that statement, and releasing it once the commit or rollback is done, orders the same
    writers the same way but wakes the next one the moment SQLite's lock is free. The
    release is hooked on the driver's connection itself: SQLAlchemy's commit event comes
    before the commit, and a writer woken then would meet the lock still held. Readers
    never take the turn (WAL).
    """

    _WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    def connection_class(self) -> type[sqlite3.Connection]:
        """The driver connection class that gives the turn back after commit or rollback."""
        turn = self

        class TurnTakingConnection(sqlite3.Connection):
            holds_turn = False

            def commit(self) -> None:
                try:
                    super().commit()
                finally:
                    turn._end(self)

            def rollback(self) -> None:
                try:
                    super().rollback()
                finally:
                    turn._end(self)

            def close(self) -> None:  # closing mid-transaction rolls back
                try:
                    super().close()
                finally:
                    turn._end(self)

        return TurnTakingConnection

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before_execute)

    def _before_execute(self, _conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        self.before(cursor.connection, statement)

    def before(self, dbapi: Any, statement: str) -> None:
        """Take the turn for ``dbapi`` if ``statement`` is its transaction's first write."""
        if dbapi.holds_turn or not statement.lstrip()[:7].upper().startswith(self._WRITES):
            return
        if not self._lock.acquire(timeout=self._timeout):
            raise OperationalError(statement, None, Exception("database is locked"))
        dbapi.holds_turn = True

    def _end(self, dbapi: Any) -> None:
        if dbapi.holds_turn:
            dbapi.holds_turn = False
            self._lock.release()


def _engine(url: str) -> tuple[Engine, _SqliteWriteLock | None]:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database.url {url!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            # Each connection would get its own empty database, and the state is gone on exit.
            raise ConfigError(
                f"database.url {url!r} is an in-memory database; "
                "a connector keeps its state in a file (sqlite:///path/to/tds.db)"
            )
        db_path = Path(parsed.database)
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the database directory {db_path.parent}: {exc}"
            ) from None
        write_lock = _SqliteWriteLock(timeout=30)
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": 30,
                "factory": write_lock.connection_class(),
            },
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        write_lock.attach(engine)
        return engine, write_lock
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10), None
    raise ConfigError(f"database.url uses {backend!r}; tds supports sqlite and postgresql")


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Open the database at ``url`` and bring its schema up to date."""
    db = Database(*_engine(url))
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if migrate:
            db.migrate()
    except OperationalError as exc:
        db.close()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise Unavailable(f"cannot open database {parsed_safe(url)}: {reason}") from None
    except SQLAlchemyError as exc:
        db.close()
        raise Unavailable(f"database {parsed_safe(url)} failed: {exc.__class__.__name__}") from None
    return db


def parsed_safe(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid url>"
