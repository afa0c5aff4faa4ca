"""The one interface the data plane reads every source through.

A product names a source (DESIGN.md §9); an adapter per kind implements one of these small
protocols, and everything downstream (projection, masks, the delivered form, receipts,
later compute) depends on the protocol, never on the kind:

- :class:`RecordSource` — a finite set of records read as a **snapshot**: ``table`` (CSV or
  JSON Lines on the provider's disk) and ``sql`` (one read-only query against a database
  named in the provider's configuration, :mod:`connector.sources.sql`). A snapshot
  iterates rows as tuples in the order of :attr:`Snapshot.fields`, reading them as it
  goes so memory stays flat for any size, and reports its :meth:`Snapshot.state` once read.
- :class:`ByteSource` — bytes as they are: ``file``. Its snapshot knows its size and
  SHA-256 before anything is sent, and is read from any offset, so a pull resumes.
- :class:`StreamSource` — records without an end (brokers: NATS JetStream,
  :mod:`connector.sources.nats`; MQTT, :mod:`connector.sources.mqtt`): a
  :class:`Subscription` from a sequence number, each :class:`StreamRecord` with its
  sequence and the one before it, so a consumer resumes after the last one it
  acknowledged and can tell a gap, a repeat or a reordering (design and limits:
  :mod:`connector.sources.stream`; hash chain and windows: :mod:`connector.sources.windows`).

How the sources map onto this:

- ``file`` (:mod:`connector.sources.file`): bytes as they are; ``FileDigests.digest`` fixes
  the size, mtime and SHA-256 of the file when a transfer starts, ``read_chunks`` reads it
  from any offset; ``Delivered`` is what the transfer row records.
- ``table`` (:class:`connector.sources.table.TableSource`) and ``sql``
  (:class:`connector.sources.sql.SqlSource`): a :class:`RecordSource`, built for a product
  by :func:`connector.sources.open.record_source` and delivered by
  :func:`connector.sources.delivered.materialise`: the snapshot projected to the permitted
  fields and masked, written once per transfer to a staging file whose bytes and hash a
  resumed pull gets again.

The state string is what a receipt records as the source's state: enough to tell later
whether two deliveries or answers were computed over the same data. Each adapter documents
what its state is (a content hash wherever one is affordable, never a clock reading).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "MISSING",
    "ByteSnapshot",
    "ByteSource",
    "RecordSource",
    "Row",
    "Snapshot",
    "StreamRecord",
    "StreamSource",
    "Subscription",
]


class _Missing:
    """The type of :data:`MISSING`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""A field a record does not have at all (a JSON Lines object without the key), as
opposed to ``None``, a field that is present and null. Delivered JSON Lines leave it out."""

Row = Sequence[Any]
"""One record: its values in the order of the snapshot's fields."""


@runtime_checkable
class Snapshot(Protocol):
    """One consistent read of a record source."""

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the values in each row, in order."""
        ...

    def __iter__(self) -> Iterator[Row]:
        """The rows, read as they are iterated (memory stays flat); iterate once."""
        ...

    def state(self) -> str:
        """What this snapshot read, as ``<kind>:<scheme>:<value>``; final once every row
        has been iterated (before that it raises ``RuntimeError``)."""
        ...


@runtime_checkable
class RecordSource(Protocol):
    """A finite set of records (``table``, ``sql``)."""

    kind: str

    def fields(self) -> tuple[str, ...]:
        """The records' fields, as declared by the product and checked against the source."""
        ...

    def open_snapshot(self) -> AbstractContextManager[Snapshot]:
        """A snapshot; leaving the context releases what it holds (file, connection).

        Raises ``Unavailable`` when the source cannot be reached and ``PreconditionFailed``
        when it no longer matches the product (missing file, column, changed schema).
        """
        ...


@runtime_checkable
class ByteSnapshot(Protocol):
    """One fixed version of a byte source."""

    size: int
    sha256: str

    def read(self, offset: int, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        """``(offset, bytes)`` from ``offset`` in chunks of at most ``chunk_size``; raises
        ``PreconditionFailed`` when the source no longer has the recorded hash."""
        ...


@runtime_checkable
class ByteSource(Protocol):
    """Bytes delivered as they are (``file``)."""

    kind: str

    def open_snapshot(self) -> AbstractContextManager[ByteSnapshot]:
        """The source as it is now, with its size and SHA-256."""
        ...


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One message of a stream, decoded: what a subscription yields."""

    sequence: int
    """The provider's sequence number (JetStream: the stream's own; MQTT: assigned on
    arrival). Strictly increasing within a source, not necessarily contiguous."""
    previous: int
    """The sequence delivered just before this one in the same subscription (its ``after``
    for the first): a consumer that holds ``previous`` as its last sequence has missed
    nothing; any other value is a gap, a repeat or a reordering."""
    row: Row
    """The values in the order of the source's fields (:data:`MISSING` where absent)."""
    size: int
    """Bytes of the message as the broker delivered it."""


@runtime_checkable
class Subscription(Protocol):
    """Records of a stream source after a sequence, as they arrive.

    Memory is bounded whatever the reader does: a reader that stops reading makes the
    subscription fall behind, never grow (see :mod:`connector.sources.stream`).
    """

    def poll(self, timeout: float) -> StreamRecord | None:
        """The next record, or ``None`` when none arrived within ``timeout`` seconds (so a
        caller re-checks its policy between records however quiet the feed).

        Raises ``SubscriptionLagging`` (``Unavailable``) past the configured lag and
        ``SequenceGone`` (``PreconditionFailed``) when records after the last one delivered
        are no longer held: the caller suspends with the reason and may resume after the
        last sequence it acknowledged.
        """
        ...

    def poll_batch(self, timeout: float, limit: int) -> list[StreamRecord]:
        """The next record (waiting up to ``timeout`` seconds for it) and, after it, the
        records already at hand, at most ``limit`` in all; ``[]`` when none came in time.

        Only the first record is waited for, so a batch adds no latency. A failure after
        the first record ends the batch there and is raised by the next call.
        """
        ...

    def __iter__(self) -> Iterator[StreamRecord]:
        """:meth:`poll` without a timeout, for ever (until an error or the context ends)."""
        ...

    @property
    def skipped(self) -> Mapping[str, int]:
        """Messages skipped so far (not JSON, not an object, oversized), by reason."""
        ...

    @property
    def lag(self) -> int:
        """Messages the source holds beyond the last one this subscription delivered."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the broker is reachable now (a lost connection is retried)."""
        ...


@runtime_checkable
class StreamSource(Protocol):
    """Records without an end (``stream``: NATS JetStream subjects, MQTT topics)."""

    kind: str

    def fields(self) -> tuple[str, ...]:
        """The records' fields."""
        ...

    def subscribe(self, after: int) -> AbstractContextManager[Subscription]:
        """A subscription to every record after sequence ``after`` (0: from the oldest held).

        Raises ``Unavailable`` when the broker cannot be reached, ``InvalidRequest`` when
        ``after`` is past the newest sequence and ``SequenceGone`` when records after it
        are no longer held. Leaving the context ends the subscription and releases what
        it holds (connection, broker-side consumer).
        """
        ...
