"""Database.transaction: the driver-level path commits, rolls back and reports errors as
sessions do, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from connector.store.database import Database, RawTransaction, open_database


def remember(tx: RawTransaction, message_id: str, sender: str, at: int) -> None:
    tx.execute(
        "INSERT INTO inbox (message_id, sender, received_ms) VALUES (?, ?, ?)",
        (message_id, sender, at),
    ).close()


def inbox(db: Database) -> list[tuple[object, ...]]:
    with db.transaction() as tx:
        return tx.all("SELECT message_id, sender FROM inbox ORDER BY message_id")


def test_commits_on_success_and_rolls_back_on_error(db: Database) -> None:
    with db.transaction() as tx:
        remember(tx, "m1", "a", 1)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        remember(tx, "m2", "a", 2)
        raise RuntimeError("the caller changed its mind")
    assert inbox(db) == [("m1", "a")]


def test_a_constraint_violation_is_sqlalchemys_and_changes_nothing(db: Database) -> None:
    with db.transaction() as tx:
        remember(tx, "m1", "a", 1)
    with pytest.raises(IntegrityError), db.transaction() as tx:
        remember(tx, "m3", "b", 3)
        remember(tx, "m1", "b", 4)
    assert inbox(db) == [("m1", "a")]


def test_failed_writers_give_their_turn_back(db: Database) -> None:
    """After a failed and a rolled-back write, other writers still get through at once."""
    with pytest.raises(IntegrityError), db.transaction() as tx:
        remember(tx, "x", "a", 1)
        remember(tx, "x", "a", 1)
    done = threading.Event()

    def other_writer() -> None:
        with db.session() as s:
            s.execute(
                text("INSERT INTO inbox (message_id, sender, received_ms) VALUES ('y', 'b', 2)")
            )
        done.set()

    th = threading.Thread(target=other_writer)
    th.start()
    assert done.wait(5), "the next writer waited for a turn nobody held"
    th.join()
    assert inbox(db) == [("y", "b")]


def backend_pid(db: Database) -> int:
    with db.transaction() as tx:
        row = tx.one("SELECT pg_backend_pid()")
    assert row is not None
    return int(row[0])


def test_a_refused_statement_or_a_callers_error_keeps_the_connection(db: Database) -> None:
    """Only a driver failure retires a connection: refusals are routine on the hot paths."""
    with db.transaction() as tx:
        first = tx._conn
    with pytest.raises(IntegrityError), db.transaction() as tx:
        remember(tx, "x", "a", 1)
        remember(tx, "x", "a", 1)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        raise RuntimeError("refused by the caller")
    with db.transaction() as tx:
        assert tx._conn is first
        assert tx.all("SELECT message_id FROM inbox") == []


def server_drops_the_connection(db: Database, url: str) -> int:
    """Terminate, from the server's side, the connection ``db`` will use next; its pid."""
    import psycopg

    pid = backend_pid(db)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return pid


@pytest.mark.postgres
def test_a_connection_the_server_dropped_fails_one_transaction_then_is_replaced(
    postgres_url: str,
) -> None:
    from sqlalchemy.exc import OperationalError

    db = open_database(postgres_url)
    try:
        pid = server_drops_the_connection(db, postgres_url)
        with pytest.raises(OperationalError), db.transaction() as tx:
            remember(tx, "lost", "a", 1)
        with db.transaction() as tx:
            remember(tx, "m1", "a", 2)
        assert inbox(db) == [("m1", "a")]
        assert backend_pid(db) != pid
    finally:
        db.close()


@pytest.mark.postgres
def test_an_idle_connection_is_checked_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a server restart, a connection idle past the check costs no transaction."""

    db = open_database(postgres_url)
    try:
        server_drops_the_connection(db, postgres_url)
        monkeypatch.setattr(db._connections, "_ping_idle", 0.0)
        with db.transaction() as tx:
            remember(tx, "m1", "a", 1)
        assert inbox(db) == [("m1", "a")]
    finally:
        db.close()


def test_an_in_memory_database_is_refused() -> None:
    from connector.errors import ConfigError

    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="in-memory"):
            open_database(url)
