"""Database engine and sessions: SQLite by default (WAL), PostgreSQL by URL.

Schema changes are Alembic migrations under ``connector/store/migrations``; ``open_database``
applies them before anything else touches the database.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlmodel import Session, create_engine

from connector.errors import ConfigError, InvalidRequest, Unavailable

__all__ = ["Database", "RawTransaction", "open_database", "refuse_nul_parameters"]

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
    def transaction(self, *, durable: bool = True) -> Iterator[RawTransaction]:
        """One transaction on a reused driver connection: commits on success.

        With ``durable=False`` the commit is atomic and seen by every reader, and on SQLite
        safe from this process dying (the WAL is written), but not waited for on the disk:
        it is there once any later synced commit is (SQLite syncs its WAL, PostgreSQL
        flushes its WAL, in commit order), and a reader of this process still waits for
        it. Only for a step nobody outside hears of before the same caller's next synced
        commit: the ε reserved before a computation, whose answer leaves after the
        receipt's commit (one sync for both, not two).

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
                if not durable and self.postgres:
                    tx.execute("SET LOCAL synchronous_commit TO OFF").close()
                yield tx
                conn.commit()
                tx.committed = True
            except BaseException:
                conn.rollback()
                raise
            finally:
                tx.ended()
                # After the end hooks (which release the audit log's sequence): a sync
                # waited for under no lock is one that later commits can share.
                if self._write_lock is not None and durable:
                    self._write_lock.sync.wait(conn.needs_sync)
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
        """Apply every pending migration (idempotent; serialised across replicas).

        A database already at the newest revision (a connector's every start but its
        first) is left as it is without importing Alembic: it and what it imports (Mako,
        Pygments, every dialect's DDL) are about 9.5 MB that a running connector keeps and
        never uses again, and its providers run near a 200 MB limit.
        """
        if self.revision() == head_revision():
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The schema revision the database is at (``None``: none yet, or several)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            found = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        return str(found[0][0]) if len(found) == 1 else None

    def close(self) -> None:
        """Release every pooled connection."""
        self._connections.close()
        self.engine.dispose()
        if self._write_lock is not None:
            self._write_lock.sync.close()


@functools.cache
def head_revision() -> str:
    """The newest migration's revision, read from the migration files' ``revision`` and
    ``down_revision`` assignments (Alembic's own reading of them is checked to agree by
    ``tests/store/test_migrations.py``)."""
    revisions: dict[str, str | None] = {}
    for path in sorted((_MIGRATIONS / "versions").glob("*.py")):
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("revision", "down_revision")
            ):
                values[node.targets[0].id] = ast.literal_eval(node.value)
        if "revision" in values:
            revisions[values["revision"]] = values.get("down_revision")
    heads = set(revisions) - set(revisions.values())
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads, not one: {sorted(heads)}")
    return heads.pop()


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
        new: Any = fairy.dbapi_connection
        fairy.detach()  # ours now: closed by us, never returned to the engine's pool
        if hasattr(new, "sync_later"):
            new.sync_later = True  # Database.transaction waits for the sync itself
        return new

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
        refuse_nul_parameters(params)
        if self._turn is not None:
            self._turn.before(self._conn, sql)
        cur = self._conn.cursor()
        cur.execute(sql.replace("?", "%s") if self._postgres else sql, tuple(params))
        return cur

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each of ``rows``."""
        if not rows:
            return
        for row in rows:
            refuse_nul_parameters(row)
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


def refuse_nul_parameters(params: Any) -> None:
    """Refuse (``InvalidRequest``) text with a NUL character before any database sees it.

    PostgreSQL cannot store NUL in text and its driver raises an error that would surface
    as an internal one; SQLite stores it and a later reader chokes on it. No tds value
    holds one, so every store refuses it alike, whichever caller (gRPC, CLI, library)
    passed it: ``params`` is a sequence, a mapping, or a list of either.
    """
    values: Any = params.values() if isinstance(params, dict) else params
    for value in values:
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidRequest(
                    "a value contains a NUL character (0x00), which cannot be stored: "
                    "remove it and retry"
                )
        elif isinstance(value, (dict, list, tuple)):
            refuse_nul_parameters(value)


def _refuse_nul_statement(
    _conn: Any, _cursor: Any, _statement: str, parameters: Any, *_args: Any
) -> None:
    if parameters:
        refuse_nul_parameters(parameters)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers proceed during a write. With NORMAL sync a commit is atomic but
    # durable only at the next sync of the WAL, which _WalSync does for every commit
    # before its transaction (or any that could have read it) returns.
    cur.execute("PRAGMA journal_mode=WAL")
    # Commits write the WAL; _WalSync makes them durable before anyone hears of them.
    cur.execute("PRAGMA synchronous=NORMAL")
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

    def __init__(self, timeout: float, sync: _WalSync) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout
        self.sync = sync

    def connection_class(self) -> type[sqlite3.Connection]:
        """The driver connection class that gives the turn back after commit or rollback,
        and makes what it wrote, or could have read, durable before it returns."""
        turn, sync = self, self.sync

        class TurnTakingConnection(sqlite3.Connection):
            holds_turn = False
            # Set on the connections of ``Database.transaction``, which wait for the sync
            # themselves, once their end hooks have run.
            sync_later = False
            needs_sync = 0
            """The commit count this connection's last transaction must see synced."""

            def commit(self) -> None:
                if self.holds_turn:
                    seq = sync.begin()
                    try:
                        super().commit()
                    finally:
                        sync.written(seq)
                        turn._end(self)
                else:  # a reader: what it read may be a commit not yet synced
                    seq = sync.begun
                    try:
                        super().commit()
                    finally:
                        turn._end(self)
                self._synced_by_now(seq)

            def rollback(self) -> None:
                seq = sync.begun
                try:
                    super().rollback()
                finally:
                    turn._end(self)
                self._synced_by_now(seq)

            def _synced_by_now(self, seq: int) -> None:
                self.needs_sync = seq
                if not self.sync_later:
                    sync.wait(seq)

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


class _WalSync:
    """Group commit for one SQLite file: a commit is made durable by a sync of the WAL
    that every commit written before it began shares.

    With ``synchronous=FULL`` SQLite syncs the WAL inside each commit, while the writer
    holds the write turn (and, for an audit append, the log's sequence): under a few
    concurrent negotiations each commit waited for every earlier commit's fsync, and on a
    disk whose fsync takes 1.5 ms that was the limit (139 negotiations/s against 187 to 201
    with this, ``bench/negotiation.py``). Here SQLite only writes the WAL at commit (still
    atomic after a crash), and the committer then waits for a sync, outside every lock;
    the commits that queued behind one sync share the next.

    Nothing is heard of before it is durable, as with FULL: every transaction of this
    process, reading or writing, returns only once every commit it could have seen is
    synced. ``begun`` counts commits started (a reader can see one before its writer's
    commit call returns), ``written`` those whose commit call has returned; commits are
    numbered under the write turn, so in order. A failed sync leaves what was committed in
    an unknown state on disk: the database then refuses all further work until restarted
    (as PostgreSQL stops on a failed fsync), rather than report commits it cannot vouch for.
    """

    def __init__(self, wal: Path) -> None:
        self._wal = wal
        self._cond = threading.Condition(threading.Lock())
        self.begun = 0
        self._written = 0
        self._synced = 0
        self._syncing = False
        self._failed: str | None = None
        self._fd: int | None = None
        self.syncs = 0
        """Syncs done (for tests and benchmarks: how many commits each covered)."""

    def begin(self) -> int:
        """Number a commit about to start (under the write turn)."""
        self.begun += 1
        return self.begun

    def written(self, seq: int) -> None:
        """Commit ``seq`` has returned, committed or not (under the write turn)."""
        with self._cond:
            self._written = seq
            self._cond.notify_all()

    def wait(self, seq: int) -> None:
        """Return once commits up to ``seq`` are durable; ``Unavailable`` if they cannot be."""
        if self._synced >= seq and self._failed is None:
            return
        with self._cond:
            while self._synced < seq or self._failed is not None:
                if self._failed is not None:
                    raise Unavailable(self._failed)
                if self._syncing or self._written < seq:
                    self._cond.wait()  # a sync in progress, or a commit still being written
                    continue
                self._syncing, target = True, self._written
                self._cond.release()
                try:
                    self._fdatasync()
                except OSError as exc:
                    self._failed = (
                        f"the database could not make its commits durable (sync of "
                        f"{self._wal} failed: {exc.strerror or exc}); the connector refuses "
                        "further work: check the disk, then restart it"
                    )
                    log.critical("database sync failed", extra={"reason": str(exc)})
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                if self._failed is None:
                    self._synced = max(self._synced, target)

    def _fdatasync(self) -> None:
        # The WAL keeps its inode while any connection is open (SQLite rewinds it, and
        # removes it only when the last one closes): reopen only if it was replaced.
        try:
            current = os.stat(self._wal).st_ino
        except FileNotFoundError:
            return  # no WAL: every commit is in the database file, synced by the checkpoint
        if self._fd is not None and os.fstat(self._fd).st_ino != current:
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            self._fd = os.open(self._wal, os.O_RDONLY)
        os.fdatasync(self._fd)
        self.syncs += 1

    def close(self) -> None:
        with self._cond:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


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
        write_lock = _SqliteWriteLock(
            timeout=30, sync=_WalSync(db_path.with_name(db_path.name + "-wal"))
        )
        engine = create_engine(
            url,
            connect_args={
                "check_same_thread": False,
                "timeout": 30,
                "factory": write_lock.connection_class(),
            },
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "before_cursor_execute", _refuse_nul_statement)
        write_lock.attach(engine)
        return engine, write_lock
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)
        event.listen(engine, "before_cursor_execute", _refuse_nul_statement)
        return engine, None
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
