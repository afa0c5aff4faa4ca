"""The provider's broker connections: a stream product is checked against them at publish."""

from __future__ import annotations

import pytest

from connector.catalog.products import Source
from connector.errors import InvalidRequest
from connector.sources.mqtt_connection import MqttConnection
from connector.sources.nats_connection import NatsConnection
from connector.sources.sql_connection import SqlConnection
from connector.sources.streams import StreamSources

SOURCES = StreamSources(
    {
        "weather": NatsConnection(name="weather", url="nats://127.0.0.1:4222"),
        "sensors": MqttConnection(name="sensors", url="mqtt://127.0.0.1:1883"),
        "shop": SqlConnection(name="shop", url="postgresql://u:pw@127.0.0.1/db"),
    }
)


def stream(connection: str, subject: str = "", topic: str = "") -> Source:
    return Source(
        kind="stream", format="jsonl", connection=connection, subject=subject, topic=topic
    )


def test_a_subject_on_a_nats_server_and_a_topic_on_an_mqtt_broker_pass() -> None:
    assert SOURCES.check(stream("weather", subject="rain.gauges"), ["mm"]).name == "weather"
    assert SOURCES.check(stream("sensors", topic="city/air/+/pm25"), ["pm25"]).name == "sensors"


@pytest.mark.parametrize(
    "source, message",
    [
        (stream("rain", subject="a"), r"'rain' is not configured.*add \[sources.rain\]"),
        (stream("shop", subject="a"), "'shop' is a database, not a broker"),
        (stream("weather", topic="a/b"), "is a NATS server: name the JetStream subject"),
        (stream("sensors", subject="a.b"), "is an MQTT broker: name the topic"),
        (stream("weather", subject="$JS.API.>"), "is not a NATS subject"),
        (stream("weather", subject="rain gauges"), "is not a NATS subject"),
        (stream("sensors", topic="city/#/pm25"), "is not an MQTT topic filter"),
        (stream("sensors", topic="$SYS/broker"), "is not an MQTT topic filter"),
    ],
)
def test_a_stream_product_the_configuration_cannot_serve_is_refused(
    source: Source, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        SOURCES.check(source, ["mm"])
    assert "pw" not in str(caught.value)
