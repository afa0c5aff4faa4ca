"""The transparency log on SQLite and PostgreSQL: appends, proofs, restart, failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import text

from connector.audit import merkle
from connector.audit.checkpoint import open_checkpoint
from connector.audit.log import TransparencyLog
from connector.clock import FixedClock
from connector.errors import InvalidRequest, Unavailable
from connector.store.database import Database, open_database

KEY = ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = open_database(database_url)
    yield database
    database.close()


def new_log(db: Database) -> TransparencyLog:
    return TransparencyLog(
        db, origin="tds/city/a", actor="a", signing_key=KEY, clock=FixedClock(1_800_000_000)
    )


@pytest.fixture
def tlog(db: Database) -> Iterator[TransparencyLog]:
    lg = new_log(db)
    yield lg
    lg.close()


def test_appends_proofs_and_checkpoints(tlog: TransparencyLog) -> None:
    for i in range(21):
        assert tlog.record("test", parties=["b"], data={"i": i}) == i
    size, root = tlog.root()
    bodies = tlog.entries(0, size)
    hashes = [merkle.leaf_hash(b) for _, b in bodies]
    assert size == 21 and merkle.root(hashes) == root == tlog.root_at(size)
    for i in range(size):
        merkle.verify_inclusion(hashes[i], i, size, tlog.inclusion_proof(i, size), root)
    for m in range(1, size + 1):
        merkle.verify_consistency(
            m, size, tlog.consistency_proof(m, size), merkle.root(hashes[:m]), root
        )
    stored = tlog.checkpoint()
    cp, _ = open_checkpoint(stored.note, tlog.verifier)
    assert (cp.size, cp.root) == (21, root)
    assert tlog.checkpoint().seq == stored.seq  # unchanged log: same checkpoint


def test_entries_name_their_parties_and_index(tlog: TransparencyLog) -> None:
    tlog.record("x", parties=["b"], data={})
    tlog.record("x", parties=["c"], data={})
    assert [i for i, _ in tlog.entries(0, 2, party="b")] == [0]
    assert tlog.entry_parties(1) == ("a", "c")
    assert b'"index":1' in tlog.entries(1, 2)[0][1]


def test_restart_resumes_the_same_tree(db: Database) -> None:
    lg = new_log(db)
    for i in range(13):
        lg.record("t", parties=[], data={"i": i})
    before = lg.root()
    lg.close()
    again = new_log(db)
    try:
        assert again.root() == before
        again.record("t", parties=[], data={"i": 13})
        hashes = [merkle.leaf_hash(b) for _, b in again.entries(0, 14)]
        assert again.root() == (14, merkle.root(hashes))
    finally:
        again.close()


def test_concurrent_appends_keep_each_request_contiguous(tlog: TransparencyLog) -> None:
    def writer(w: int) -> None:
        for n in range(20):
            batch = [tlog.entry("t", parties=[], data={"w": w, "n": n, "k": k}) for k in range(3)]
            indices = tlog.append_many(batch)
            assert indices == list(range(indices[0], indices[0] + 3))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tlog.size == 6 * 20 * 3
    hashes = [merkle.leaf_hash(b) for _, b in tlog.entries(0, tlog.size)]
    assert tlog.root() == (tlog.size, merkle.root(hashes))


def test_unwritable_log_fails_the_append_and_keeps_state(
    db: Database, tlog: TransparencyLog
) -> None:
    tlog.record("t", parties=[], data={})
    before = tlog.root()
    with db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE log_node RENAME TO log_node_gone"))
    try:
        with pytest.raises(Unavailable, match="could not be written"):
            tlog.record("t", parties=[], data={})
        assert tlog.root() == before
        assert len(tlog.entries(0, 10)) == 1  # the entry rolled back with its nodes
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE log_node_gone RENAME TO log_node"))
    assert tlog.record("t", parties=[], data={}) == 1


def test_bad_requests_are_refused(tlog: TransparencyLog) -> None:
    tlog.record("t", parties=[], data={})
    with pytest.raises(InvalidRequest):
        tlog.inclusion_proof(1, 1)
    with pytest.raises(InvalidRequest):
        tlog.consistency_proof(0, 1)
    with pytest.raises(InvalidRequest):
        tlog.consistency_proof(1, 2)
    with pytest.raises(InvalidRequest):
        tlog.record("t", parties=[], data={"big": "x" * 70_000})
    with pytest.raises(InvalidRequest):
        tlog.record("t", parties=[], data={"huge": 2**60})


def test_spliced_entries_are_canonical(tlog: TransparencyLog) -> None:
    from connector.audit.canonical import canonical_json, parse_canonical

    entry = tlog.entry("k", parties=["b"], data={"é": [1, "x"], "zz": {"a": None}})
    for index in (0, 7, 2**40):
        body = entry.body(index)
        value = parse_canonical(body)
        assert value["index"] == index and canonical_json(value) == body
