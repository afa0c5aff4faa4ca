"""NATS JetStream stream sources against a real NATS server (skipped when it is not up)."""

from __future__ import annotations

import json
import logging
import time
import tracemalloc
from typing import Any

import pytest

from connector.errors import ConfigError, InvalidRequest, PreconditionFailed, Unavailable
from connector.sources.base import MISSING, StreamRecord, StreamSource, Subscription
from connector.sources.nats import NatsConnection, NatsStreamSource
from connector.sources.stream import SequenceGone, SkipReason, SubscriptionLagging
from connector.sources.windows import StreamChecker, genesis_head
from tests.sources.conftest import JetStream, OwnServer, check_records, take
from tests.support.ports import free_port

FIELDS = ("station", "mm")


def _source(url: str, subject: str, **options: Any) -> NatsStreamSource:
    on_skip = options.pop("on_skip", None)
    connection = NatsConnection(name="weather", url=url, connect_timeout_seconds=2, **options)
    return NatsStreamSource(connection, subject, FIELDS, on_skip=on_skip)


def _readings(start: int, n: int) -> list[dict[str, Any]]:
    return [{"station": f"s{i % 4}", "mm": i, "extra": "dropped"} for i in range(start, start + n)]


def test_is_a_stream_source(jetstream: JetStream) -> None:
    source = _source(jetstream.url, jetstream.stream())
    assert isinstance(source, StreamSource) and source.kind == "stream"
    with source.subscribe(0) as sub:
        assert isinstance(sub, Subscription)
        assert sub.connected and sub.poll(0.1) is None and sub.lag == 0


def test_resume_after_the_last_acknowledged_sequence_loses_and_doubles_nothing(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream()
    published = jetstream.publish_json(subject, *_readings(0, 50))
    source = _source(jetstream.url, subject)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    with source.subscribe(0) as sub:
        first = take(sub, 20)
    check_records(checker, FIELDS, first)
    assert [r.sequence for r in first] == published[:20]
    assert first[0].row == ("s0", 0)  # fields in order, the extra key dropped
    # The consumer resumes after the last sequence it holds; more is published meanwhile.
    with source.subscribe(checker.last_sequence) as sub:
        published += jetstream.publish_json(subject, *_readings(50, 10))
        rest = take(sub, 40)
        assert sub.poll(0.5) is None  # nothing more than what was published
    check_records(checker, FIELDS, rest)
    assert [r.sequence for r in first + rest] == published
    assert [r.row[1] for r in first + rest] == list(range(60))


def test_sequences_of_one_subject_in_a_shared_stream_are_sparse_but_linked(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream("x")  # a second subject interleaves its own sequences
    mine: list[int] = []
    for i in range(5):
        mine += jetstream.publish_json(subject, {"station": "a", "mm": i})
        jetstream.publish_json(subject + "x", {"station": "other", "mm": -1})
    with _source(jetstream.url, subject).subscribe(0) as sub:
        records = take(sub, 5)
    assert [r.sequence for r in records] == mine == [1, 3, 5, 7, 9]
    check_records(StreamChecker(after=0, head=genesis_head("agr")), FIELDS, records)


def test_from_sequence_in_the_future_is_refused(jetstream: JetStream) -> None:
    subject = jetstream.stream()
    jetstream.publish_json(subject, *_readings(0, 3))
    source = _source(jetstream.url, subject)
    with (
        pytest.raises(
            InvalidRequest, match="sequence 4 is in the future: the stream's newest is 3"
        ),
        source.subscribe(4),
    ):
        pass
    with pytest.raises(InvalidRequest, match="non-negative"), source.subscribe(-1):
        pass
    with source.subscribe(3) as sub:  # exactly the newest: wait for what comes next
        assert sub.poll(0.2) is None


def test_from_sequence_before_what_the_stream_holds_says_how_much_is_lost(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream(max_msgs=10)
    jetstream.publish_json(subject, *_readings(0, 30))  # the stream keeps 21..30
    source = _source(jetstream.url, subject)
    with pytest.raises(SequenceGone) as refused, source.subscribe(5):
        pass
    assert isinstance(refused.value, PreconditionFailed)
    assert (refused.value.lost, refused.value.oldest) == (15, 21)
    assert "sequences 6 to 20 are no longer held" in str(refused.value)
    assert "subscribe after 20" in str(refused.value)
    with source.subscribe(20) as sub:
        assert [r.sequence for r in take(sub, 10)] == list(range(21, 31))


def test_unknown_subject_is_a_precondition(jetstream: JetStream) -> None:
    source = _source(jetstream.url, "tds.test.nobody.publishes.here")
    with (
        pytest.raises(PreconditionFailed, match=r"no JetStream stream .* holds subject"),
        source.subscribe(0),
    ):
        pass


def test_broker_unreachable_at_subscribe_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    source = _source(f"nats://127.0.0.1:{free_port()}", "tds.test.x")
    started = time.monotonic()
    with pytest.raises(Unavailable, match="'weather' is unreachable"), source.subscribe(0):
        pass
    assert time.monotonic() - started < 10
    assert "Traceback" not in caplog.text


def test_bad_messages_are_skipped_counted_and_reported(jetstream: JetStream) -> None:
    subject = jetstream.stream()
    seqs = jetstream.publish(
        subject,
        b'{"station": "a", "mm": 1}',
        b"not json",
        b"[1, 2, 3]",
        b'{"station": "' + b"x" * 2000 + b'"}',
        b'{"mm": NaN}',
        b'{"station": "b"}',
    )
    reported: list[tuple[int, SkipReason]] = []
    source = _source(
        jetstream.url,
        subject,
        max_message_bytes=1024,
        on_skip=lambda s, r: reported.append((s, r)),
    )
    with source.subscribe(0) as sub:
        good = take(sub, 2)
        assert sub.skipped == {"not_json": 2, "not_object": 1, "oversized": 1}
    assert [r.row for r in good] == [("a", 1), ("b", MISSING)]
    assert (good[1].sequence, good[1].previous) == (seqs[5], seqs[0])
    assert reported == [
        (seqs[1], SkipReason.NOT_JSON),
        (seqs[2], SkipReason.NOT_OBJECT),
        (seqs[3], SkipReason.OVERSIZED),
        (seqs[4], SkipReason.NOT_JSON),
    ]


def test_broker_restart_mid_stream_resumes_without_gap_or_repeat(
    own_nats: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connector.sources.nats")
    publisher = JetStream(own_nats.url)
    try:
        subject = publisher.stream()  # file storage: survives the restart
        publisher.publish_json(subject, *_readings(0, 5))
    finally:
        publisher.close(keep_streams=True)
    source = _source(own_nats.url, subject, reconnect_wait_seconds=0.2)
    checker = StreamChecker(after=0, head=genesis_head("agr"))
    with source.subscribe(0) as sub:
        check_records(checker, FIELDS, take(sub, 5))
        own_nats.stop()
        deadline = time.monotonic() + 10
        while sub.connected:
            assert sub.poll(0.2) is None
            assert time.monotonic() < deadline, "the lost connection was not noticed"
        own_nats.start()
        publisher = JetStream(own_nats.url)
        try:
            publisher.publish_json(subject, *_readings(5, 5))
        finally:
            publisher.close(keep_streams=True)
        after = take(sub, 5)
        assert sub.connected
    check_records(checker, FIELDS, after)
    assert [r.sequence for r in after] == [6, 7, 8, 9, 10]
    assert [r.row[1] for r in after] == [5, 6, 7, 8, 9]
    assert "continuing after sequence 5" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_reader_that_stops_reading_does_not_grow_memory_and_is_told_its_lag(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream()
    payload = b'{"station": "s", "mm": 1, "pad": "' + b"x" * 1000 + b'"}'
    source = _source(jetstream.url, subject, buffer_messages=50, max_lag_messages=500)
    with source.subscribe(0) as sub:
        jetstream.publish(subject, payload)
        assert take(sub, 1)[0].sequence == 1
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            jetstream.publish(subject, *[payload] * 3000)  # 3 MB the reader does not read
            time.sleep(1)
            grown = tracemalloc.get_traced_memory()[0] - baseline
            # When it reads again, it gets one fetch (50 at most) and learns its lag. A
            # pull request still open from the last fetch may have been served while the
            # burst was published, its messages counting what was published so far: at
            # most that one fetch's worth is delivered before the lag is known.
            delivered = 0
            with pytest.raises(SubscriptionLagging, match="messages behind the stream") as lag:
                while delivered <= 50:
                    assert sub.poll(1) is not None
                    delivered += 1
            grown = max(grown, tracemalloc.get_traced_memory()[0] - baseline)
        finally:
            tracemalloc.stop()
        assert grown < 500_000, f"memory grew by {grown} bytes"
        assert lag.value.last == 1 + delivered and isinstance(lag.value, Unavailable)
        assert lag.value.lag == 3000 - delivered
        with pytest.raises(SubscriptionLagging):  # the subscription stays suspended
            sub.poll(0)


def test_configuration_is_checked_and_credentials_never_shown() -> None:
    connection = NatsConnection(name="w", url="nats://u:s3cret@127.0.0.1:4222")
    assert "s3cret" not in repr(connection) and "s3cret" not in str(connection)
    assert "nats://***@127.0.0.1:4222" in repr(connection)
    options = connection._connect_options()
    assert options == {"servers": ["nats://127.0.0.1:4222"], "user": "u", "password": "s3cret"}
    token = NatsConnection(name="w", url="nats://t%40k@h:4222")._connect_options()
    assert token == {"servers": ["nats://h:4222"], "token": "t@k"}
    with pytest.raises(ConfigError, match="not both"):
        NatsConnection(name="w", url="nats://u:p@h:1", credentials_file="/x.creds")
    with pytest.raises(ConfigError, match="nats://host:port"):
        NatsConnection(name="w", url="http://127.0.0.1:4222")
    with pytest.raises(ConfigError, match="max_lag_messages"):
        NatsConnection(name="w", url="nats://h:1", buffer_messages=10, max_lag_messages=5)
    with pytest.raises(ConfigError, match="positive integer"):
        NatsConnection(name="w", url="nats://h:1", max_message_bytes=0)
    with pytest.raises(InvalidRequest, match="not a NATS subject"):
        NatsStreamSource(connection, "a b", FIELDS)


def test_password_protected_server(
    own_nats_with_password: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_nats_with_password
    wrong = _source(f"nats://tds:wrong@127.0.0.1:{server.port}", "tds.test.x")
    with pytest.raises(Unavailable, match="refused its credentials"), wrong.subscribe(0):
        pass
    right = _source(f"nats://tds:s3cret@127.0.0.1:{server.port}", "tds.test.x")
    with pytest.raises(PreconditionFailed, match="no JetStream stream"), right.subscribe(0):
        pass  # connected and authenticated: the subject just has no stream
    assert "s3cret" not in caplog.text and "wrong" not in caplog.text


def test_a_backlog_larger_than_the_lag_limit_is_caught_up_not_suspended(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream(max_msgs=300)
    jetstream.publish_json(subject, *_readings(0, 400))  # the stream keeps 101..400
    source = _source(jetstream.url, subject, buffer_messages=20, max_lag_messages=50)
    with source.subscribe(0) as sub:  # a new subscription: from the oldest held
        records = take(sub, 300)
        assert sub.lag == 0
    assert [r.sequence for r in records] == list(range(101, 401))
    assert records[0].previous == 0


def test_messages_the_stream_drops_under_a_slow_reader_are_reported_not_skipped(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream(max_msgs=10)
    jetstream.publish_json(subject, *_readings(0, 8))
    source = _source(jetstream.url, subject, buffer_messages=5)
    with source.subscribe(0) as sub:
        first = take(sub, 3)  # one fetch brought 1..5
        jetstream.publish_json(subject, *_readings(8, 30))  # the stream keeps 29..38
        rest = take(sub, 2)  # 4 and 5 were fetched before: delivered
        with pytest.raises(SequenceGone) as gone:
            sub.poll(1)
    assert [r.sequence for r in first + rest] == [1, 2, 3, 4, 5]
    assert gone.value.oldest == 29 and gone.value.lost == 23
    assert "sequences 6 to 28 are no longer held" in str(gone.value)


def test_two_consumers_of_one_feed_each_get_all_of_it_at_their_own_pace(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream()
    source = _source(jetstream.url, subject)
    with source.subscribe(0) as fast, source.subscribe(0) as slow:
        jetstream.publish_json(subject, *_readings(0, 20))
        got_fast = take(fast, 20)
        got_slow = take(slow, 5)
        jetstream.publish_json(subject, *_readings(20, 5))
        got_fast += take(fast, 5)
        got_slow += take(slow, 20)
    for got in (got_fast, got_slow):
        check_records(StreamChecker(after=0, head=genesis_head("agr")), FIELDS, got)
        assert [r.row[1] for r in got] == list(range(25))


def test_an_idle_subscription_polled_briefly_keeps_its_consumer(
    jetstream: JetStream, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch fetch that gets nothing raises asyncio's TimeoutError in nats-py (not its
    own): an empty fetch, not a lost connection. Before, each one reconnected (a new
    broker-side consumer, at most one a second), so a quiet stream polled every 50 ms
    churned consumers and delivered in bursts a second apart."""
    caplog.set_level(logging.INFO, logger="connector.sources.nats")
    subject = jetstream.stream(max_age=3600)
    source = NatsStreamSource(NatsConnection("weather", jetstream.url), subject, ["a"])
    jetstream.publish_json(subject, *({"a": i} for i in range(5)))
    with source.subscribe(0) as sub:
        assert [r.sequence for r in take(sub, 5)] == [1, 2, 3, 4, 5]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert sub.poll(0.05) is None
        jetstream.publish_json(subject, {"a": 5})
        started = time.monotonic()
        assert [r.sequence for r in take(sub, 1)] == [6]
        assert time.monotonic() - started < 0.5
    assert "reconnecting" not in caplog.text


def test_a_batch_is_what_is_at_hand_never_more_than_asked_and_waits_only_for_the_first(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream()
    published = jetstream.publish_json(subject, *_readings(0, 30))
    source = _source(jetstream.url, subject, buffer_messages=10)
    batches: list[list[StreamRecord]] = []
    with source.subscribe(0) as sub:
        batches.append(sub.poll_batch(2, 4))  # the first fetch brought 1..10: four
        batches.append(sub.poll_batch(2, 100))  # the other six, without asking the broker
        while sum(map(len, batches)) < 30:
            batches.append(sub.poll_batch(2, 100))
        begun = time.monotonic()
        assert sub.poll_batch(0.3, 100) == []  # nothing more: the timeout, then empty
        waited = time.monotonic() - begun
    # The first fetch's ten messages reach the buffer one by one: the first poll takes
    # what is there once one is (at most four), the second the rest of that fetch.
    first, second = map(len, batches[:2])
    assert 1 <= first <= 4 and first + second <= 10
    assert all(1 <= len(b) <= 10 for b in batches)  # never past one fetch (buffer_messages)
    records = [r for b in batches for r in b]
    assert [r.sequence for r in records] == published
    check_records(StreamChecker(after=0, head=genesis_head("agr")), FIELDS, records)
    assert 0.25 <= waited < 3


def test_a_failure_inside_a_batch_ends_it_there_and_the_next_poll_raises_it(
    jetstream: JetStream,
) -> None:
    subject = jetstream.stream(max_msgs=10)
    seqs = jetstream.publish(
        subject, *(json.dumps(r).encode() for r in _readings(0, 4)), b"not json"
    )
    source = _source(jetstream.url, subject, buffer_messages=5)
    with source.subscribe(0) as sub:
        first = sub.poll_batch(2, 3)  # one fetch brought 1..5
        jetstream.publish_json(subject, *_readings(4, 30))  # the stream keeps 26..35
        # 4 is delivered; 5 is skipped; fetching after it finds 6..25 gone.
        second = sub.poll_batch(2, 100)
        with pytest.raises(SequenceGone) as gone:
            sub.poll_batch(2, 100)
        with pytest.raises(SequenceGone):
            sub.poll(0)
    assert [r.sequence for r in first + second] == seqs[:4]
    assert gone.value.oldest == 26 and gone.value.lost == 20


def test_a_message_lost_between_broker_and_reader_is_fetched_again_not_skipped(
    jetstream: JetStream, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker numbers what a consumer delivers (its own sequence, one more per
    message): a message the client drops on the way (nats-py drops what a slow
    subscription cannot queue) leaves a gap there, and the subscription reconnects after
    the last message it read instead of delivering past the hole. Without the check, the
    next message would go out with ``previous`` set to the one before the hole, which
    the consumer cannot tell from a skip."""
    from connector.sources import nats as nats_source

    subject = jetstream.stream()
    published = jetstream.publish_json(subject, *_readings(0, 12))
    original = nats_source._Puller._on_msg
    dropped: list[int] = []

    async def lossy(self: Any, msg: Any) -> None:
        if not dropped and not msg.headers and msg.metadata.sequence.stream == 5:
            dropped.append(5)  # lost on the way, once
            return
        await original(self, msg)

    monkeypatch.setattr(nats_source._Puller, "_on_msg", lossy)
    source = _source(jetstream.url, subject, reconnect_wait_seconds=0.1)
    with caplog.at_level(logging.WARNING), source.subscribe(0) as sub:
        got = take(sub, 12)
    assert dropped == [5]
    assert [r.sequence for r in got] == published
    check_records(StreamChecker(after=0, head=genesis_head("agr")), FIELDS, got)
    assert "reconnecting" in caplog.text
