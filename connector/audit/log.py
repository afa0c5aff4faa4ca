"""The connector's transparency log: durable appends with group commit, checkpoints, proofs.

Every append is committed and durable (on SQLite, a sync of the WAL after the commit,
shared with concurrent commits: ``connector.store.database``; or PostgreSQL) before
``append`` returns; if it cannot be written, ``append`` raises ``Unavailable`` and the action it was
to record must not happen. A single writer thread drains concurrent appends into one
transaction (group commit); entries of one ``append_many`` call stay contiguous and in
order. Each completed Merkle subtree is stored once, so roots and proofs need O(log n)
node reads at any size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, select

from connector.audit import merkle
from connector.audit.canonical import canonical_json
from connector.audit.checkpoint import Checkpoint, sign_checkpoint
from connector.audit.note import NoteSignature, Verifier, parse_note
from connector.clock import Clock
from connector.errors import InvalidRequest, NotFound, Unavailable
from connector.store.database import Database, RawTransaction
from connector.store.models import LogCheckpointRow, LogEntryRow, LogNodeRow

__all__ = ["AuditLog", "LogEntry", "Record", "StoredCheckpoint", "TransparencyLog"]

log = logging.getLogger(__name__)
# Core columns type-check cleanly in queries, where SQLModel attributes are plain values.
_E = LogEntryRow.__table__.c  # type: ignore[attr-defined]
_N = LogNodeRow.__table__.c  # type: ignore[attr-defined]
_FIND_STRETCH = 5_000
"""Entries ``find`` searches per query (by the primary key, then filtered)."""
_FIND_BUDGET_S = 0.05
"""How long one ``find`` call goes on searching stretches before it answers."""
_TIME_SLACK = 1_000
"""Entries either side of a time window's index bounds also searched (stamps a little out
of order: concurrent appenders stamp, then queue)."""
_LEVEL_SHIFT = 48  # node id = level << 48 | index: one integer primary key, fast IN lookups


def _node_id(level: int, index: int) -> int:
    return level << _LEVEL_SHIFT | index


_C = LogCheckpointRow.__table__.c  # type: ignore[attr-defined]
_WRITER_LOCK_KEY = 0x7464735F6C6F67  # "tds_log": serialises replicas' batches on PostgreSQL
MAX_ENTRY_BYTES = 64 * 1024


Record = tuple[str, Sequence[str], Mapping[str, Any]]
"""An entry to record: its kind, the parties it names, and its data."""


class AuditLog(Protocol):
    """What the other capabilities call to record what happened."""

    def record(self, kind: str, *, parties: Sequence[str], data: Mapping[str, Any]) -> int:
        """Durably append one entry; return its index. Raises ``Unavailable`` if not written."""
        ...

    def record_many(self, records: Sequence[Record]) -> list[int]:
        """Durably append ``(kind, parties, data)`` entries, contiguous, in one write."""
        ...

    def record_in(self, tx: RawTransaction, records: Sequence[Record]) -> list[int]:
        """Append entries within ``tx``: they are durable when, and only if, it commits."""
        ...

    def prepare(self, records: Sequence[Record]) -> Callable[[RawTransaction], list[int]]:
        """``record_in`` in two steps: the entries are built now, and the function returned
        appends them within a transaction. Build them before the transaction writes
        anything: on SQLite a writer holds the database's one write lock until it commits.
        """
        ...


@dataclass(frozen=True)
class LogEntry:
    """An entry before it is appended (its index is added when it is written).

    JCS sorts keys, so ``index`` falls between ``data`` and ``kind``: the entry is kept as
    the canonical JSON of the keys before and after it, and the writer splices the index in
    without serialising again.
    """

    kind: str
    parties: tuple[str, ...]
    head: bytes
    """Canonical JSON of ``{"actor", "data"}``."""
    tail: bytes
    """Canonical JSON of ``{"kind", "parties", "time_ms"}``."""
    created_ms: int

    def body(self, index: int) -> bytes:
        """The canonical JSON leaf for position ``index``."""
        return b'%s,"index":%d,%s' % (self.head[:-1], index, self.tail[1:])


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as stored: its sequence number, contents and signed note."""

    seq: int
    checkpoint: Checkpoint
    note: str


class _Batch:
    """One caller's entries, and where the writer puts the outcome."""

    def __init__(self, entries: list[LogEntry]) -> None:
        self.entries = entries
        self.done = threading.Event()
        self.indices: list[int] = []
        self.error: Unavailable | None = None

    def finish(self, indices: list[int] | None = None, error: Unavailable | None = None) -> None:
        self.indices, self.error = indices or [], error
        self.done.set()


class TransparencyLog:
    """The log of one connector, stored in its database."""

    def __init__(
        self,
        db: Database,
        *,
        origin: str,
        actor: str,
        signing_key: ed25519.Ed25519PrivateKey,
        clock: Clock,
        max_batch: int = 1024,
        gather_seconds: float = 0.002,
    ) -> None:
        self._db = db
        self.origin = origin
        self._actor = actor
        self._key = signing_key
        self.verifier = Verifier.ed25519(origin, signing_key.public_key())
        self._clock = clock
        self._max_batch = max_batch
        self._gather_seconds = gather_seconds
        self._expected = 1  # entries in the last batch: how many writers are active
        self._cond = threading.Condition()
        self._pending: list[_Batch] = []
        self._pending_entries = 0
        self._stopping = False
        self._state_lock = threading.Lock()
        # Held from an append's first statement until its transaction ends, so appends
        # (the writer's batches, and entries written in a caller's transaction) follow
        # one another and each starts from the size the last one committed.
        self._sequence = threading.Lock()
        self._sequence_holder: RawTransaction | None = None
        self._size = 0
        self._frontier: dict[int, bytes] = {}
        self._load_frontier()
        self._writer = threading.Thread(target=self._run, name="tds-log-writer", daemon=True)
        self._closed = False
        self._writer.start()

    # -- appending --------------------------------------------------------------------

    def entry(self, kind: str, *, parties: Sequence[str], data: Mapping[str, Any]) -> LogEntry:
        """Build an entry of ``kind`` naming ``parties`` with ``data``, stamped now."""
        if not kind or len(kind) > 64:
            raise InvalidRequest("log entry kind must be 1-64 characters")
        now_ms = int(self._clock.now() * 1000)
        names = tuple(sorted(set(parties) | {self._actor}))
        head = canonical_json({"actor": self._actor, "data": dict(data)})
        tail = canonical_json({"kind": kind, "parties": list(names), "time_ms": now_ms})
        if len(head) + len(tail) + 30 > MAX_ENTRY_BYTES:
            raise InvalidRequest(f"log entry is larger than {MAX_ENTRY_BYTES} bytes")
        return LogEntry(kind, names, head, tail, now_ms)

    def record(self, kind: str, *, parties: Sequence[str], data: Mapping[str, Any]) -> int:
        """Durably append one entry; return its index."""
        return self.append_many([self.entry(kind, parties=parties, data=data)])[0]

    def record_many(self, records: Sequence[Record]) -> list[int]:
        """Durably append entries, contiguous and in order, in one write; their indices."""
        return self.append_many([self.entry(k, parties=p, data=d) for k, p, d in records])

    def append_many(self, entries: Sequence[LogEntry], timeout: float = 30.0) -> list[int]:
        """Durably append entries, contiguous and in order; return their indices."""
        if self._closed:
            raise Unavailable("the audit log is closed; the action was not recorded")
        if not entries:
            return []
        batch = _Batch(list(entries))
        with self._cond:
            if self._stopping:
                raise Unavailable("the audit log is closed; the action was not recorded")
            self._pending.append(batch)
            self._pending_entries += len(batch.entries)
            # Wake the writer only when it has something to do: the first entry, or as
            # many as it gathers for. Waking it for every entry of a busy burst made it
            # and the appenders trade the interpreter lock back and forth for nothing.
            if len(self._pending) == 1 or self._pending_entries >= self._expected:
                self._cond.notify()
        if not batch.done.wait(timeout):
            raise Unavailable("the audit log did not confirm the write in time")
        if batch.error is not None:
            raise batch.error
        return batch.indices

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                # Group commit: writers woken by the previous commit are queueing again.
                # Wait (briefly, well under one fsync) for as many entries as last time.
                deadline = time.monotonic() + self._gather_seconds
                while self._pending_entries < self._expected and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batches, count = [], 0
                while self._pending and count < self._max_batch:
                    batch = self._pending.pop(0)
                    batches.append(batch)
                    count += len(batch.entries)
                self._pending_entries -= count
            # Remember concurrency with a slow decay, so one short batch does not shrink the next.
            self._expected = max(count, self._expected * 7 // 8)
            self._write(batches)

    def _write(self, batches: list[_Batch]) -> None:
        try:
            with self._db.transaction() as tx:
                results = self._append(tx, [batch.entries for batch in batches])
        except Exception as exc:  # any driver error: nothing was committed
            log.error("audit log write failed", extra={"reason": str(exc)[:300]})
            error = Unavailable("the audit log could not be written; the action did not happen")
            for batch in batches:
                batch.finish(error=error)
            return
        for batch, indices in zip(batches, results, strict=True):
            batch.finish(indices)

    def append_in(self, tx: RawTransaction, entries: Sequence[LogEntry]) -> list[int]:
        """Append entries within ``tx``, contiguous and in order: they commit with it or not at all.

        For a state change and its entries in one commit (one fsync, not two). The log's
        sequence stays taken until ``tx`` ends, so keep the rest of ``tx`` short; one
        append per transaction.
        """
        if self._closed:
            raise Unavailable("the audit log is closed; the action was not recorded")
        return self._append(tx, [list(entries)])[0] if entries else []

    def record_in(self, tx: RawTransaction, records: Sequence[Record]) -> list[int]:
        """``append_in`` for ``(kind, parties, data)`` records."""
        return self.prepare(records)(tx)

    def prepare(self, records: Sequence[Record]) -> Callable[[RawTransaction], list[int]]:
        """The entries for ``records``, built now; the function appends them within a
        transaction (``append_in``)."""
        entries = [self.entry(k, parties=p, data=d) for k, p, d in records]
        return lambda tx: self.append_in(tx, entries)

    def _append(self, tx: RawTransaction, groups: list[list[LogEntry]]) -> list[list[int]]:
        """Insert ``groups`` of entries at the end of the log, within ``tx``; their indices.

        Statements go straight to the driver (``Database.transaction``): at a few entries
        per commit, the ORM's per-statement overhead would cost more than the fsync. The
        log's size and frontier in memory change only once ``tx`` has committed.
        """
        self._take_sequence(tx)
        try:
            self._catch_up(tx)
            size, frontier = self._size, dict(self._frontier)
            rows: list[tuple[Any, ...]] = []
            nodes: list[tuple[int, bytes]] = []
            results: list[list[int]] = []
            for group in groups:
                indices = []
                for e in group:
                    body = e.body(size)
                    rows.append((size, body, e.kind, "," + ",".join(e.parties) + ",", e.created_ms))
                    nodes.extend(
                        (_node_id(level, i), h)
                        for level, i, h in merkle.extend_frontier(
                            frontier, size, merkle.leaf_hash(body)
                        )
                    )
                    indices.append(size)
                    size += 1
                results.append(indices)
            tx.many(
                "INSERT INTO log_entry (idx, body, kind, parties, created_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            tx.many("INSERT INTO log_node (id, hash) VALUES (?, ?)", nodes)
        except BaseException:
            self._release_sequence()
            raise

        def ended(committed: bool) -> None:
            try:
                if committed:
                    with self._state_lock:
                        self._size, self._frontier = size, frontier
            finally:
                self._release_sequence()

        tx.on_end(ended)
        return results

    def _take_sequence(self, tx: RawTransaction) -> None:
        """Take the log for ``tx`` until it ends: this replica's appends and checkpoints,
        and on PostgreSQL every replica's, follow one another."""
        if self._sequence_holder is tx:
            raise RuntimeError("one audit log append per transaction")
        # Every writer of this database takes the SQLite write turn (and on PostgreSQL the
        # log's advisory lock) before the sequence: taken in one order, they cannot deadlock.
        tx.claim_write()
        if self._db.postgres:
            tx.one("SELECT pg_advisory_xact_lock(?)", (_WRITER_LOCK_KEY,))
        if not self._sequence.acquire(timeout=30):
            raise Unavailable("the audit log is busy; the action was not recorded")
        self._sequence_holder = tx

    def _release_sequence(self) -> None:
        self._sequence_holder = None
        self._sequence.release()

    def _catch_up(self, tx: RawTransaction) -> None:
        """With the sequence taken: make the size and frontier in memory the committed ones.

        Another replica of this connector may have appended since this one last did.
        """
        last = tx.one("SELECT max(idx) FROM log_entry")
        if (0 if last is None or last[0] is None else int(last[0]) + 1) != self._size:
            with self._db.engine.connect() as conn:
                self._load_frontier(conn)

    def _load_frontier(self, conn: Any = None) -> None:
        def load(c: Any) -> None:
            size = self._stored_size(c)
            wanted, start = [], 0
            for level in range(int(size).bit_length() - 1, -1, -1):
                if size >> level & 1:
                    wanted.append((level, start >> level))
                    start += 1 << level
            hashes = self._fetch_nodes(c, wanted)
            with self._state_lock:
                self._size = int(size)
                self._frontier = {level: hashes[(level, i)] for level, i in wanted}

        if conn is not None:
            load(conn)
        else:
            with self._db.engine.connect() as c:
                load(c)

    @staticmethod
    def _stored_size(conn: Any) -> int:
        # max(idx) uses the primary key; count(*) would scan millions of rows.
        last = conn.execute(select(func.max(_E.idx))).scalar_one()
        return 0 if last is None else int(last) + 1

    @staticmethod
    def _fetch_nodes(conn: Any, coords: list[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found: dict[tuple[int, int], bytes] = {}
        for i in range(0, len(coords), 400):
            chunk = coords[i : i + 400]
            ids = {_node_id(level, index): (level, index) for level, index in chunk}
            rows = conn.execute(select(_N.id, _N.hash).where(_N.id.in_(list(ids))))
            found.update({ids[int(r[0])]: bytes(r[1]) for r in rows})
        missing = set(coords) - set(found)
        if missing:
            raise Unavailable(f"audit log is missing Merkle nodes {sorted(missing)[:3]}")
        return found

    def close(self) -> None:
        """Finish pending appends and stop the writer."""
        if not self._closed:
            self._closed = True
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._writer.join(timeout=30)

    # -- reading ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of committed entries, as the database holds them.

        Read from the database, not this replica's memory: another replica of the
        connector may have appended (and signed a checkpoint over) entries since this one
        last did, and what this replica serves must cover them.
        """
        with self._db.engine.connect() as conn:
            return self._stored_size(conn)

    def root(self) -> tuple[int, bytes]:
        """The committed size and its root hash."""
        size = self.size
        with self._state_lock:
            if self._size == size:
                return size, merkle.frontier_root(self._frontier)
        # Another replica appended since this one did (or one of ours just committed).
        return size, self.root_at(size) if size else merkle.frontier_root({})

    def _with_nodes(self, compute: Any) -> Any:
        """Run ``compute(nodes)`` twice: once to learn which nodes it needs, then for real."""
        wanted: list[tuple[int, int]] = []

        def record(level: int, index: int) -> bytes:
            wanted.append((level, index))
            return bytes(merkle.HASH_SIZE)

        compute(record)
        with self._db.engine.connect() as conn:
            found = self._fetch_nodes(conn, sorted(set(wanted)))
        return compute(lambda level, index: found[(level, index)])

    def _check_size(self, size: int) -> None:
        committed = self.size
        if not 0 < size <= committed:
            raise InvalidRequest(f"tree size {size} is not between 1 and {committed}")

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Proof that entry ``index`` is in the tree of ``size`` entries."""
        self._check_size(size)
        if not 0 <= index < size:
            raise InvalidRequest(f"index {index} is outside a tree of size {size}")
        proof: list[bytes] = self._with_nodes(
            lambda nodes: merkle.inclusion_proof_from(nodes, index, size)
        )
        return proof

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Proof that the tree of ``size1`` entries is a prefix of the one of ``size2``."""
        self._check_size(size2)
        if not 0 < size1 <= size2:
            raise InvalidRequest(f"first size {size1} must be between 1 and {size2}")
        if size1 == size2:
            return []
        proof: list[bytes] = self._with_nodes(
            lambda nodes: merkle.consistency_proof_from(nodes, size1, size2)
        )
        return proof

    def root_at(self, size: int) -> bytes:
        """The root hash of the tree of the first ``size`` entries."""
        self._check_size(size)
        value: bytes = self._with_nodes(lambda nodes: merkle.root_from(nodes, size))
        return value

    def entries(self, start: int, end: int, party: str | None = None) -> list[tuple[int, bytes]]:
        """Entries ``start <= idx < end``; with ``party``, only those that name it."""
        if start < 0 or end < start:
            raise InvalidRequest(f"invalid entry range [{start}, {end})")
        query = select(_E.idx, _E.body).where(_E.idx >= start, _E.idx < end).order_by(_E.idx)
        if party is not None:
            query = query.where(_E.parties.contains(f",{party},"))
        with self._db.engine.connect() as conn:
            return [(int(r[0]), bytes(r[1])) for r in conn.execute(query)]

    def entries_of_kind(
        self,
        kind: str,
        party: str | None,
        since_ms: int,
        until_ms: int,
        limit: int = 1000,
        after: int = -1,
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` entries of ``kind`` (naming ``party``, if given) recorded between
        ``since_ms`` and ``until_ms`` (inclusive), after index ``after``, in log order: a
        time window read by the (kind, time) index, not the whole log; or, ``after`` a known
        index, the entries since it by the (kind, index) index (migration 0019).

        Which index answers is chosen here, not left to SQLite's planner, which took the
        (kind, index) one for a narrow time window too (every entry of the kind since the
        start): the other column is written ``+ 0``, which no index serves."""
        if after >= 0:
            stamped = _E.created_ms + 0
            query = select(_E.idx, _E.body).where(_E.kind == kind, _E.idx > after)
            query = query.where(stamped >= since_ms, stamped <= until_ms)
        else:
            query = select(_E.idx, _E.body).where(
                _E.kind == kind, _E.created_ms >= since_ms, _E.created_ms <= until_ms
            )
            query = query.where(_E.idx + 0 > after)
        query = query.order_by(_E.idx).limit(limit)
        if party is not None:
            query = query.where(_E.parties.contains(f",{party},"))
        with self._db.engine.connect() as conn:
            return [(int(r[0]), bytes(r[1])) for r in conn.execute(query)]

    def find(
        self,
        *,
        kind: str = "",
        party: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        before: int = 0,
        limit: int = 50,
        reader: str | None = None,
    ) -> tuple[list[tuple[int, bytes]], int, int]:
        """Up to ``limit`` entries below index ``before`` (0: the newest), newest first, of
        ``kind``, naming ``party`` and recorded in [``since_ms``, ``until_ms``] (each only if
        given), and only those naming ``reader`` if given (a member who may not read all).

        The log is searched from ``before`` down in stretches of ``_FIND_STRETCH`` entries
        by the primary key, until ``limit`` are found or ``_FIND_BUDGET_S`` is spent: a rare
        party or kind costs a bounded time per call at any log size, and the answer says
        where to go on (``searched_from``). A time window first narrows the index range:
        ``created_ms`` follows the index (entries are stamped just before they are
        appended), so a binary search over it finds the stretch, widened by
        ``_TIME_SLACK`` entries for stamps a little out of order; each entry is still
        checked against the window itself. Returns (entries, searched_from, size).
        """
        size = self.size
        if before <= 0 or before > size:
            before = size
        low = 0
        with self._db.engine.connect() as conn:
            if until_ms:
                before = min(before, self._first_after(conn, size, until_ms + 1) + _TIME_SLACK)
            if since_ms:
                low = max(0, self._first_after(conn, size, since_ms) - _TIME_SLACK)
            found: list[tuple[int, bytes]] = []
            top = before
            deadline = time.monotonic() + _FIND_BUDGET_S
            while top > low and len(found) < limit:
                bottom = max(low, top - _FIND_STRETCH)
                query = select(_E.idx, _E.body).where(_E.idx >= bottom, _E.idx < top)
                if kind:
                    query = query.where(_E.kind == kind)
                for who in (party, reader):
                    if who:
                        query = query.where(_E.parties.contains(f",{who},"))
                if since_ms:
                    query = query.where(_E.created_ms >= since_ms)
                if until_ms:
                    query = query.where(_E.created_ms <= until_ms)
                query = query.order_by(_E.idx.desc()).limit(limit - len(found))
                rows = [(int(r[0]), bytes(r[1])) for r in conn.execute(query)]
                found.extend(rows)
                # A stretch cut short by the limit is searched down to its last find only.
                top = rows[-1][0] if len(found) >= limit and rows else bottom
                if time.monotonic() > deadline:
                    break
        return found, (top if top > low else 0), size

    @staticmethod
    def _first_after(conn: Any, size: int, ms: int) -> int:
        """The first index whose entry was stamped at or after ``ms`` (``size`` if none),
        by binary search over the primary key: O(log n) point reads."""
        lo, hi = 0, size
        while lo < hi:
            mid = (lo + hi) // 2
            stamp = conn.execute(select(_E.created_ms).where(_E.idx == mid)).scalar()
            if stamp is not None and int(stamp) >= ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def entry_parties(self, index: int) -> tuple[str, ...]:
        """The participants entry ``index`` names."""
        with self._db.engine.connect() as conn:
            row = conn.execute(select(_E.parties).where(_E.idx == index)).first()
        if row is None:
            raise NotFound(f"no log entry {index}")
        return tuple(p for p in str(row[0]).split(",") if p)

    # -- checkpoints ------------------------------------------------------------------

    def checkpoint(self, *, fresh: bool = False) -> StoredCheckpoint:
        """The latest checkpoint; signs a new one if the log has grown.

        Signed only over the tree as committed in the database, with the log taken as
        for an append: every replica of the connector signs in turn, each over at least
        the entries the one before signed, so signed sizes never go back. An unchanged
        log keeps its stored checkpoint, ``fresh`` or not.
        """
        latest = self.latest_checkpoint()
        if latest is not None and latest.checkpoint.size == self.size:
            return latest  # unchanged: no need to take the log from the appenders
        with self._db.transaction() as tx:
            self._take_sequence(tx)
            tx.on_end(lambda _committed: self._release_sequence())
            self._catch_up(tx)
            size, root = self._size, merkle.frontier_root(self._frontier)
            row = tx.one(
                "SELECT seq, size, root, note FROM log_checkpoint ORDER BY seq DESC LIMIT 1"
            )
            latest = self._stored(row) if row is not None else None
            signed = tx.one("SELECT max(size) FROM log_checkpoint")
            if signed is not None and signed[0] is not None and int(signed[0]) > size:
                # Entries were lost from under a signed checkpoint: sign nothing more.
                raise Unavailable(
                    f"the audit log holds {size} entries but a checkpoint commits to "
                    f"{int(signed[0])}; restore the database"
                )
            if latest is not None and latest.checkpoint.size == size:
                return latest
            cp = Checkpoint(self.origin, size, root)
            note = sign_checkpoint(cp, self._key)
            tx.execute(
                "INSERT INTO log_checkpoint (size, root, note, created_ms) VALUES (?, ?, ?, ?)",
                (size, root, note, int(self._clock.now() * 1000)),
            ).close()
            # Only checkpoint() inserts, and only with the log taken: the newest is ours.
            seq = tx.one("SELECT max(seq) FROM log_checkpoint")
            assert seq is not None
            return StoredCheckpoint(int(seq[0]), cp, note)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The most recent stored checkpoint, if any."""
        with self._db.engine.connect() as conn:
            row = conn.execute(
                select(_C.seq, _C.size, _C.root, _C.note).order_by(_C.seq.desc()).limit(1)
            ).first()
        return self._stored(row) if row else None

    def checkpoints(self, newest: int = 0) -> list[StoredCheckpoint]:
        """Stored checkpoints, oldest first: every one, or only the ``newest`` (by the
        primary key, from its end)."""
        query = select(_C.seq, _C.size, _C.root, _C.note).order_by(_C.seq.desc())
        if newest > 0:
            query = query.limit(newest)
        with self._db.engine.connect() as conn:
            return [self._stored(r) for r in conn.execute(query)][::-1]

    @staticmethod
    def _stored(row: Any) -> StoredCheckpoint:
        seq, size, root, note = row
        return StoredCheckpoint(
            int(seq), Checkpoint(_origin_of(note), int(size), bytes(root)), str(note)
        )

    def add_cosignature(self, seq: int, signature: NoteSignature) -> str:
        """Attach a verified cosignature to stored checkpoint ``seq``; return the new note."""
        with self._db.session() as s:
            row = s.get(LogCheckpointRow, seq, with_for_update=True)
            if row is None:
                raise NotFound(f"no checkpoint {seq}")
            note = parse_note(row.note)
            others = tuple(x for x in note.signatures if x.name != signature.name)
            row.note = type(note)(note.text, (*others, signature)).render()
            s.add(row)
            return row.note


def _origin_of(note: str) -> str:
    return note.split("\n", 1)[0]
