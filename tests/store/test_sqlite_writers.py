"""Writers of one SQLite file in one process take turns without SQLite's sleeping retries."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text

from connector.store.database import open_database


def test_concurrent_writers_all_land_and_a_failed_writer_lets_go(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'w.db'}", migrate=False)
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (worker INTEGER, n INTEGER)"))
    errors: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            for n in range(40):
                with db.session() as s:
                    s.execute(text("SELECT count(*) FROM t")).one()
                    s.execute(text("INSERT INTO t VALUES (:w, :n)"), {"w": worker, "n": n})
                    s.execute(text("UPDATE t SET n = n WHERE worker = :w"), {"w": worker})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors and not any(th.is_alive() for th in threads)
    with db.session() as s:
        assert s.execute(text("SELECT count(*) FROM t")).scalar_one() == 8 * 40

    # A transaction that fails after writing rolls back and releases the lock ...
    with pytest.raises(RuntimeError), db.session() as s:
        s.execute(text("INSERT INTO t VALUES (99, 0)"))
        raise RuntimeError("boom")
    # ... and so does a connection closed without commit.
    conn = db.engine.connect()
    conn.execute(text("INSERT INTO t VALUES (98, 0)"))
    conn.close()
    began = time.monotonic()
    with db.session() as s:
        s.execute(text("INSERT INTO t VALUES (97, 0)"))
    assert time.monotonic() - began < 5, "the next writer waited for a lock nobody held"
    with db.session() as s:
        workers = {r[0] for r in s.execute(text("SELECT DISTINCT worker FROM t")).all()}
    assert 97 in workers and 98 not in workers and 99 not in workers
    db.close()


def test_the_audit_log_writer_waits_its_turn_instead_of_sleeping(tmp_path: Path) -> None:
    """Appends while a session writes land right after its commit, and busy never shows.

    With SQLite's busy handler (its sleeps grow to 100 ms) the append would still land,
    late; with SQLite's busy handler off, as here, it would fail outright. Taking the
    process's write turn, it waits exactly as long as the session holds it.
    """
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from connector.audit.log import TransparencyLog
    from connector.clock import SystemClock

    db = open_database(f"sqlite:///{tmp_path / 'l.db'}")
    # SQLite's busy handler off on every connection: a writer meeting "busy" fails at once.
    event.listen(db.engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout=0"))
    db.engine.dispose()
    log = TransparencyLog(
        db,
        origin="test/log",
        actor="a",
        signing_key=ed25519.Ed25519PrivateKey.generate(),
        clock=SystemClock(),
    )
    log.record("warm", parties=[], data={})
    appended: list[int] = []
    failed: list[BaseException] = []

    def append() -> None:
        try:
            appended.append(log.record("during", parties=[], data={}))
        except BaseException as exc:  # pragma: no cover - reported below
            failed.append(exc)

    with db.session() as s:
        s.execute(text("INSERT INTO inbox (message_id, sender, received_ms) VALUES ('m', 'b', 0)"))
        th = threading.Thread(target=append)
        th.start()
        th.join(0.3)
        assert th.is_alive() and not appended and not failed  # waiting for its turn
    th.join(10)
    assert not failed and appended == [1] and log.size == 2
    log.close()
    db.close()
