"""SQLite group commit: commits share syncs of the WAL, and nothing is heard of (by its
writer or by any reader of this process) before a sync covering it has returned."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from connector.errors import Unavailable
from connector.store.database import Database, open_database


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 's.db'}", migrate=False)
    with database.transaction() as tx:
        tx.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)").close()
    yield database
    database.close()


def syncs(db: Database) -> int:
    assert db._write_lock is not None
    return db._write_lock.sync.syncs


class HeldSync:
    """``os.fdatasync`` that blocks until released, counting calls."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self._real: Callable[[int], None] = os.fdatasync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(10), "the test never released the sync"
        self._real(fd)


def test_a_commit_returns_only_after_a_sync_that_covers_it(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldSync()
    monkeypatch.setattr(os, "fdatasync", held)
    returned = threading.Event()

    def write() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO t VALUES ('a', 1)").close()
        returned.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert held.entered.wait(5)
    # Committed (another connection can read it) but not yet synced: not acknowledged.
    assert not returned.wait(0.2)
    held.release.set()
    assert returned.wait(5)
    writer.join()


@pytest.mark.parametrize("how", ["transaction", "session", "connection"])
def test_a_reader_that_saw_a_commit_returns_only_once_it_is_synced(
    db: Database, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    held = HeldSync()
    monkeypatch.setattr(os, "fdatasync", held)
    writer = threading.Thread(target=lambda: insert(db, "b"))
    writer.start()
    assert held.entered.wait(5)  # b is committed; its sync is held
    seen: list[object] = []
    done = threading.Event()

    def read() -> None:
        if how == "transaction":
            with db.transaction() as tx:
                seen.append(tx.one("SELECT v FROM t WHERE k = 'b'"))
        elif how == "session":
            with db.session() as s:
                seen.append(s.execute(text("SELECT v FROM t WHERE k = 'b'")).one_or_none())
        else:
            with db.engine.connect() as conn:
                seen.append(conn.execute(text("SELECT v FROM t WHERE k = 'b'")).one_or_none())
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    assert seen and seen[0] is not None, "the reader should see the committed row"
    assert not done.is_set(), "the reader answered before what it read was durable"
    held.release.set()
    assert done.wait(5)
    reader.join()
    writer.join()


def insert(db: Database, key: str) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (?, 1)", (key,)).close()


def test_concurrent_commits_share_syncs(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdatasync

    def slow(fd: int) -> None:  # a disk whose sync takes 5 ms
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    before = syncs(db)
    threads = [
        threading.Thread(target=lambda w=w: [insert(db, f"{w}-{i}") for i in range(25)])
        for w in range(8)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    with db.transaction() as tx:
        assert tx.one("SELECT count(*) FROM t") == (200,)
    shared = syncs(db) - before
    assert 0 < shared < 200 * 0.7, f"{shared} syncs for 200 commits: commits did not share"


def test_a_failed_sync_stops_the_database_instead_of_vouching_for_commits(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(Unavailable, match="could not make its commits durable"):
        insert(db, "c")
    monkeypatch.undo()  # even with the disk back, the connector must be restarted
    with pytest.raises(Unavailable, match="restart"):
        insert(db, "d")
    with pytest.raises(Unavailable), db.session() as s:
        s.execute(text("SELECT count(*) FROM t")).one()


def test_a_replaced_wal_is_synced_not_the_old_one(db: Database, tmp_path: Path) -> None:
    insert(db, "e")
    wal = tmp_path / "s.db-wal"
    assert wal.exists()
    # Every connection closed: SQLite checkpoints and removes the WAL; the next writer
    # makes a new one, which is the one to sync.
    db._connections.close()
    db.engine.dispose()
    assert not wal.exists()
    insert(db, "f")
    assert db._write_lock is not None
    fd = db._write_lock.sync._fd
    assert fd is not None and os.fstat(fd).st_ino == os.stat(wal).st_ino
    assert not os.readlink(f"/proc/self/fd/{fd}").endswith("(deleted)")
