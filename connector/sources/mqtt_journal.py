"""The MQTT replay buffer on disk: sequences and messages that survive a provider restart.

An MQTT broker numbers nothing, so the provider's MQTT source assigns sequences on arrival
(:mod:`connector.sources.mqtt`). For a consumer to resume across a restart of the
provider's process, the numbering and the messages its consumers have not acknowledged
yet must outlive the process: this journal keeps them in one SQLite file per source (in
the provider's ``data_dir``), bounded by the same ``replay_messages`` / ``replay_bytes``
as the buffer in memory (evicted in the same transaction that appends).

Loss and duplication across the restart are closed at both ends:

- **Nothing lost**: the source's MQTT client keeps a persistent session under a client id
  stored here (stable across restarts, unique to this journal), subscribes at QoS 1 and
  acknowledges a message only after it is committed to this journal. What the broker
  could not deliver (the provider was down) or delivered without receiving our
  acknowledgement stays queued for the session and comes when the client is back.
- **Nothing doubled**: a message the broker sends again after a lost connection or a
  crash carries ``dup`` and the same packet id. The broker sends again only what was not
  acknowledged, in order and before anything new: a *suffix* of what was journaled,
  followed by what never arrived. :class:`Redeliveries` matches that suffix against the
  journal's last rows (packet id and payload) and drops what is already numbered.

Why SQLite (the standard library's ``sqlite3``): an append, an eviction and the "newest
sequence" move in one atomic transaction, and a crash mid-write leaves the previous
state, which an append-only file of our own would have to re-implement (torn records,
compaction). WAL with ``synchronous = NORMAL``: a commit survives the process dying
(what a provider restart is); a power loss may lose the last commits, which the broker
then sends again because they were not acknowledged before the commit.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from connector.sources.stream import SkipReason

__all__ = [
    "JournalEntry",
    "JournalWriter",
    "Redeliveries",
    "ReplayJournal",
    "fingerprint",
    "journal_path",
]

JournalEntry = tuple[int, int, bytes | SkipReason, int]
"""A journaled message: (sequence, MQTT packet id, payload or why it is skipped, size)."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages ("
    " sequence INTEGER PRIMARY KEY, mid INTEGER NOT NULL, payload BLOB,"
    " skip TEXT, size INTEGER NOT NULL)",
)


def journal_path(directory: Path, connection: str, topic: str, fields: Sequence[str]) -> Path:
    """Where the journal of one source (connection, topic, fields) lives.

    The name is a digest: topics hold '/', '+' and '#', and a product with other fields
    numbers its own copy of the topic (as it does in memory)."""
    key = "\x00".join([connection, topic, *fields]).encode()
    return directory / f"mqtt-{connection}-{hashlib.sha256(key).hexdigest()[:24]}.sqlite3"


class ReplayJournal:
    """One source's journal file. Thread-safe: appends come from the MQTT network thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            found = self._db.execute("SELECT value FROM meta WHERE key = 'client'").fetchone()
            self.fresh = found is None
            """Whether this journal was just created: the broker holds no session for it."""
            if found is None:
                # Unique to this journal, so two providers on one broker never take over
                # each other's session; stable, so a restart resumes its own.
                found = (secrets.token_hex(6),)
                self._db.execute("INSERT INTO meta VALUES ('client', ?)", found)
        self.client_suffix: str = found[0]

    def load(self) -> list[JournalEntry]:
        """Every held message, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, mid, payload, skip, size FROM messages ORDER BY sequence"
            ).fetchall()
        return [
            (sequence, mid, SkipReason(skip) if skip else bytes(payload), size)
            for sequence, mid, payload, skip, size in rows
        ]

    def append(self, entries: Sequence[JournalEntry], evict_before: int) -> None:
        """Commit messages and drop every one before ``evict_before``, atomically."""
        rows = [
            (sequence, mid, None, payload.value, size)
            if isinstance(payload, SkipReason)
            else (sequence, mid, payload, None, size)
            for sequence, mid, payload, size in entries
        ]
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?)", rows)
                db.execute("DELETE FROM messages WHERE sequence < ?", (evict_before,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


Ack = Callable[[int, int], object]
"""Acknowledges a packet id at a QoS to the broker (paho's ``Client.ack``)."""


class JournalWriter:
    """Commits what the MQTT network thread numbered, in batches, then acknowledges it.

    The network thread only queues (:meth:`add`): one SQLite commit per message would
    make the client slower than the publishers, and the broker drops what overflows its
    queue for a slow client. A thread of its own commits everything queued in one
    transaction and only then acknowledges those messages, so the broker holds every
    message that is not on disk yet. Readers see a message as soon as it is numbered:
    should the process die before its commit, the broker sends the unacknowledged
    messages again, in the same order, and they get the same numbers again.

    An acknowledgement belongs to its connection: after a reconnection the broker sends
    unacknowledged messages again and those are acknowledged then (an old packet id may
    name another message by now), so :meth:`connected` and :meth:`disconnected` drop the
    acknowledgements still queued.
    """

    def __init__(self, journal: ReplayJournal, on_failure: Callable[[Exception], None]) -> None:
        self._journal = journal
        self._on_failure = on_failure
        self._pending: list[tuple[int, int, int, JournalEntry | None]] = []
        """(connection, packet id, qos, what to journal or None for an ack only)."""
        self._evict_before = 0
        self._changed = threading.Condition()
        self._writing = False
        self._closing = False
        self._acks = threading.Lock()
        self._ack: Ack | None = None
        self._connection = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="mqtt-journal")
        self._thread.start()

    def connected(self, ack: Ack) -> None:
        """A (new) connection: acknowledgements go to it from now on."""
        with self._acks:
            self._connection += 1
            self._ack = ack

    def disconnected(self) -> None:
        with self._acks:
            self._connection += 1
            self._ack = None

    def add(self, mid: int, qos: int, entry: JournalEntry | None, evict_before: int) -> None:
        """Journal ``entry`` (if any), then acknowledge ``mid`` (from the network thread,
        which also calls :meth:`connected`: the connection it reads is its own)."""
        with self._changed:
            self._pending.append((self._connection, mid, qos, entry))
            self._evict_before = max(self._evict_before, evict_before)
            self._changed.notify_all()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued is committed (and acknowledged if it still can be)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (self._pending or self._writing) and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._changed.wait(left)

    def close(self) -> None:
        self.flush()
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closing:
                    self._changed.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                evict_before = self._evict_before
                self._writing = True
            try:
                entries = [entry for _, _, _, entry in batch if entry is not None]
                if entries:
                    self._journal.append(entries, evict_before)
            except Exception as exc:  # a full or damaged disk: nothing more is acked
                with self._changed:
                    self._writing = False
                    self._pending = []
                    self._changed.notify_all()
                self._on_failure(exc)
                return
            with self._acks:
                for connection, mid, qos, _ in batch:
                    if qos and connection == self._connection and self._ack is not None:
                        self._ack(mid, qos)
            with self._changed:
                self._writing = False
                self._changed.notify_all()


class Redeliveries:
    """Which messages the broker sends again are numbered already.

    ``tail`` is the last journaled (packet id, payload) pairs, at most the receive maximum
    the client announces (so every message the broker may still hold unacknowledged is
    among them). The broker resends, flagged ``dup`` and first after a (re)connection, the
    unacknowledged messages in order; those that had arrived are a suffix of ``tail``.
    The first resent message is matched with the *last* row of the tail bearing its
    packet id and payload (unacknowledged ids are distinct, and the broker assigns ids in
    turn, so an earlier row with the same id was acknowledged long ago); each one after
    it must match the next row. Anything else, and everything once the tail is used up or
    a message without ``dup`` arrives, is new.
    """

    def __init__(self, tail: Sequence[tuple[int, int | None]]) -> None:
        self._tail = list(tail)
        self._next: int | None = None
        """Index in the tail the next resent message must match (None: not matched yet)."""

    def seen(self, mid: int, payload: bytes, dup: bool) -> bool:
        """Whether this arrival is a copy of a journaled message (then it is only acked)."""
        if not self._tail:
            return False
        if not dup:
            self._tail = []  # the broker sends resent messages first: none come after this
            return False
        key = (mid, fingerprint(payload))
        if self._next is None:
            found = [i for i, held in enumerate(self._tail) if _same(held, key)]
            if not found:
                self._tail = []
                return False
            self._next = found[-1]
        elif self._next >= len(self._tail) or not _same(self._tail[self._next], key):
            self._tail = []
            return False
        self._next += 1
        return True


def fingerprint(payload: bytes | SkipReason) -> int | None:
    """What the tail keeps of a payload: Python's 64-bit hash, to tell a resent message
    from another one under the same packet id (ids are reused only long after), without
    holding payloads past the buffer's byte limit. ``None`` for an oversized message,
    journaled without its payload: its packet id must do."""
    return None if isinstance(payload, SkipReason) else hash(payload)


def _same(held: tuple[int, int | None], arrived: tuple[int, int | None]) -> bool:
    return held[0] == arrived[0] and (held[1] is None or held[1] == arrived[1])
