"""Evidence of a stream: the running hash chain and the window receipts' content.

Pure functions of what was delivered, computed identically by provider and consumer, so a
window receipt the consumer signs can be checked by the provider field for field.

Hash chain (SHA-256, :mod:`hashlib`)::

    head_0 = SHA-256("tds.stream.chain.genesis.v1" 0x00 || context)
    head_k = SHA-256("tds.stream.chain.link.v1" 0x00 || head_{k-1} || seq_k || record_k)

- ``context``: UTF-8 bytes naming what the chain is about (the agreement id), so two
  agreements' chains never share a head;
- ``head``: the 32 raw digest bytes; ``seq_k``: the record's sequence as 8 bytes,
  unsigned big-endian;
- ``record_k``: the canonical JSON (RFC 8785, :func:`connector.audit.canonical.
  canonical_json`) of the record *as delivered*: one JSON object of the permitted fields,
  after masks, a field the message lacked left out. It is the last part of the input, so
  its length needs no prefix.

A chain runs across every resume of one agreement's subscription: whoever resumes keeps
``(last sequence, head)`` and continues from them.

Windows: a window closes after ``every_messages`` records or ``every_seconds`` after its
first record, whichever comes first (:class:`WindowAccumulator`, provider side). Its
content (:class:`Window`) is the sequence range, the count, the bytes (sum of the
``record_k`` lengths), the head the window started from and the head it ended at; the
consumer's :class:`StreamChecker` refuses a gap, a repeat or a reordering as it receives
records, and refuses a proposed window that differs in anything from its own record of
the same records (tampered) or does not follow its last window (replayed, skipped).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connector.audit.canonical import canonical_json
from connector.errors import ConfigError, VerificationError

__all__ = [
    "HashChain",
    "StreamChecker",
    "Window",
    "WindowAccumulator",
    "genesis_head",
]

_GENESIS = b"tds.stream.chain.genesis.v1\x00"
_LINK = b"tds.stream.chain.link.v1\x00"
_MAX_SEQUENCE = 2**64 - 1


def genesis_head(context: str) -> bytes:
    """The head of an empty chain about ``context`` (an agreement id)."""
    return hashlib.sha256(_GENESIS + context.encode()).digest()


class HashChain:
    """The running SHA-256 chain over delivered records (see the module docstring)."""

    def __init__(self, head: bytes, last_sequence: int = 0) -> None:
        if len(head) != 32:
            raise ValueError("a chain head is 32 bytes")
        self.head = head
        self.last_sequence = last_sequence

    def append(self, sequence: int, record: Mapping[str, Any]) -> int:
        """Link ``record`` delivered under ``sequence``; return its canonical length.

        ``sequence`` must be past the last one linked: the chain is in delivery order.
        """
        return self.link(sequence, canonical_json(dict(record)))

    def link(self, sequence: int, encoded: bytes) -> int:
        """:meth:`append` for a record already in its canonical JSON form (``encoded``,
        from :func:`~connector.audit.canonical.canonical_json`: the caller encoded it to
        send it and need not pay for it twice); return its length."""
        if not self.last_sequence < sequence <= _MAX_SEQUENCE:
            raise ValueError(f"sequence {sequence} does not follow {self.last_sequence}")
        self.head = hashlib.sha256(
            _LINK + self.head + sequence.to_bytes(8, "big") + encoded
        ).digest()
        self.last_sequence = sequence
        return len(encoded)


@dataclass(frozen=True)
class Window:
    """The content of one window receipt."""

    index: int
    """0 for an agreement's first window, then one more per window."""
    first_sequence: int
    last_sequence: int
    count: int
    """Records delivered in the window."""
    bytes: int
    """Sum of the canonical JSON lengths of those records."""
    start_head: str
    """Hex chain head before the window's first record (the previous window's ``head``)."""
    head: str
    """Hex chain head after its last record."""

    def content(self) -> dict[str, Any]:
        """The receipt's fields as JSON values (to be signed as canonical JSON)."""
        return {
            "index": self.index,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "count": self.count,
            "bytes": self.bytes,
            "start_head": self.start_head,
            "head": self.head,
        }


class _OpenWindow:
    """Records since the last closed window."""

    def __init__(self, index: int, head: bytes) -> None:
        self.index = index
        self.start_head = head
        self.first = 0
        self.last = 0
        self.count = 0
        self.bytes = 0
        self.opened_at = 0.0

    def add(self, sequence: int, size: int, now: float) -> None:
        if self.count == 0:
            self.first = sequence
            self.opened_at = now
        self.last = sequence
        self.count += 1
        self.bytes += size

    def close(self, head: bytes) -> Window:
        return Window(
            self.index,
            self.first,
            self.last,
            self.count,
            self.bytes,
            self.start_head.hex(),
            head.hex(),
        )


class WindowAccumulator:
    """Provider side: the chain over delivered records, cut into windows.

    ``add`` each record as it is sent; it returns the window it closes (every
    ``every_messages`` records). Call :meth:`tick` while the feed is quiet: it closes a
    window ``every_seconds`` after the window's first record.
    """

    def __init__(
        self,
        chain: HashChain,
        *,
        every_messages: int,
        every_seconds: float,
        next_index: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_messages < 1 or not every_seconds > 0:
            raise ConfigError("a window needs every_messages >= 1 and every_seconds > 0")
        self.chain = chain
        self._every_messages = every_messages
        self._every_seconds = every_seconds
        self._clock = clock
        self._open = _OpenWindow(next_index, chain.head)

    def add(self, sequence: int, record: Mapping[str, Any]) -> Window | None:
        """Link ``record``; the window it completes, if any."""
        return self.add_encoded(sequence, canonical_json(dict(record)))

    def add_encoded(self, sequence: int, encoded: bytes) -> Window | None:
        """:meth:`add` for a record already in canonical JSON (see :meth:`HashChain.link`)."""
        size = self.chain.link(sequence, encoded)
        self._open.add(sequence, size, self._clock())
        if self._open.count >= self._every_messages:
            return self._close()
        return None

    @property
    def room(self) -> int:
        """Records the open window takes before it closes by count (at least 1)."""
        return self._every_messages - self._open.count

    def tick(self) -> Window | None:
        """The open window if it is non-empty and ``every_seconds`` old."""
        if self._open.count and self._clock() - self._open.opened_at >= self._every_seconds:
            return self._close()
        return None

    def flush(self) -> Window | None:
        """The open window now, if it has any record (at suspension or termination)."""
        return self._close() if self._open.count else None

    def _close(self) -> Window:
        window = self._open.close(self.chain.head)
        self._open = _OpenWindow(window.index + 1, self.chain.head)
        return window


class StreamChecker:
    """Consumer side: refuses gaps, repeats and reordering; checks proposed windows.

    Start it from what the consumer holds: the last sequence it received (``after``, the
    ``from_sequence`` it subscribes with), the chain head after it, and the index of the
    next window it expects.
    """

    def __init__(self, after: int, head: bytes, next_index: int = 0) -> None:
        self.chain = HashChain(head, after)
        self._open = _OpenWindow(next_index, head)

    @property
    def last_sequence(self) -> int:
        """The last sequence received."""
        return self.chain.last_sequence

    def accept(self, sequence: int, previous: int, record: Mapping[str, Any]) -> None:
        """Take the next record, or raise ``VerificationError`` naming the fault."""
        last = self.chain.last_sequence
        if sequence == last:
            raise VerificationError(f"stream integrity: sequence {sequence} was received twice")
        if sequence < last:
            raise VerificationError(
                f"stream integrity: sequence {sequence} arrived after {last} (reordered or "
                "repeated)"
            )
        if sequence <= previous:
            raise VerificationError(
                f"stream integrity: malformed record: sequence {sequence} claims to follow "
                f"{previous}"
            )
        if previous > last:
            raise VerificationError(
                f"stream integrity: gap: sequence {sequence} follows {previous}, but the last "
                f"received is {last}; what came after {last} is missing"
            )
        if previous < last:
            raise VerificationError(
                f"stream integrity: sequence {sequence} claims to follow {previous}, but the "
                f"last received is {last} (reordered or repeated)"
            )
        size = self.chain.append(sequence, record)
        self._open.add(sequence, size, 0.0)

    def confirm(self, proposed: Window) -> Window:
        """The window to sign: ``proposed`` if it equals the consumer's own record of every
        record since its last window, else ``VerificationError`` saying what differs."""
        own = self._open.close(self.chain.head) if self._open.count else None
        if own is None:
            raise VerificationError(
                f"window {proposed.index} proposed, but no record was received since the "
                "last window (replayed or invented)"
            )
        if proposed != own:
            differs = [
                name for name, value in own.content().items() if proposed.content()[name] != value
            ]
            raise VerificationError(
                f"window {proposed.index} does not match what was received: "
                f"{', '.join(differs)} differ (tampered or replayed)"
            )
        self._open = _OpenWindow(own.index + 1, self.chain.head)
        return own
