"""``stream`` sources on MQTT: one topic (filter) of a broker, numbered by the provider.

A product names a connection and a topic::

    source = {kind = "stream", connection = "sensors", topic = "city/air/+/pm25"}

The connection is the provider's configuration (``[sources.sensors] url = "mqtt://…"``,
:class:`MqttConnection`); its credentials stay there, never in a product, a message or a
log.

MQTT has no broker-side sequence and keeps nothing for a subscriber that was not
subscribed, so the **provider** is the stream's memory:

- one MQTT client per source (topic), started at the first subscription and kept
  subscribed, numbers every message on arrival 1, 2, 3, … (skipped ones too, so the count
  of skips is exact) and keeps the last ``replay_messages`` of them (and at most
  ``replay_bytes`` of payload) in a **replay buffer** shared by every subscription of the
  source;
- a subscription is a cursor into that buffer: it reads at its own pace without a queue
  of its own, so a reader that stops reading costs nothing; if it falls behind by more
  than ``max_lag_messages`` it gets ``SubscriptionLagging``, and if what it needs next was
  already evicted, ``SequenceGone`` saying how many messages it lost: overflow is
  reported, never hidden;
- a consumer resumes after the last sequence it acknowledged as long as the buffer still
  holds what follows.

The provider keeps the buffer on disk too (:mod:`connector.sources.mqtt_journal`, one
SQLite file per source in its ``data_dir``, under the same limits), so a restart of the
provider's process continues the numbering where it stopped and still holds what its
consumers have not acknowledged. (A source made without a journal, as in tests of the
buffer alone, numbers from 1 in each process: :attr:`MqttStreamSource.epoch`.)

The client speaks MQTT 5 with a persistent session under a client id stored in the
journal (``session_expiry_seconds``; clean start only the first time a journal is used)
and subscribes at ``qos`` 1 by default, acknowledging each message only once it is
journaled. So when the connection drops mid-stream, or the provider is stopped or dies,
the broker queues what arrives meanwhile and delivers it when the client is back; what it
delivers a second time because an acknowledgement was lost is recognised and numbered
once (:class:`~connector.sources.mqtt_journal.Redeliveries`): the numbering continues
without a gap or a repeat. QoS 2 is accepted but adds nothing here: paho keeps its
half of the QoS 2 handshake in memory, so a message caught in it when the process dies
is lost, which QoS 1 with the journal's de-duplication avoids. (What a publisher sent
while the broker itself was down is gone at the publisher.)

What tds cannot see: an MQTT broker bounds the queue it keeps for each client and drops
what overflows it without telling anyone (Mosquitto: ``max_queued_messages``, 1000 by
default). A provider whose publishers burst faster than its client takes messages must
raise that limit on the broker; drops there happen before a sequence is assigned, so no
sequence check downstream can notice them. (bench/stream_source.py reports how many
messages a plain client and the source each received.)

Why paho-mqtt and not aiomqtt: paho is the maintained Eclipse reference client and runs
its own network thread with callbacks, which is exactly a replay buffer filled in the
background and read by synchronous subscriptions; aiomqtt is an asyncio layer over paho
that would add a dependency and an event-loop thread for nothing here.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from connector.errors import InvalidRequest, Unavailable
from connector.sources.base import StreamRecord, Subscription
from connector.sources.mqtt_connection import _SCHEMES, MqttConnection
from connector.sources.mqtt_journal import (
    JournalWriter,
    Redeliveries,
    ReplayJournal,
    fingerprint,
    journal_path,
)
from connector.sources.stream import (
    DeliveryCursor,
    SequenceGone,
    SkipCallback,
    SkipReason,
    SubscriptionBase,
    check_after,
    decode_message,
    stream_fields,
    url_credentials,
)

__all__ = ["MqttConnection", "MqttStreamSource", "check_topic"]

_log = logging.getLogger(__name__)


def check_topic(topic: str) -> str:
    """``topic`` if it is an MQTT topic filter tds subscribes to, else ``InvalidRequest``."""
    levels = topic.split("/")
    bad = (
        not topic
        or len(topic.encode()) > 65535
        or "\x00" in topic
        or topic.startswith("$")
        or any(("+" in level and level != "+") for level in levels)
        or any(("#" in level and level != "#") for level in levels)
        or "#" in levels[:-1]
    )
    if bad:
        raise InvalidRequest(
            f"source.topic {topic!r} is not an MQTT topic filter ('+' and '#' only as whole "
            "levels, '#' last, not a $SYS topic)"
        )
    return topic


_Entry = tuple[bytes | SkipReason, int]
"""A buffered message: its payload (or why it is skipped already) and its size. Payloads are
decoded by the readers, so the network thread does as little as possible per message: a
client slower than the publishers makes the broker drop messages for it (MQTT brokers
bound each client's queue), before any sequence is assigned."""


RECEIVE_MAXIMUM = 100
"""How many QoS 1 messages the broker may send the source's client before it acknowledges
any (MQTT 5 receive maximum): what a crash may leave unacknowledged, so the journal's
last rows cover every message the broker can send again (:class:`Redeliveries`)."""


class _ReplayBuffer:
    """The source's last messages by sequence (oldest evicted first), and who waits.

    With a journal, a new buffer starts from what it holds, so sequences continue across
    restarts of the provider; what :meth:`append` numbers goes to the journal through
    the source's :class:`JournalWriter` (committed before the broker's acknowledgement).
    """

    def __init__(
        self, max_messages: int, max_bytes: int, journal: ReplayJournal | None = None
    ) -> None:
        self._entries: collections.deque[_Entry] = collections.deque()
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._bytes = 0
        self._journal = journal
        self.oldest = 1
        """The oldest sequence held (``newest + 1`` when empty)."""
        self.newest = 0
        self.changed = threading.Condition()
        self.recent: collections.deque[tuple[int, int | None]] = collections.deque(
            maxlen=RECEIVE_MAXIMUM
        )
        """Packet ids and payload fingerprints of the last messages (:class:`Redeliveries`)."""
        if journal is not None:
            held = journal.load()
            if held:
                self.oldest, self.newest = held[0][0], held[-1][0]
                for sequence, mid, payload, size in held:
                    self._entries.append((payload, size))
                    self._bytes += size
                    self.recent.append((mid, fingerprint(payload)))
                    # Contiguous by construction; a gap would mean a damaged file.
                    if sequence != self.oldest + len(self._entries) - 1:
                        raise RuntimeError(f"{journal.path} misses sequences before {sequence}")

    def append(self, entry: _Entry, mid: int = 0) -> int:
        """Number and hold ``entry``; the oldest sequence still held after it."""
        with self.changed:
            sequence = self.newest + 1
            oldest, entries, size = self.oldest, len(self._entries) + 1, self._bytes + entry[1]
            evicted = 0
            while entries > self._max_messages or (size > self._max_bytes and entries > 1):
                size -= self._entries[evicted][1] if evicted < len(self._entries) else 0
                evicted += 1
                entries -= 1
            self._entries.append(entry)
            for _ in range(evicted):
                self._entries.popleft()
            self._bytes, self.newest, self.oldest = size, sequence, oldest + evicted
            self.recent.append((mid, fingerprint(entry[0])))
            self.changed.notify_all()
            return self.oldest

    def get(self, sequence: int) -> _Entry:
        """The entry of a held sequence (call with :attr:`changed` held)."""
        return self._entries[sequence - self.oldest]


class _MqttSubscription(SubscriptionBase):
    """A cursor into the source's replay buffer."""

    def __init__(
        self,
        source: MqttStreamSource,
        after: int,
        on_skip: SkipCallback | None,
        previous: int,
    ) -> None:
        self._source = source
        self._buffer = source._buffer
        lag = source._buffer.newest - after
        super().__init__(DeliveryCursor(after, on_skip, lag=lag, previous=previous))

    def poll(self, timeout: float) -> StreamRecord | None:
        """The next record, or ``None`` after ``timeout`` seconds without one."""
        if self._failed is not None:
            raise self._failed
        if self._source._broken is not None:
            raise Unavailable(
                f"the MQTT source of connection {self._source.connection.name!r} stopped: "
                f"{self._source._broken}; the provider must check its data directory"
            )
        deadline = time.monotonic() + timeout
        buffer = self._buffer
        limit = self._source.connection.max_lag_messages
        limit_bytes = self._source.connection.max_message_bytes
        while True:
            with buffer.changed:
                while buffer.newest <= self._cursor.last:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    buffer.changed.wait(left)
                last = self._cursor.last
                if last < buffer.oldest - 1:
                    self._failed = SequenceGone(last, buffer.oldest, self._source.buffer_name)
                    raise self._failed
                self._check_lag(buffer.newest - last, limit)
                sequence = last + 1
                payload, size = buffer.get(sequence)
            row = (
                payload
                if isinstance(payload, SkipReason)
                else decode_message(payload, self._source._fields, limit_bytes)
            )
            if isinstance(row, SkipReason):
                self._cursor.skip(sequence, row)
                continue
            return self._cursor.deliver(sequence, row, size)

    def _at_hand(self) -> bool:
        return self._buffer.newest > self._cursor.last

    @property
    def lag(self) -> int:
        return self._buffer.newest - self._cursor.last

    @property
    def connected(self) -> bool:
        return self._source.connected


class MqttStreamSource:
    """One topic filter of a named MQTT connection, as a stream source."""

    kind = "stream"

    def __init__(
        self,
        connection: MqttConnection,
        topic: str,
        fields: Sequence[str],
        *,
        on_skip: SkipCallback | None = None,
        journal_dir: Path | None = None,
    ) -> None:
        self.connection = connection
        self.topic = check_topic(topic)
        self._fields = stream_fields(fields)
        self._on_skip = on_skip
        self._journal = (
            None
            if journal_dir is None
            else ReplayJournal(journal_path(journal_dir, connection.name, self.topic, fields))
        )
        self.epoch = uuid.uuid4().hex if self._journal is None else self._journal.client_suffix
        """Names the numbering: without a journal it changes with every start of the source
        (sequences of another epoch mean nothing); with one it is the journal's own."""
        self._buffer = _ReplayBuffer(
            connection.replay_messages, connection.replay_bytes, self._journal
        )
        self._redeliveries = Redeliveries(())
        self._writer = (
            None if self._journal is None else JournalWriter(self._journal, self._journal_failed)
        )
        self._broken: str | None = None
        """Why the journal could not take a message (the client is stopped: nothing more
        is acknowledged to the broker, which keeps the rest for the next start)."""
        self.buffer_name = (
            f"the replay buffer of source connection {connection.name!r} "
            f"(replay_messages = {connection.replay_messages}; the provider may raise it)"
        )
        self._lock = threading.Lock()
        self._client: paho.Client | None = None
        self._state = threading.Condition()
        self._connected = False
        self._subscribed = False
        self._refusal: str | None = None

    def fields(self) -> tuple[str, ...]:
        """The records' fields (keys of each message's JSON object)."""
        return self._fields

    @property
    def connected(self) -> bool:
        """Whether the client is connected and subscribed now."""
        return self._connected and self._subscribed

    @contextmanager
    def subscribe(self, after: int) -> Iterator[Subscription]:
        """Every record after sequence ``after`` (0: from the oldest held) while the
        replay buffer still holds it."""
        check_after(after)
        self._start()
        self._wait_connected()
        buffer = self._buffer
        with buffer.changed:
            if after > buffer.newest:
                raise InvalidRequest(
                    f"sequence {after} is in the future: the newest is {buffer.newest}"
                )
            # A first subscription reads from the oldest held, and its first record follows
            # 0 (what the subscriber holds), as JetStream's do.
            start = buffer.oldest - 1 if after == 0 else after
            if start < buffer.oldest - 1:
                raise SequenceGone(after, buffer.oldest, self.buffer_name)
        yield _MqttSubscription(self, start, self._on_skip, previous=after)

    def start(self) -> None:
        """Connect now, before any subscription (a provider restarting with a journal:
        the broker's queue for the session drains into the journal at once rather than
        overflowing while no consumer is back yet). An unreachable broker is logged; the
        next subscription tries again."""
        with suppress(Unavailable):
            self._start()

    def close(self) -> None:
        """Disconnect and stop the network thread (the provider is stopping)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with self._state:
                self._connected = self._subscribed = False
            ending = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            if self._journal is None:
                # Without a journal a clean stop ends the session too: nothing is queued
                # on the broker for a client id that will not come back.
                ending.SessionExpiryInterval = 0
            # With one, the session stays (session_expiry_seconds): the broker queues what
            # is published while the provider is down, for the next start to number.
            if self._writer is not None:
                self._writer.flush()  # acknowledged before the session is left
            client.disconnect(properties=ending)
            client.loop_stop()
        if self._writer is not None and self._journal is not None:
            self._writer.close()  # what came after the flush: journaled, not acknowledged
            self._journal.close()
            self._writer = None

    # --- the client -------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            connection = self.connection
            parts = urlsplit(connection.url)
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"{connection.client_id or 'tds-' + connection.name}-{self.epoch[:12]}",
                protocol=MQTTProtocolVersion.MQTTv5,
                # Acknowledged once journaled (_on_message), not when the callback returns.
                manual_ack=True,
            )
            _server, (user, password) = url_credentials(connection.url)
            if user is not None:
                client.username_pw_set(user, password)
            if parts.scheme == "mqtts":
                client.tls_set()
            client.connect_timeout = connection.connect_timeout_seconds
            client.reconnect_delay_set(connection.reconnect_wait_seconds, 30)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = connection.session_expiry_seconds
            properties.ReceiveMaximum = min(RECEIVE_MAXIMUM, connection.replay_messages)
            # A journal that numbered messages before resumes its session: what was
            # published meanwhile is waiting on the broker.
            resume = self._journal is not None and not self._journal.fresh
            try:
                client.connect(
                    parts.hostname or "",
                    parts.port or _SCHEMES[parts.scheme],
                    keepalive=connection.keepalive_seconds,
                    clean_start=False if resume else paho.MQTT_CLEAN_START_FIRST_ONLY,
                    properties=properties,
                )
            except (OSError, ValueError) as exc:
                raise self._unreachable(exc.__class__.__name__) from None
            client.loop_start()
            self._client = client

    def _wait_connected(self) -> None:
        deadline = time.monotonic() + self.connection.connect_timeout_seconds
        with self._state:
            while not self.connected and self._refusal is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(left)
            refusal = self._refusal
        if refusal is not None:
            self.close()
            self._refusal = None
            raise Unavailable(
                f"the MQTT broker of source connection {self.connection.name!r} refused "
                f"{refusal}; the provider must check sources.{self.connection.name}"
            )
        if not self.connected:
            raise self._unreachable("no connection within the timeout")

    def _unreachable(self, why: str) -> Unavailable:
        _log.warning("stream connection %r: %s", self.connection.name, why)
        return Unavailable(
            f"the MQTT broker of source connection {self.connection.name!r} is unreachable; "
            "the provider must check that it is up (try again later)"
        )

    def _on_connect(
        self, client: paho.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            with self._state:
                self._refusal = f"the connection ({reason})"
                self._state.notify_all()
            return
        with self._buffer.changed:
            # Only a resumed session has messages the broker may send again.
            self._redeliveries = Redeliveries(
                list(self._buffer.recent) if flags.session_present else ()
            )
        if self._writer is not None:
            self._writer.connected(client.ack)
        with self._state:
            self._connected = True
            self._state.notify_all()
        # retainHandling 1: retained messages only for a new subscription, so a session
        # resumed after a lost connection is not sent them a second time.
        options = SubscribeOptions(qos=self.connection.qos, retainHandling=1)
        client.subscribe(self.topic, options=options)
        if flags.session_present:
            _log.info("stream connection %r back; session resumed", self.connection.name)
        elif self._journal is not None and not self._journal.fresh:
            _log.warning(
                "stream connection %r: the broker kept no session for topic %r (down longer "
                "than session_expiry_seconds?): what was published meanwhile is not numbered",
                self.connection.name,
                self.topic,
            )

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        with self._state:
            if any(r.is_failure for r in reasons):
                self._refusal = f"the subscription to {self.topic!r} ({reasons[0]})"
            else:
                self._subscribed = True
            self._state.notify_all()

    def _on_disconnect(
        self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if self._writer is not None:
            self._writer.disconnected()
        with self._state:
            was = self._connected
            self._connected = self._subscribed = False
        if was:
            _log.warning(
                "stream connection %r lost (%s); reconnecting", self.connection.name, reason
            )

    def _on_message(self, client: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if self._broken is not None:
            return  # not acknowledged: the broker keeps it for the next start
        payload = bytes(message.payload)
        mid, qos, writer = message.mid, message.qos, self._writer
        if self._redeliveries.seen(mid, payload, message.dup):
            if writer is not None:
                writer.add(mid, qos, None, 0)  # acked once what it copies is committed
            else:
                client.ack(mid, qos)
            return
        entry: _Entry = (
            (SkipReason.OVERSIZED, 0)  # counted, not kept
            if len(payload) > self.connection.max_message_bytes
            else (payload, len(payload))
        )
        oldest = self._buffer.append(entry, mid)
        if writer is not None:
            writer.add(mid, qos, (self._buffer.newest, mid, *entry), oldest)
        else:
            client.ack(mid, qos)

    def _journal_failed(self, exc: Exception) -> None:
        """The journal could not commit: stop taking messages (none more is acknowledged;
        the broker keeps them for the next start) and fail the subscriptions."""
        why = f"its replay journal failed ({exc.__class__.__name__}: {exc})"
        _log.error("stream connection %r topic %r: %s", self.connection.name, self.topic, why)
        with self._state:
            self._broken = why
        with self._buffer.changed:
            self._buffer.changed.notify_all()
        with self._lock:
            client = self._client
        if client is not None:
            client.disconnect()
