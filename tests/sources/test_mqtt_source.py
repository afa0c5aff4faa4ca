"""MQTT stream sources against a real Mosquitto (skipped when it is not up).

With a journal (the replay buffer on disk, as a provider's node keeps it), a source that
stops or dies and starts again continues its numbering, numbers what was published while
it was down, and numbers once what the broker sends again; the journal keeps the buffer's
limits, and overflow after a restart is reported, not hidden."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from connector.errors import ConfigError, InvalidRequest, PreconditionFailed, Unavailable
from connector.sources.base import StreamSource, Subscription
from connector.sources.mqtt import MqttConnection, MqttStreamSource
from connector.sources.mqtt_journal import Redeliveries, fingerprint, journal_path
from connector.sources.stream import SequenceGone, SkipReason, SubscriptionLagging
from connector.sources.windows import StreamChecker, genesis_head
from tests.sources.conftest import OwnServer, check_records, take
from tests.support.ports import free_port

FIELDS = ("station", "pm25")


class Publisher:
    """A plain MQTT client publishing at QoS 1, each publish acknowledged by the broker."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex)
        self._client.connect(parts.hostname or "", parts.port or 1883)
        self._client.loop_start()

    def publish(self, topic: str, *payloads: bytes) -> None:
        for payload in payloads:
            self._client.publish(topic, payload, qos=1).wait_for_publish(10)

    def readings(self, topic: str, start: int, n: int) -> None:
        self.publish(
            topic,
            *(
                json.dumps({"station": f"s{i % 3}", "pm25": i}).encode()
                for i in range(start, start + n)
            ),
        )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def publisher(mqtt_url: str) -> Iterator[Publisher]:
    p = Publisher(mqtt_url)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def topic() -> str:
    return f"tds/test/{uuid.uuid4().hex[:12]}/pm25"


def _source(url: str, topic: str, **options: Any) -> MqttStreamSource:
    on_skip = options.pop("on_skip", None)
    journal_dir = options.pop("journal_dir", None)
    connection = MqttConnection(name="air", url=url, connect_timeout_seconds=3, **options)
    return MqttStreamSource(connection, topic, FIELDS, on_skip=on_skip, journal_dir=journal_dir)


@pytest.fixture
def sources() -> Iterator[list[MqttStreamSource]]:
    """Sources a test made, closed after it (their network threads stop)."""
    made: list[MqttStreamSource] = []
    yield made
    for source in made:
        source.close()


def test_resume_from_the_replay_buffer_loses_and_doubles_nothing(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    source = _source(mqtt_url, topic)
    sources.append(source)
    assert isinstance(source, StreamSource) and source.kind == "stream"
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    with source.subscribe(0) as sub:
        assert isinstance(sub, Subscription) and sub.connected
        publisher.readings(topic, 0, 10)
        first = take(sub, 6)
    check_records(checker, FIELDS, first)
    assert [r.sequence for r in first] == [1, 2, 3, 4, 5, 6]
    # The consumer is away; the source keeps receiving into its buffer.
    publisher.readings(topic, 10, 5)
    with source.subscribe(checker.last_sequence) as sub:
        rest = take(sub, 9)
        assert sub.poll(0.3) is None
        assert sub.lag == 0
    check_records(checker, FIELDS, rest)
    assert [r.row[1] for r in first + rest] == list(range(15))
    assert [r.sequence for r in rest] == list(range(7, 16))


def test_future_and_evicted_sequences_are_refused_saying_how_much_was_lost(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    source = _source(mqtt_url, topic, replay_messages=20, max_lag_messages=10)
    sources.append(source)
    with source.subscribe(0) as sub:
        publisher.readings(topic, 0, 50)
        deadline = time.monotonic() + 10
        while sub.lag < 50:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # It read nothing while 50 arrived: the buffer (20) no longer holds 1..30.
        with pytest.raises(SequenceGone) as gone:
            sub.poll(0)
    assert isinstance(gone.value, PreconditionFailed)
    assert gone.value.lost == 30 and gone.value.oldest == 31
    assert "30 messages lost" in str(gone.value) and "replay_messages = 20" in str(gone.value)
    with (
        pytest.raises(SequenceGone, match="sequences 6 to 30 are no longer held"),
        source.subscribe(5),
    ):
        pass
    with (
        pytest.raises(InvalidRequest, match="sequence 51 is in the future: the newest is 50"),
        source.subscribe(51),
    ):
        pass
    with source.subscribe(45) as sub:
        assert [r.sequence for r in take(sub, 5)] == [46, 47, 48, 49, 50]
    with source.subscribe(0) as sub:  # a new subscription starts at the oldest held
        assert take(sub, 1)[0].sequence == 31


def test_a_slow_reader_is_told_its_lag_before_anything_is_evicted(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    source = _source(mqtt_url, topic, replay_messages=20, max_lag_messages=10)
    sources.append(source)
    with source.subscribe(0) as sub:
        publisher.readings(topic, 0, 15)
        deadline = time.monotonic() + 10
        while sub.lag < 15:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(SubscriptionLagging, match="15 messages behind") as lagging:
            sub.poll(0)
    assert isinstance(lagging.value, Unavailable) and lagging.value.last == 0
    # Resumed with its backlog of 15 it catches up: it is not further behind than it began.
    with source.subscribe(0) as sub:
        assert [r.sequence for r in take(sub, 10)] == list(range(1, 11))
        publisher.readings(topic, 15, 3)
        assert [r.sequence for r in take(sub, 8)] == list(range(11, 19))


def test_bad_messages_are_skipped_counted_and_reported(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    reported: list[tuple[int, SkipReason]] = []
    source = _source(
        mqtt_url, topic, max_message_bytes=512, on_skip=lambda s, r: reported.append((s, r))
    )
    sources.append(source)
    with source.subscribe(0) as sub:
        publisher.publish(
            topic,
            b'{"station": "a", "pm25": 1}',
            b"\x00\x01binary",
            b"42",
            b'{"station": "' + b"x" * 600 + b'"}',
            b'{"station": "b", "pm25": 2}',
        )
        good = take(sub, 2)
        assert sub.skipped == {"not_json": 1, "not_object": 1, "oversized": 1}
    assert [(r.sequence, r.previous, tuple(r.row)) for r in good] == [
        (1, 0, ("a", 1)),
        (5, 1, ("b", 2)),
    ]
    assert reported == [
        (2, SkipReason.NOT_JSON),
        (3, SkipReason.NOT_OBJECT),
        (4, SkipReason.OVERSIZED),
    ]


def test_broker_unreachable_at_subscribe_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    source = _source(f"mqtt://127.0.0.1:{free_port()}", "tds/x")
    started = time.monotonic()
    with pytest.raises(Unavailable, match="'air' is unreachable"), source.subscribe(0):
        pass
    assert time.monotonic() - started < 10
    assert "Traceback" not in caplog.text
    source.close()


def test_broker_restart_mid_stream_reconnects_and_numbers_on(
    own_mosquitto: OwnServer, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connector.sources.mqtt")
    source = _source(own_mosquitto.url, topic, reconnect_wait_seconds=1)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    try:
        with source.subscribe(0) as sub:
            p = Publisher(own_mosquitto.url)
            p.readings(topic, 0, 5)
            p.close()
            check_records(checker, FIELDS, take(sub, 5))
            own_mosquitto.stop()
            deadline = time.monotonic() + 10
            while sub.connected:
                assert sub.poll(0.2) is None
                assert time.monotonic() < deadline, "the lost connection was not noticed"
            own_mosquitto.start()
            deadline = time.monotonic() + 20
            while not sub.connected:
                assert sub.poll(0.2) is None
                assert time.monotonic() < deadline, "the source did not reconnect"
            p = Publisher(own_mosquitto.url)
            p.readings(topic, 5, 5)
            p.close()
            after = take(sub, 5)
    finally:
        source.close()
    check_records(checker, FIELDS, after)
    assert [(r.sequence, r.row[1]) for r in after] == [(i + 1, i) for i in range(5, 10)]
    assert "lost" in caplog.text and "Traceback" not in caplog.text


def test_a_reader_that_stops_reading_does_not_grow_memory(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    source = _source(mqtt_url, topic, replay_messages=500, max_lag_messages=500, qos=1)
    sources.append(source)
    pad = "x" * 1000
    with source.subscribe(0) as sub:
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            publisher.publish(
                topic, *(json.dumps({"station": pad, "pm25": i}).encode() for i in range(3000))
            )
            deadline = time.monotonic() + 20
            while source._buffer.newest < 3000:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            grown = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        # 3 MB arrived; the buffer holds 500 rows of about 1 KB, nothing per subscription.
        assert grown < 1_500_000, f"memory grew by {grown} bytes"
        with pytest.raises(SequenceGone, match="2500 messages lost"):
            sub.poll(0)


def test_configuration_is_checked_and_credentials_stay_out_of_sight() -> None:
    connection = MqttConnection(name="air", url="mqtt://u:s3cret@h:1883")
    assert "s3cret" not in repr(connection) and "mqtt://***@h:1883" in repr(connection)
    with pytest.raises(ConfigError, match="mqtt://host:port"):
        MqttConnection(name="air", url="nats://h:1")
    with pytest.raises(ConfigError, match="qos"):
        MqttConnection(name="air", url="mqtt://h", qos=3)
    with pytest.raises(ConfigError, match="at most replay_messages"):
        MqttConnection(name="air", url="mqtt://h", replay_messages=10, max_lag_messages=11)
    for bad in ("", "a/#/b", "a/b+", "$SYS/x", "a\x00b"):
        with pytest.raises(InvalidRequest, match="not an MQTT topic filter"):
            MqttStreamSource(connection, bad, FIELDS)
    MqttStreamSource(connection, "city/+/pm25/#", FIELDS)


def test_two_consumers_of_one_feed_each_get_all_of_it_at_their_own_pace(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    source = _source(mqtt_url, topic)
    sources.append(source)
    with source.subscribe(0) as fast, source.subscribe(0) as slow:
        publisher.readings(topic, 0, 20)
        got_fast = take(fast, 20)
        got_slow = take(slow, 5)
        publisher.readings(topic, 20, 5)
        got_fast += take(fast, 5)
        got_slow += take(slow, 20)
    for got in (got_fast, got_slow):
        check_records(StreamChecker(after=0, head=genesis_head("agr")), FIELDS, got)
        assert [r.row[1] for r in got] == list(range(25))


def test_a_batch_is_what_the_buffer_holds_never_more_than_asked(
    mqtt_url: str, publisher: Publisher, topic: str, sources: list[MqttStreamSource]
) -> None:
    source = _source(mqtt_url, topic)
    sources.append(source)
    with source.subscribe(0) as sub:
        publisher.readings(topic, 0, 10)
        deadline = time.monotonic() + 10
        while sub.lag < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first = sub.poll_batch(1, 4)
        second = sub.poll_batch(1, 100)
        assert sub.poll_batch(0.2, 100) == []
    assert [len(first), len(second)] == [4, 6]
    check_records(StreamChecker(after=0, head=genesis_head("agr")), FIELDS, first + second)
    assert [r.row[1] for r in first + second] == list(range(10))


ROOT = Path(__file__).resolve().parents[2]


def _journaled(url: str, topic: str, journal: Path, **options: int) -> MqttStreamSource:
    return _source(url, topic, journal_dir=journal, **options)


def _rows(journal: Path, topic: str) -> list[int]:
    path = journal_path(journal, "air", topic, FIELDS)
    with sqlite3.connect(path) as db:
        return [s for (s,) in db.execute("SELECT sequence FROM messages ORDER BY sequence")]


def test_a_restarted_source_continues_its_numbering_with_what_came_while_it_was_down(
    mqtt_url: str, publisher: Publisher, topic: str, tmp_path: Path
) -> None:
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    source = _journaled(mqtt_url, topic, tmp_path)
    try:
        with source.subscribe(0) as sub:
            publisher.readings(topic, 0, 8)
            first = take(sub, 5)  # the consumer acknowledged 5 of the 8 the source holds
    finally:
        source.close()
    check_records(checker, FIELDS, first)
    publisher.readings(topic, 8, 6)  # while the provider is down: the broker queues them
    again = _journaled(mqtt_url, topic, tmp_path)
    try:
        assert again.epoch == source.epoch  # the same client id: the same session
        with again.subscribe(checker.last_sequence) as sub:
            rest = take(sub, 9)
            publisher.readings(topic, 14, 2)  # and live after the restart
            rest += take(sub, 2)
            assert sub.poll(0.5) is None  # nothing doubled
    finally:
        again.close()
    check_records(checker, FIELDS, rest)
    assert [r.sequence for r in first + rest] == list(range(1, 17))
    assert [r.row[1] for r in first + rest] == list(range(16))


def test_the_journal_keeps_the_buffers_limit_and_overflow_after_a_restart_is_reported(
    mqtt_url: str, publisher: Publisher, topic: str, tmp_path: Path
) -> None:
    source = _journaled(mqtt_url, topic, tmp_path, replay_messages=10, max_lag_messages=10)
    try:
        with source.subscribe(0) as sub:
            publisher.readings(topic, 0, 25)
            deadline = time.monotonic() + 10
            while sub.lag < 25:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        source.close()
    assert _rows(tmp_path, topic) == list(range(16, 26))  # bounded on disk too
    again = _journaled(mqtt_url, topic, tmp_path, replay_messages=10, max_lag_messages=10)
    try:
        with (
            pytest.raises(SequenceGone, match="sequences 6 to 15 are no longer held") as gone,
            again.subscribe(5),
        ):
            pass
        assert gone.value.lost == 10 and "replay_messages = 10" in str(gone.value)
        with again.subscribe(0) as sub:  # a first subscription: from the oldest held
            assert take(sub, 1)[0].sequence == 16
        with again.subscribe(20) as sub:
            assert [r.row[1] for r in take(sub, 5)] == [20, 21, 22, 23, 24]
    finally:
        again.close()


_DIES_UNACKNOWLEDGED = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import paho.mqtt.client as paho
    from connector.sources.mqtt import MqttConnection, MqttStreamSource
    paho.Client.ack = lambda self, mid, qos: 0  # journaled, never acknowledged
    url, topic, journal, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    if sys.argv[5] == "uncommitted":
        from connector.sources.mqtt_journal import ReplayJournal
        ReplayJournal.append = lambda *a: time.sleep(3600)  # the disk never answers
    source = MqttStreamSource(
        MqttConnection(name="air", url=url), topic, ("station", "pm25"), journal_dir=journal
    )
    with source.subscribe(0) as sub:
        print("subscribed", flush=True)
        while source._buffer.newest < n:
            time.sleep(0.01)
        if sys.argv[5] == "committed":
            source._writer.flush()
    os._exit(9)  # dies as a killed process does: no DISCONNECT, no acknowledgement
    """
)


@pytest.mark.parametrize("journaled", ["committed", "uncommitted"])
def test_what_the_broker_sends_again_after_a_crash_is_numbered_once(
    mqtt_url: str, publisher: Publisher, topic: str, tmp_path: Path, journaled: str
) -> None:
    """Killed after journaling 5 messages and before acknowledging them, the source gets
    them again: numbered once if they were committed, and with the same numbers again if
    they were not (they were never acknowledged, so the broker still had them)."""
    # A first life of the source creates the session and numbers two messages, cleanly.
    source = _journaled(mqtt_url, topic, tmp_path)
    with source.subscribe(0) as sub:
        publisher.readings(topic, 0, 2)
        take(sub, 2)
    source.close()
    # A second life numbers 5 more and dies before acknowledging any of them.
    dying = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _DIES_UNACKNOWLEDGED,
            mqtt_url,
            topic,
            str(tmp_path),
            "7",
            journaled,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert dying.stdout is not None and dying.stdout.readline().strip() == "subscribed"
    publisher.readings(topic, 2, 5)
    assert dying.wait(20) == 9
    dying.stdout.close()
    assert _rows(tmp_path, topic) == list(range(1, 8 if journaled == "committed" else 3))
    publisher.readings(topic, 7, 3)  # while it is down
    # The third life gets the 5 again (unacknowledged, dup) and the 3 new ones.
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    again = _journaled(mqtt_url, topic, tmp_path)
    try:
        with again.subscribe(0) as sub:
            got = take(sub, 10)
            assert sub.poll(0.8) is None  # the 5 sent again were not numbered twice
    finally:
        again.close()
    check_records(checker, FIELDS, got)
    assert [(r.sequence, r.row[1]) for r in got] == [(i + 1, i) for i in range(10)]


def test_redeliveries_match_a_suffix_of_what_was_journaled_in_order() -> None:
    a, b, c = (fingerprint(p) for p in (b"a", b"b", b"c"))
    tail = [(7, a), (8, b), (9, c)]
    # 8 and 9 were journaled but not acknowledged: sent again, then something new.
    r = Redeliveries(tail)
    assert [r.seen(8, b"b", True), r.seen(9, b"c", True), r.seen(10, b"d", True)] == [
        True,
        True,
        False,
    ]
    # A message sent again that never arrived (id 10) is new, and so is all after it.
    r = Redeliveries(tail)
    assert [r.seen(10, b"x", True), r.seen(9, b"c", True)] == [False, False]
    # Same id, other payload: not the journaled one.
    assert Redeliveries(tail).seen(9, b"other", True) is False
    # Nothing sent again: the first message without dup ends the matching.
    r = Redeliveries(tail)
    assert [r.seen(9, b"c", False), r.seen(9, b"c", True)] == [False, False]
    # Out of order is not a resend of the journal's suffix.
    r = Redeliveries(tail)
    assert [r.seen(8, b"b", True), r.seen(7, b"a", True)] == [True, False]
    # An oversized message is journaled without its payload: its id must do.
    assert Redeliveries([(3, fingerprint(SkipReason.OVERSIZED))]).seen(3, b"x" * 9, True)
