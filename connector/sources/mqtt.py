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
  holds what follows. Sequences restart at 1 when the provider's process restarts
  (:attr:`MqttStreamSource.epoch` changes): the buffer lives in memory.

The client speaks MQTT 5 with a persistent session (clean start on the first connection
only, ``session_expiry_seconds``) and subscribes at ``qos`` 2 by default, so when the
connection drops mid-stream the broker queues what arrives meanwhile and delivers it,
exactly once, when paho's network thread reconnects; the numbering continues without a
gap. (What a publisher sent while the broker itself was down is gone at the publisher.)

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
from contextlib import contextmanager
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


class _ReplayBuffer:
    """The source's last messages by sequence (oldest evicted first), and who waits."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self._entries: collections.deque[_Entry] = collections.deque()
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._bytes = 0
        self.oldest = 1
        """The oldest sequence held (``newest + 1`` when empty)."""
        self.newest = 0
        self.changed = threading.Condition()

    def append(self, entry: _Entry) -> None:
        with self.changed:
            self._entries.append(entry)
            self._bytes += entry[1]
            self.newest += 1
            while len(self._entries) > self._max_messages or (
                self._bytes > self._max_bytes and len(self._entries) > 1
            ):
                self._bytes -= self._entries.popleft()[1]
                self.oldest += 1
            self.changed.notify_all()

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
    ) -> None:
        self.connection = connection
        self.topic = check_topic(topic)
        self._fields = stream_fields(fields)
        self._on_skip = on_skip
        self.epoch = uuid.uuid4().hex
        """Changes with every start of the source: sequences of another epoch mean nothing."""
        self._buffer = _ReplayBuffer(connection.replay_messages, connection.replay_bytes)
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
                    f"sequence {after} is in the future: the newest is {buffer.newest} (MQTT "
                    "sequences restart when the provider restarts)"
                )
            # A first subscription reads from the oldest held, and its first record follows
            # 0 (what the subscriber holds), as JetStream's do.
            start = buffer.oldest - 1 if after == 0 else after
            if start < buffer.oldest - 1:
                raise SequenceGone(after, buffer.oldest, self.buffer_name)
        yield _MqttSubscription(self, start, self._on_skip, previous=after)

    def close(self) -> None:
        """Disconnect and stop the network thread (the provider is stopping)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with self._state:
                self._connected = self._subscribed = False
            # A clean stop ends the session too: nothing is queued on the broker for a
            # client id that will not come back (each process uses its own).
            ending = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            ending.SessionExpiryInterval = 0
            client.disconnect(properties=ending)
            client.loop_stop()

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
            try:
                client.connect(
                    parts.hostname or "",
                    parts.port or _SCHEMES[parts.scheme],
                    keepalive=connection.keepalive_seconds,
                    clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY,
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
        with self._state:
            self._connected = True
            self._state.notify_all()
        # retainHandling 1: retained messages only for a new subscription, so a session
        # resumed after a lost connection is not sent them a second time.
        options = SubscribeOptions(qos=self.connection.qos, retainHandling=1)
        client.subscribe(self.topic, options=options)
        if flags.session_present:
            _log.info("stream connection %r back; session resumed", self.connection.name)

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
        with self._state:
            was = self._connected
            self._connected = self._subscribed = False
        if was:
            _log.warning(
                "stream connection %r lost (%s); reconnecting", self.connection.name, reason
            )

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        if len(payload) > self.connection.max_message_bytes:
            self._buffer.append((SkipReason.OVERSIZED, 0))  # counted, not kept
        else:
            self._buffer.append((payload, len(payload)))
