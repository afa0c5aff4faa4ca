"""What every stream source shares: limits, message decoding, skips, lag and its errors.

A ``stream`` product names a broker connection from the provider's configuration and a
subject (NATS JetStream, :mod:`connector.sources.nats`) or topic (MQTT,
:mod:`connector.sources.mqtt`). Both adapters implement
:class:`connector.sources.base.StreamSource`; this module holds what they share.

How the Subscribe RPC is meant to use them (the wiring is the next step)
-----------------------------------------------------------------------

Provider, for ``Subscribe(agreement, from_sequence)``, with ``(last sequence, chain head,
next window index)`` of the agreement's last countersigned window from its store::

    windows = WindowAccumulator(HashChain(head, last), every_messages=N, every_seconds=T,
                                next_index=index)           # connector.sources.windows
    with source.subscribe(after=from_sequence) as sub:      # Unavailable / InvalidRequest /
        while True:                                        # SequenceGone: refuse, say why
            record = sub.poll(0.25)                        # None: nothing new in 0.25 s
            decide("stream.continue")                      # every return, record or not
            window = windows.tick() if record is None else None
            if record is not None:
                delivered = project_and_mask(record.row)   # the offer's fields and masks
                send(record.sequence, record.previous, delivered)
                window = windows.add(record.sequence, delivered)
            if window:                                     # the consumer signs it, the
                send(window.content())                     # provider checks, countersigns
                                                           # and both log it
        # on suspension or termination: windows.flush() closes the last partial window

Consumer: ``StreamChecker(after=from_sequence, head=…, next_index=…)``; ``accept`` each
record (a gap, repeat or reordering raises ``VerificationError``: an integrity failure
that ends the subscription), ``confirm`` each proposed window before signing it.

A subscription before the agreement's last countersigned window (``from_sequence`` lower
than what the consumer already acknowledged) is the RPC layer's to refuse or allow: the
source serves any sequence it still holds.

- **Sequence numbers** are the source's: JetStream's stream sequence (so they survive a
  provider or broker restart), or for MQTT a number the source assigns on arrival. They
  increase strictly but need not be contiguous (other subjects of the same JetStream
  stream, skipped messages), so each record also carries ``previous``, the sequence the
  subscription delivered before it; the consumer's
  :class:`~connector.sources.windows.StreamChecker` refuses any record whose ``previous``
  is not the last sequence it holds: a gap, a repeat and a reordering all look like that.
- **Acknowledgement** is the consumer's signed window receipt, kept in tds's own store
  (shared by a provider's replicas), not a broker-side consumer's ack floor: one source of
  truth. A consumer resumes with ``from_sequence`` = the ``last_sequence`` of its last
  countersigned window, so both sides restart the chain from that window's ``head`` (the
  provider knows no head in the middle of a window); records it received after that
  window come again, so its holdings should commit a window's records when the window is
  confirmed, not before. The NATS source then creates a fresh ephemeral consumer starting
  right after it, which is exactly "nothing lost or doubled" because the stream's
  sequence numbers are the broker's own.
- **Windows** close every N records or T seconds
  (:class:`~connector.sources.windows.WindowAccumulator`); provider and consumer compute
  the same :class:`~connector.sources.windows.Window` independently from the same chain,
  so a receipt the consumer signs is one the provider can check field for field.
- **Suspension**: :class:`SubscriptionLagging` (the reader fell too far behind) and
  :class:`SequenceGone` (what comes next is no longer held: MQTT replay buffer overflow,
  JetStream limits) end the subscription with a reason for the SUSPENDED state; the
  consumer resumes later from its last acknowledged sequence, or learns exactly how much
  was lost. A broker that goes away mid-stream is *not* an error: the subscription
  reconnects and continues after the last sequence it delivered (:attr:`connected` says
  whether it is reachable now, for a live status line).
- **Bad messages** (not JSON, not a JSON object, larger than ``max_message_bytes``) are
  never delivered and never stop the stream: each is counted by reason
  (``Subscription.skipped``) and reported through the ``on_skip`` callback with its
  sequence, for the provider's log.

Memory is bounded per subscription: NATS fetches only when the reader polls, at most
``buffer_messages`` at a time; MQTT subscriptions read one shared replay buffer of
``replay_messages`` (and ``replay_bytes``); neither grows when a reader stops reading.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from itertools import repeat
from typing import Any
from urllib.parse import unquote, urlsplit

from connector.errors import (
    ConfigError,
    ConnectorError,
    InvalidRequest,
    PreconditionFailed,
    Unavailable,
)
from connector.sources.base import MISSING, Row, StreamRecord

__all__ = [
    "I_JSON_MAX_INT",
    "DeliveryCursor",
    "SequenceGone",
    "SkipCallback",
    "SkipReason",
    "SubscriptionBase",
    "SubscriptionLagging",
    "as_object",
    "check_after",
    "check_limits",
    "decode_message",
    "redacted_url",
    "stream_fields",
    "url_credentials",
]

I_JSON_MAX_INT = 2**53 - 1
"""Largest integer a record may carry (I-JSON, RFC 7493): what canonical JSON can sign."""


class SkipReason(StrEnum):
    """Why a broker message was not delivered."""

    NOT_JSON = "not_json"
    """Not UTF-8 JSON (or JSON outside I-JSON: NaN, Infinity, integers past 2**53 - 1)."""
    NOT_OBJECT = "not_object"
    """JSON, but not an object (an array, a number, a string)."""
    OVERSIZED = "oversized"
    """Larger than the connection's ``max_message_bytes``."""


SkipCallback = Callable[[int, SkipReason], None]
"""Called with the sequence and reason of each skipped message, in the reader's thread."""


class SubscriptionLagging(Unavailable):
    """The reader fell further behind the source than the configured lag allows."""

    def __init__(self, lag: int, limit: int, last: int) -> None:
        super().__init__(
            f"the subscriber is {lag} messages behind the stream and fell more than {limit} "
            "further behind while subscribed (max_lag_messages); the subscription is "
            f"suspended: resume after sequence {last} when it can keep up"
        )
        self.lag = lag
        self.last = last


class SequenceGone(PreconditionFailed):
    """Records after the requested sequence are no longer held by the source."""

    def __init__(self, after: int, oldest: int, where: str, *, at_least: bool = False) -> None:
        self.after = after
        self.oldest = oldest
        self.lost = max(0, oldest - 1 - after)
        """Sequences between ``after`` and the oldest one held (messages lost)."""
        many = f"at most {self.lost}" if at_least else str(self.lost)
        super().__init__(
            f"sequences {after + 1} to {oldest - 1} are no longer held by {where} "
            f"({many} messages lost); the oldest held is {oldest}: subscribe after "
            f"{oldest - 1} to continue from there"
        )


def check_limits(where: str, **limits: int) -> None:
    """``ConfigError`` unless every limit (``max_message_bytes=…``) is a positive integer."""
    for field, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}.{field} must be a positive integer")


def redacted_url(url: str) -> str:
    """``url`` without its credentials (``scheme://***@host:port``), for reprs and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def url_credentials(url: str) -> tuple[str, tuple[str | None, str | None]]:
    """``url`` without its userinfo, and the (percent-decoded) user and password in it."""
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl(), (user, password)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not I-JSON")


def _i_json_int(text: str) -> int:
    value = int(text)
    if not -I_JSON_MAX_INT <= value <= I_JSON_MAX_INT:
        raise ValueError("integer outside I-JSON")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number outside I-JSON")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_int=_i_json_int, parse_float=_finite_float
)
"""One decoder for every message (``json.loads`` with hooks builds one per call); the
payload is UTF-8 (I-JSON), not any encoding ``json.loads`` would guess from bytes."""


def decode_message(
    payload: bytes | bytearray, fields: Sequence[str], max_message_bytes: int
) -> Row | SkipReason:
    """One broker message as a row of ``fields``, or why it cannot be delivered.

    The message must be a UTF-8 JSON object of at most ``max_message_bytes`` bytes whose
    numbers fit I-JSON (so every delivered record has a canonical form to hash and sign).
    Keys outside ``fields`` are dropped; a field the object lacks is :data:`MISSING`.
    """
    if len(payload) > max_message_bytes:
        return SkipReason.OVERSIZED
    try:
        value = _DECODER.decode(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return SkipReason.NOT_JSON
    if not isinstance(value, dict):
        return SkipReason.NOT_OBJECT
    return tuple(map(value.get, fields, repeat(MISSING)))


class DeliveryCursor:
    """A subscription's reader side: the last sequence delivered, and the skips counted.

    Both adapters hand every message they read, in source order, to :meth:`deliver` or
    :meth:`skip`; ``previous`` of each record is then exactly what the consumer must hold.
    """

    def __init__(
        self,
        after: int,
        on_skip: SkipCallback | None,
        lag: int = 0,
        previous: int | None = None,
    ) -> None:
        self.last = after
        """The last sequence delivered or skipped (``after`` before any)."""
        self.skipped: dict[str, int] = {}
        self._on_skip = on_skip
        self._previous = after if previous is None else previous
        """What the first record follows: ``after``, or 0 for a subscription from the
        oldest held (the subscriber holds nothing yet)."""
        self.best_lag = lag
        """The smallest lag seen (from the lag when the subscription began)."""

    def check_lag(self, lag: int, limit: int) -> None:
        """``SubscriptionLagging`` when the reader is ``limit`` messages further behind than
        it has been since it subscribed.

        Counting from its best position, not from zero, lets a consumer that resumes with a
        backlog catch up (its lag shrinks), while one that reads slower than the feed
        arrives is suspended once it has lost ``limit`` messages of ground.
        """
        self.best_lag = min(self.best_lag, lag)
        if lag > self.best_lag + limit:
            raise SubscriptionLagging(lag, limit, self.last)

    def deliver(self, sequence: int, row: Row, size: int) -> StreamRecord:
        """The record to hand to the reader; ``sequence`` must be past every earlier one."""
        if sequence <= self.last:
            raise RuntimeError(f"sequence {sequence} is not after {self.last}")
        record = StreamRecord(sequence, self._previous, row, size)
        self.last = self._previous = sequence
        return record

    def skip(self, sequence: int, reason: SkipReason) -> None:
        """Count a message that is not delivered (and tell ``on_skip``)."""
        self.last = sequence
        self.skipped[reason.value] = self.skipped.get(reason.value, 0) + 1
        if self._on_skip is not None:
            self._on_skip(sequence, reason)


class SubscriptionBase(ABC):
    """What both adapters' subscriptions share: the cursor, the failure that ended them,
    iteration and the skip counts. Subclasses implement ``poll``, ``lag``, ``connected``."""

    def __init__(self, cursor: DeliveryCursor) -> None:
        self._cursor = cursor
        self._failed: ConnectorError | None = None

    @abstractmethod
    def poll(self, timeout: float) -> StreamRecord | None:
        """The next record, or ``None`` when none came within ``timeout`` seconds."""

    @abstractmethod
    def _at_hand(self) -> bool:
        """Whether a message is here already: a :meth:`poll` now would not wait for the
        broker."""

    def poll_batch(self, timeout: float, limit: int) -> list[StreamRecord]:
        """The next record and those at hand after it, at most ``limit`` (see
        :meth:`connector.sources.base.Subscription.poll_batch`)."""
        first = self.poll(timeout)
        if first is None:
            return []
        batch = [first]
        while len(batch) < limit and self._at_hand():
            try:
                record = self.poll(0)
            except ConnectorError as exc:
                # Kept for the next poll to raise, once this batch is delivered: the
                # records before the failure are not lost to it.
                self._failed = self._failed or exc
                break
            if record is None:
                break
            batch.append(record)
        return batch

    def __iter__(self) -> Iterator[StreamRecord]:
        while True:
            record = self.poll(3600.0)
            if record is not None:
                yield record

    @property
    def skipped(self) -> Mapping[str, int]:
        return dict(self._cursor.skipped)

    def _check_lag(self, lag: int, limit: int) -> None:
        """:meth:`DeliveryCursor.check_lag`, remembered: a suspended subscription stays so."""
        try:
            self._cursor.check_lag(lag, limit)
        except SubscriptionLagging as exc:
            self._failed = exc
            raise


def as_object(fields: Sequence[str], row: Row) -> dict[str, Any]:
    """A row as the JSON object it is delivered as: a :data:`MISSING` field left out (the
    form :class:`~connector.sources.windows.HashChain` links)."""
    return {name: value for name, value in zip(fields, row, strict=True) if value is not MISSING}


def check_after(after: object) -> None:
    """``InvalidRequest`` unless ``after`` is a sequence number (0 or more)."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidRequest("from_sequence must be a non-negative integer")


def stream_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """A stream product's fields, or ``InvalidRequest`` unless each is named once."""
    if not fields or len(set(fields)) != len(fields):
        raise InvalidRequest("a stream product needs its fields, each named once")
    return tuple(fields)
