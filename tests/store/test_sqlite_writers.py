"""Writers of one SQLite file in one process take turns without SQLite's sleeping retries."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

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
