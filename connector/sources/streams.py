"""The provider's broker connections, and the stream source of a published product.

Like :class:`connector.sources.sql.SqlSources` for databases: built from the ``[sources]``
of the configuration (it keeps the NATS and MQTT connections, the databases are
``SqlSources``'), it checks a ``stream`` product at publish (the connection is configured
and is a broker of the kind its subject or topic names) and opens its source at subscribe.

A NATS source is made per subscription (each has its own ephemeral consumer); an MQTT
source is one per (connection, topic, fields), kept for the provider's life, because its
replay buffer is what subscribers resume within (see :mod:`connector.sources.mqtt`); the
node gives it a directory to journal that buffer in, so it outlives the process too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from connector.catalog.products import Product, Source
from connector.errors import InvalidRequest
from connector.sources.base import StreamSource
from connector.sources.mqtt_connection import MqttConnection
from connector.sources.nats_connection import NatsConnection
from connector.sources.stream import SkipReason, stream_fields

if TYPE_CHECKING:
    from connector.sources.mqtt import MqttStreamSource

__all__ = ["StreamSources"]

_log = logging.getLogger(__name__)

BrokerConnection = NatsConnection | MqttConnection


def _log_skip(sequence: int, reason: SkipReason) -> None:
    _log.warning("stream message %d skipped: %s", sequence, reason.value)


class StreamSources:
    """The provider's NATS and MQTT connections, by name."""

    def __init__(self, connections: Mapping[str, object], journal_dir: Path | None = None) -> None:
        self._connections: dict[str, BrokerConnection] = {
            name: c
            for name, c in connections.items()
            if isinstance(c, NatsConnection | MqttConnection)
        }
        self._others = {name for name in connections if name not in self._connections}
        self._mqtt: dict[tuple[str, str, tuple[str, ...]], MqttStreamSource] = {}
        self._journal_dir = journal_dir
        """Where MQTT sources keep their replay buffers on disk (None: in memory only)."""
        self._lock = threading.Lock()

    def connection(self, name: str) -> BrokerConnection:
        """The broker ``name``, or ``InvalidRequest`` when none is configured."""
        found = self._connections.get(name)
        if found is None:
            what = "a database, not a broker" if name in self._others else "not configured"
            raise InvalidRequest(
                f"source.connection {name!r} is {what} on this connector; the provider must "
                f"add [sources.{name}] with a nats:// or mqtt:// url to the configuration"
            )
        return found

    def check(self, source: Source, fields: Sequence[str]) -> BrokerConnection:
        """At publish: the connection is a configured broker, named with the right address
        (a subject for NATS, a topic for MQTT), and both are well formed."""
        connection = self.connection(source.connection)
        stream_fields(fields)
        if isinstance(connection, NatsConnection):
            if not source.subject:
                raise InvalidRequest(
                    f"source.connection {source.connection!r} is a NATS server: name the "
                    "JetStream subject as source.subject"
                )
            from connector.sources.nats import check_subject

            check_subject(source.subject)
        else:
            if not source.topic:
                raise InvalidRequest(
                    f"source.connection {source.connection!r} is an MQTT broker: name the "
                    "topic as source.topic"
                )
            from connector.sources.mqtt import check_topic

            check_topic(source.topic)
        return connection

    def source(self, source: Source, fields: Sequence[str]) -> StreamSource:
        """The stream source of a published product (checked again as at publish)."""
        connection = self.check(source, fields)
        if isinstance(connection, NatsConnection):
            from connector.sources.nats import NatsStreamSource

            return NatsStreamSource(connection, source.subject, fields, on_skip=_log_skip)
        key = (connection.name, source.topic, tuple(fields))
        with self._lock:
            found = self._mqtt.get(key)
            if found is None:
                from connector.sources.mqtt import MqttStreamSource

                found = self._mqtt[key] = MqttStreamSource(
                    connection,
                    source.topic,
                    fields,
                    on_skip=_log_skip,
                    journal_dir=self._journal_dir,
                )
        return found

    def resume(self, products: Iterable[Product]) -> threading.Thread | None:
        """Start, in the background, the MQTT sources of ``products`` that journaled
        messages before (the provider restarted): their broker sessions hold what was
        published meanwhile, which is numbered now instead of waiting, and possibly
        overflowing the broker's queue, until a consumer subscribes again."""
        if self._journal_dir is None:
            return None
        from connector.sources.mqtt_journal import journal_path

        due = []
        for product in products:
            source = product.source
            connection = self._connections.get(source.connection)
            if (
                source.kind == "stream"
                and isinstance(connection, MqttConnection)
                and source.topic
                and journal_path(
                    self._journal_dir, connection.name, source.topic, product.fields
                ).exists()
            ):
                due.append((source, product.fields))
        if not due:
            return None

        def start() -> None:
            for source, fields in due:
                try:
                    found = self.source(source, fields)
                except InvalidRequest as exc:  # the configuration changed since
                    _log.warning("stream source of topic %r not resumed: %s", source.topic, exc)
                    continue
                start_now = getattr(found, "start", None)
                if start_now is not None:
                    start_now()

        thread = threading.Thread(target=start, daemon=True, name="mqtt-resume")
        thread.start()
        return thread

    def close(self) -> None:
        """Stop every MQTT client (the provider is stopping)."""
        with self._lock:
            sources, self._mqtt = list(self._mqtt.values()), {}
        for found in sources:
            found.close()
