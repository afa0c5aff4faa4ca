"""``stream`` sources on NATS JetStream: one subject of a stream, read by sequence.

A product names a connection and a subject::

    source = {kind = "stream", connection = "weather", subject = "rain.gauges"}

The connection is the provider's configuration (``[sources.weather] url = "nats://…"``,
:class:`NatsConnection`); its credentials stay there, never in a product, a message or a
log. The subject must be held by a JetStream stream the provider created (its retention is
what a consumer can resume within).

Sequence numbers are the **stream's own** (``msg.metadata.sequence.stream``): they survive
provider and broker restarts, so a subscription after ``N`` is a fresh ephemeral pull
consumer with ``deliver_policy = by_start_sequence``, ``opt_start_seq = N + 1`` and no
broker-side acks (the consumer's acknowledgement is tds's signed window receipt; see
:mod:`connector.sources.stream`). Nothing is lost or doubled across a resume because the
broker numbers the messages, not tds.

How a subscription runs: it owns an asyncio event loop (nats-py is asyncio; the gRPC
server and the caller are threads) that runs only inside the reader's calls, with no
thread of its own: handing messages between threads costs half the throughput (the GIL),
and without one a reader that stops reading stops the fetching by construction, so memory
stays flat (at most ``buffer_messages`` fetched ahead) and the broker keeps the rest.
Subscribing connects and checks ``after`` against what the stream holds (past the newest:
``InvalidRequest``; older than the oldest held: ``SequenceGone``). Each :meth:`poll` with
nothing fetched left asks the broker for the next batch: JetStream's pull request
(``$JS.API.CONSUMER.MSG.NEXT``, at most ``buffer_messages``, held open by the broker up to
half a second) answered on an inbox of the subscription's own, whose callback only appends
(:class:`_Puller`); nats-py's ``PullSubscription.fetch`` makes a task, a timer and a
``uuid4`` for every message it hands over, which was half of the provider's time. A gap in
the consumer's own sequence (``metadata.sequence.consumer``, one more per message it
delivers) means a message was lost between the broker and the reader: the subscription
reconnects after the last one it read instead of going on without it. If the connection is gone
(the broker restarted, or dropped a reader that was away past its ping limit), the
poll reconnects, at most every ``reconnect_wait_seconds``, with a new consumer right after
the last sequence fetched, dropping anything at or before it; if the stream lost messages
meanwhile (its limits), the reader gets ``SequenceGone`` instead of a silent gap. The
reconnection is tds's own (nats-py's is off) so that it also re-creates the consumer,
which a restarted broker no longer has. A subscription is read from one thread at a time.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import api
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from connector.aio import cancel_the_rest
from connector.errors import (
    ConnectorError,
    InvalidRequest,
    PreconditionFailed,
    Unavailable,
)
from connector.sources.base import Row, StreamRecord, Subscription
from connector.sources.nats_connection import NatsConnection
from connector.sources.stream import (
    DeliveryCursor,
    SequenceGone,
    SkipCallback,
    SkipReason,
    SubscriptionBase,
    check_after,
    decode_message,
    stream_fields,
)

__all__ = ["NatsConnection", "NatsStreamSource", "check_subject"]

_log = logging.getLogger(__name__)

_FETCH_WAIT = 0.5
"""Longest one fetch waits on the broker for messages."""

_FETCH_MIN = 0.01
"""Shortest wait given to a fetch (a poll with no time left still asks once)."""

_REQUEST_GRACE = 1.0
"""How long past its expiry a pull request the broker never closed (a lost status) is
still waited for before another is sent."""

_REQUEST_ENDS = frozenset({api.StatusCode.NO_MESSAGES.value, api.StatusCode.REQUEST_TIMEOUT.value})
"""Statuses that close a pull request normally (nothing more now, or it expired)."""


class _Puller:
    """One pull request at a time on a JetStream consumer, answered on our own inbox.

    The inbox's callback appends each message and counts down the open request; the
    broker closes a request it could not fill with a status (404 nothing more, 408
    expired). So at most ``batch`` messages are ever on their way or waiting here: the
    memory bound. Any other status (409: the consumer was deleted, the server is going
    away, …) fails the next :meth:`fetch` with a ``nats.errors.Error``, which the
    subscription answers by reconnecting.
    """

    def __init__(self, nc: NatsClient, next_subject: str, batch: int) -> None:
        self._nc = nc
        self._next = next_subject
        self._batch = batch
        self._inbox = nc.new_inbox()
        self._arrived: list[Msg] = []
        self._open = 0
        """Messages the open request may still bring (0: none is open)."""
        self._open_until = 0.0
        self._ready = asyncio.Event()
        self._error: nats.errors.Error | None = None
        self._sub: NatsSubscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(api.Header.STATUS) if headers else None
        if status is None:
            self._arrived.append(msg)
            self._open = max(0, self._open - 1)
        elif status in _REQUEST_ENDS:
            self._open = 0
        elif status != api.StatusCode.CONTROL_MESSAGE:
            self._open = 0
            why = headers.get(api.Header.DESCRIPTION, "") if headers else ""
            self._error = nats.errors.Error(f"pull request ended: {status} {why}".strip())
        self._ready.set()

    async def fetch(self, wait: float) -> list[Msg]:
        """What arrived, waiting up to ``wait`` for something if nothing has; a request
        for the next batch is sent when none is open."""
        if not self._arrived and self._error is None:
            self._ready.clear()  # before the publish, which may let the callback run
            now = time.monotonic()
            if not self._open or now > self._open_until:
                request = {"batch": self._batch, "expires": int(_FETCH_WAIT * 1e9)}
                self._open, self._open_until = self._batch, now + _FETCH_WAIT + _REQUEST_GRACE
                await self._nc.publish(self._next, json.dumps(request).encode(), self._inbox)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        arrived, self._arrived = self._arrived, []
        return arrived


_Item = tuple[int, Row | SkipReason, int]
"""What the fetching thread queues: ``(sequence, row or skip reason, size)``."""


@dataclass
class _Consumer:
    """One connection and the ephemeral pull consumer made on it."""

    nc: NatsClient
    js: JetStreamContext
    stream: str
    name: str
    puller: _Puller
    lag: int
    """Messages the stream held past the start when the consumer was made (at most)."""

    async def release(self) -> None:
        """Delete the consumer now (not after its inactivity threshold) and disconnect."""
        if self.nc.is_connected:
            with suppress(Exception):
                await asyncio.wait_for(self.js.delete_consumer(self.stream, self.name), 2.0)
        with suppress(Exception):
            await self.nc.close()


class _NatsSubscription(SubscriptionBase):
    """A subscription: an event loop of its own, driven by the reader's :meth:`poll`."""

    def __init__(self, source: NatsStreamSource, after: int, on_skip: SkipCallback | None) -> None:
        self._source = source
        self._connection = source.connection
        super().__init__(DeliveryCursor(after, on_skip))
        self._local: collections.deque[_Item] = collections.deque()
        """The last fetch, not yet read: at most ``buffer_messages``."""
        self._last = after
        """The last sequence fetched (what a new consumer starts after)."""
        self._pending = 0
        """Messages the broker holds past the last one fetched."""
        self._consumer: _Consumer | None = None
        self._gone: SequenceGone | None = None
        """Messages after :attr:`_last` were removed from the stream: raised once the
        reader has what came before."""
        self._retry_at = 0.0
        self._delivered = 0
        """Messages the current broker-side consumer delivered (its own sequence)."""
        self._loop = asyncio.new_event_loop()

    # --- reader side ----------------------------------------------------------------

    def poll(self, timeout: float) -> StreamRecord | None:
        """The next record, or ``None`` after ``timeout`` seconds without one (longer, up
        to ``connect_timeout_seconds``, while a reconnection attempt is under way)."""
        if self._failed is not None:
            raise self._failed
        deadline = time.monotonic() + timeout
        while True:
            if not self._local:
                try:
                    self._fill(deadline)
                except ConnectorError as exc:
                    self._failed = exc
                    raise
                if not self._local:
                    return None
            sequence, row, size = self._local[0]
            if not isinstance(row, SkipReason):
                # The lag counts the record at hand: it is not delivered yet.
                self._check_lag(self.lag, self._connection.max_lag_messages)
            self._local.popleft()
            if isinstance(row, SkipReason):
                self._cursor.skip(sequence, row)
                continue
            return self._cursor.deliver(sequence, row, size)

    def _at_hand(self) -> bool:
        return bool(self._local)

    @property
    def lag(self) -> int:
        return self._pending + len(self._local)

    @property
    def connected(self) -> bool:
        return self._consumer is not None and self._consumer.nc.is_connected

    # --- the broker -----------------------------------------------------------------

    def start(self, after: int) -> None:
        """Connect and check ``after``; raise what the caller must be told."""
        try:
            self._consumer = self._loop.run_until_complete(self._open(after + 1))
        except BaseException:
            self.close()
            raise
        self._cursor.best_lag = self._pending = self._consumer.lag

    def close(self) -> None:
        """Delete the broker-side consumer and disconnect."""
        if self._loop.is_closed():
            return
        if self._consumer is not None:
            self._loop.run_until_complete(self._consumer.release())
            self._consumer = None
        # Let the client's cancelled reader and flusher tasks finish before the loop ends.
        self._loop.run_until_complete(cancel_the_rest())
        self._loop.close()

    def _fill(self, deadline: float) -> None:
        """Fetch the next batch into :attr:`_local`, reconnecting if the connection is gone.

        Fetching happens only here, when the reader asks: a reader that stops reading
        stops the fetching, and the broker keeps what waits.
        """
        while not self._local:
            if self._gone is not None:
                raise self._gone
            consumer = self._consumer
            if consumer is None or not consumer.nc.is_connected:
                if consumer is not None:
                    _log.warning("stream connection %r lost; reconnecting", self._connection.name)
                    self._loop.run_until_complete(consumer.release())
                    self._consumer = None
                if not self._reconnect(deadline):
                    return
                continue
            wait = min(_FETCH_WAIT, deadline - time.monotonic())
            try:
                # Nothing fetched in time is an empty fetch, not a failure: a connection
                # that is gone is noticed at the top of the loop.
                self._loop.run_until_complete(self._fetch(consumer, max(wait, _FETCH_MIN)))
            except (nats.errors.Error, OSError) as exc:
                _log.warning(
                    "stream connection %r: fetch failed (%s); reconnecting",
                    self._connection.name,
                    exc.__class__.__name__,
                )
                self._loop.run_until_complete(consumer.release())
                self._consumer = None
                continue
            if time.monotonic() >= deadline:
                return

    def _reconnect(self, deadline: float) -> bool:
        """One attempt once ``reconnect_wait_seconds`` have passed since the last; whether
        the subscription is connected again."""
        now = time.monotonic()
        if now < self._retry_at:
            time.sleep(max(0.0, min(self._retry_at, deadline) - now))
            if time.monotonic() < self._retry_at:
                return False
        self._retry_at = time.monotonic() + self._connection.reconnect_wait_seconds
        try:
            self._consumer = self._loop.run_until_complete(self._open(self._last + 1))
        except Unavailable:
            return False
        # Anything else (messages lost meanwhile, the stream deleted) ends the subscription.
        _log.info(
            "stream connection %r back; continuing after sequence %d",
            self._connection.name,
            self._last,
        )
        return True

    def _unreachable(self, why: object) -> Unavailable:
        _log.warning("stream connection %r: %s", self._connection.name, why)
        return Unavailable(
            f"the NATS server of source connection {self._connection.name!r} is unreachable; "
            "the provider must check that it is up (try again later)"
        )

    async def _connect(self) -> NatsClient:
        connection = self._connection

        async def quiet(exc: Exception) -> None:
            # nats-py logs a traceback per error by default; one line, no secrets.
            _log.debug("stream connection %r: %s", connection.name, exc.__class__.__name__)

        nc = NatsClient()
        try:
            await asyncio.wait_for(
                nc.connect(
                    name=f"tds-{connection.name}",
                    connect_timeout=max(1, round(connection.connect_timeout_seconds)),
                    allow_reconnect=False,
                    error_cb=quiet,
                    **connection._connect_options(),
                ),
                timeout=connection.connect_timeout_seconds + 1,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            # A refused login leaves the socket open inside the client: close it.
            with suppress(Exception):
                await nc.close()
            if "authorization" in str(exc).lower():
                _log.warning("stream connection %r: credentials refused", connection.name)
                raise Unavailable(
                    f"the NATS server of source connection {connection.name!r} refused its "
                    f"credentials; the provider must check sources.{connection.name}"
                ) from None
            raise self._unreachable(exc.__class__.__name__) from None
        return nc

    async def _open(self, next_sequence: int) -> _Consumer:
        """Connect, find the stream, check what it holds, and start a consumer there."""
        source = self._source
        nc = await self._connect()
        try:
            js = nc.jetstream()
            try:
                stream = await js.find_stream_name_by_subject(source.subject)
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                raise PreconditionFailed(
                    f"no JetStream stream of source connection {self._connection.name!r} "
                    f"holds subject {source.subject!r}; the provider must create one"
                ) from None
            oldest = info.state.first_seq
            newest = info.state.last_seq
            if next_sequence == 1:
                next_sequence = max(1, oldest)  # a new subscription: from the oldest held
            after = next_sequence - 1
            self._last = after
            if after > newest:
                raise InvalidRequest(
                    f"sequence {after} is in the future: the stream's newest is {newest}"
                )
            if after < oldest - 1:
                raise SequenceGone(after, oldest, f"the JetStream stream {stream!r}", at_least=True)
            name = f"tds-{uuid.uuid4().hex}"
            config = ConsumerConfig(
                name=name,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=next_sequence,
                ack_policy=AckPolicy.NONE,
                filter_subject=source.subject,
                inactive_threshold=60.0,
                mem_storage=True,
            )
            await js.add_consumer(stream, config=config)
            puller = _Puller(
                nc,
                f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{name}",
                self._connection.buffer_messages,
            )
            await puller.start()
        except BaseException:
            with suppress(Exception):
                await nc.close()
            raise
        self._delivered = 0
        return _Consumer(nc, js, stream, name, puller, max(0, newest - after))

    async def _fetch(self, consumer: _Consumer, wait: float) -> None:
        """Fetch at most ``buffer_messages`` into :attr:`_local`, waiting up to ``wait``.

        A consumer skips what the stream no longer holds without a word, so the first jump
        in the sequence of a batch is checked against the stream's oldest sequence: if the
        stream's limits removed messages after the last one fetched, what came before the
        jump is delivered and then ``SequenceGone`` ends the subscription (a jump over other
        subjects of the stream is normal).
        """
        fields = self._source.fields()
        limit = self._connection.max_message_bytes
        last = self._last
        checked = False
        batch = await consumer.puller.fetch(wait)
        for msg in batch:
            meta = msg.metadata
            if meta.sequence.consumer != self._delivered + 1:
                self._last = last
                raise nats.errors.Error(
                    f"message {self._delivered + 1} of the consumer did not arrive"
                )
            self._delivered += 1
            sequence = meta.sequence.stream
            if sequence <= last:
                continue  # fetched before a reconnection
            if sequence > last + 1 and not checked:
                checked = True
                oldest = (await consumer.js.stream_info(consumer.stream)).state.first_seq
                if oldest > last + 1:
                    self._gone = SequenceGone(
                        last, oldest, f"the JetStream stream {consumer.stream!r}", at_least=True
                    )
                    break
            self._local.append((sequence, decode_message(msg.data, fields, limit), len(msg.data)))
            self._pending = meta.num_pending
            last = sequence
        self._last = last


def check_subject(subject: str) -> str:
    """``subject`` if it is a NATS subject tds subscribes to, else ``InvalidRequest``."""
    if not subject or any(c.isspace() for c in subject) or subject.startswith("$"):
        raise InvalidRequest(
            f"source.subject {subject!r} is not a NATS subject (tokens separated by dots, "
            "no spaces, not a system subject)"
        )
    return subject


class NatsStreamSource:
    """One JetStream subject of a named connection, as a stream source."""

    kind = "stream"

    def __init__(
        self,
        connection: NatsConnection,
        subject: str,
        fields: Sequence[str],
        *,
        on_skip: SkipCallback | None = None,
    ) -> None:
        self.connection = connection
        self.subject = check_subject(subject)
        self._fields = stream_fields(fields)
        self._on_skip = on_skip

    def fields(self) -> tuple[str, ...]:
        """The records' fields (keys of each message's JSON object)."""
        return self._fields

    @contextmanager
    def subscribe(self, after: int) -> Iterator[Subscription]:
        """Every record after stream sequence ``after`` (0: from the oldest held)."""
        check_after(after)
        subscription = _NatsSubscription(self, after, self._on_skip)
        subscription.start(after)  # closes what it opened if it raises
        try:
            yield subscription
        finally:
            subscription.close()
