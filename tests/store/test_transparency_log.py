"""The transparency log on SQLite and PostgreSQL: appends, proofs, restart, failure."""

from __future__ import annotations

import json
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
from connector.store.database import Database, RawTransaction, open_database

KEY = ed25519.Ed25519PrivateKey.generate()


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


def whole_tree_holds(tlog: TransparencyLog) -> None:
    hashes = [merkle.leaf_hash(b) for _, b in tlog.entries(0, tlog.size)]
    assert tlog.root() == (tlog.size, merkle.root(hashes))


def remember(tx: RawTransaction, message_id: str) -> None:
    tx.execute(
        "INSERT INTO inbox (message_id, sender, received_ms) VALUES (?, 'a', 1)", (message_id,)
    ).close()


def test_entries_appended_in_a_transaction_commit_with_it(
    db: Database, tlog: TransparencyLog
) -> None:
    tlog.record("t", parties=[], data={"n": 0})
    with db.transaction() as tx:
        remember(tx, "m1")
        assert tlog.record_in(tx, [("t", ["b"], {"n": 1}), ("t", [], {"n": 2})]) == [1, 2]
        assert tlog.size == 1  # not before the commit
    assert tlog.size == 3
    assert [json.loads(body)["data"]["n"] for _, body in tlog.entries(0, 3)] == [0, 1, 2]
    whole_tree_holds(tlog)


def test_entries_appended_in_a_rolled_back_transaction_vanish_with_it(
    db: Database, tlog: TransparencyLog
) -> None:
    tlog.record("t", parties=[], data={"n": 0})
    root = tlog.root()
    with pytest.raises(RuntimeError), db.transaction() as tx:
        remember(tx, "m1")
        tlog.record_in(tx, [("t", [], {"n": "gone"})])
        raise RuntimeError("the state change was refused")
    assert tlog.root() == root and len(tlog.entries(0, 5)) == 1
    with db.transaction() as tx:
        assert tx.all("SELECT message_id FROM inbox") == []
    assert tlog.record("t", parties=[], data={"n": 1}) == 1  # the sequence was given back
    whole_tree_holds(tlog)


def test_entries_prepared_before_a_transaction_are_appended_in_it(
    db: Database, tlog: TransparencyLog
) -> None:
    """``prepare`` builds the entries at once and appends them when its function is
    called within a transaction; a refused entry is refused before anything is written."""
    append = tlog.prepare([("t", ["b"], {"n": 1})])
    assert tlog.size == 0
    with db.transaction() as tx:
        remember(tx, "m1")
        assert append(tx) == [0]
    assert json.loads(tlog.entries(0, 1)[0][1])["data"] == {"n": 1}
    with pytest.raises(InvalidRequest):
        tlog.prepare([("", [], {})])  # no kind: refused at once, no transaction involved
    whole_tree_holds(tlog)


def test_one_append_per_transaction(db: Database, tlog: TransparencyLog) -> None:
    with pytest.raises(RuntimeError, match="one audit log append"), db.transaction() as tx:
        tlog.record_in(tx, [("t", [], {})])
        tlog.record_in(tx, [("t", [], {})])
    assert tlog.size == 0
    assert tlog.record("t", parties=[], data={}) == 0


def test_appends_in_transactions_and_through_the_writer_interleave_safely(
    db: Database, tlog: TransparencyLog
) -> None:
    """State writers that log in their own transaction, beside the group-commit writer.

    A transaction that already holds the SQLite write turn appends to the log while the
    writer thread waits for the turn: taken in one order, nothing deadlocks, and every
    index is used once.
    """
    errors: list[BaseException] = []

    def in_transactions(w: int) -> None:
        try:
            for n in range(15):
                with db.transaction() as tx:
                    remember(tx, f"{w}-{n}")  # takes the write turn first
                    first = tlog.record_in(
                        tx, [("s", [], {"w": w, "n": n, "k": k}) for k in (0, 1)]
                    )
                    assert first[1] == first[0] + 1
        except BaseException as exc:
            errors.append(exc)

    def through_writer(w: int) -> None:
        try:
            for n in range(15):
                tlog.record("t", parties=[], data={"w": w, "n": n})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=in_transactions, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=through_writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "appends deadlocked"
    assert errors == []
    assert tlog.size == 4 * 15 * 2 + 4 * 15
    indices = [json.loads(body)["index"] for _, body in tlog.entries(0, tlog.size)]
    assert indices == list(range(tlog.size))
    whole_tree_holds(tlog)


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


@pytest.mark.postgres
def test_two_replicas_never_sign_a_shrinking_checkpoint(postgres_url: str) -> None:
    """Issue 18, finding 2: each replica signed checkpoints over its own tree in memory.

    Two replicas of one connector (two logs on one PostgreSQL database: replicas share
    PostgreSQL, never SQLite) append and sign
    concurrently; then one appends while the other, which has not appended since, signs.
    Every checkpoint must commit to the tree as committed, never fewer entries than the
    one signed before it, and either replica must prove each checkpoint it may serve.
    """
    dbs = [open_database(postgres_url), open_database(postgres_url)]
    logs = [new_log(d) for d in dbs]
    errors: list[BaseException] = []

    def work(lg: TransparencyLog, w: int) -> None:
        try:
            for n in range(12):
                lg.record("t", parties=[], data={"w": w, "n": n})
                lg.checkpoint()
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(logs[w % 2], w)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        logs[0].record("t", parties=[], data={"last": True})
        logs[0].checkpoint()
        logs[1].checkpoint()  # the replica that did not append signs next
        size = logs[0].size
        assert size == logs[1].size == 4 * 12 + 1
        hashes = [merkle.leaf_hash(b) for _, b in logs[1].entries(0, size)]
        stored = logs[1].checkpoints()
        sizes = [c.checkpoint.size for c in stored]
        assert sizes == sorted(sizes) and sizes[-1] == size, sizes
        for c in stored:
            cp, _ = open_checkpoint(c.note, logs[0].verifier)
            assert cp.root == merkle.root(hashes[: cp.size])
            for lg in logs:  # either replica serves proofs for any stored checkpoint
                merkle.verify_consistency(
                    cp.size, size, lg.consistency_proof(cp.size, size), cp.root, merkle.root(hashes)
                )
                proof = lg.inclusion_proof(cp.size - 1, cp.size)
                merkle.verify_inclusion(hashes[cp.size - 1], cp.size - 1, cp.size, proof, cp.root)
        assert logs[0].root() == logs[1].root() == (size, merkle.root(hashes))
    finally:
        for lg in logs:
            lg.close()
        for d in dbs:
            d.close()


def test_no_checkpoint_is_signed_below_one_already_signed(
    db: Database, tlog: TransparencyLog
) -> None:
    """A database restored from before the last checkpoint: sign nothing smaller."""
    for i in range(5):
        tlog.record("t", parties=[], data={"i": i})
    signed = tlog.checkpoint()
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM log_entry WHERE idx = 4"))
    with pytest.raises(Unavailable, match="a checkpoint commits to 5"):
        tlog.checkpoint()
    assert [c.seq for c in tlog.checkpoints()] == [signed.seq]


def test_bulk_appends_give_the_tree_one_by_one_appends_give(tmp_path: object) -> None:
    """``record_many`` of thousands at once (how a seeding or a replay appends), across the
    writer's batch size and a 2^k boundary, stores the same entries, root and proofs as
    the same entries appended one at a time."""
    from pathlib import Path

    records = [("bulk", [f"p{i % 7}"], {"i": i}) for i in range(4_100)]
    logs = []
    for name in ("bulk", "single"):
        lg = new_log(open_database(f"sqlite:///{Path(str(tmp_path)) / name}.db"))
        logs.append(lg)
    bulk, single = logs
    try:
        assert bulk.record_many(records[:4_097]) == list(range(4_097))
        assert bulk.record_many(records[4_097:]) == list(range(4_097, 4_100))
        for kind, parties, data in records:
            single.record(kind, parties=parties, data=data)
        assert bulk.root() == single.root()
        assert bulk.entries(0, 4_100) == single.entries(0, 4_100)
        for size in (1, 1_024, 1_025, 4_096, 4_097, 4_100):
            assert bulk.root_at(size) == single.root_at(size)
            assert bulk.inclusion_proof(size - 1, 4_100) == single.inclusion_proof(size - 1, 4_100)
        assert bulk.checkpoint().checkpoint == single.checkpoint().checkpoint
    finally:
        for lg in logs:
            lg.close()


def test_a_second_log_on_the_same_database_is_caught_up_with(db: Database) -> None:
    """Entries appended through another ``TransparencyLog`` on the database (another
    replica, or a bulk seeding) are in the tree this one extends and signs."""
    first = new_log(db)
    other = new_log(db)
    try:
        first.record_many([("a", [], {"i": i}) for i in range(5)])
        other.record_many([("b", [], {"i": i}) for i in range(300)])
        assert first.record("a", parties=[], data={"i": 5}) == 305
        size, root = first.root()
        hashes = [merkle.leaf_hash(b) for _, b in first.entries(0, size)]
        assert size == 306 and merkle.root(hashes) == root
        cp, _ = open_checkpoint(first.checkpoint().note, first.verifier)
        assert (cp.size, cp.root) == (306, root)
    finally:
        other.close()
        first.close()


def test_the_newest_checkpoints_are_listed_oldest_first(tlog: TransparencyLog) -> None:
    for i in range(5):
        tlog.record("x", parties=[], data={"i": i})
        tlog.checkpoint()
    every = tlog.checkpoints()
    assert [c.checkpoint.size for c in every] == [1, 2, 3, 4, 5]
    assert tlog.checkpoints(2) == every[-2:]
    assert tlog.checkpoints(1) == every[-1:] == [tlog.latest_checkpoint()]
    assert tlog.checkpoints(0) == tlog.checkpoints(99) == every
