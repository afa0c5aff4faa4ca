"""Stream products between connectors, against the machine's NATS JetStream and Mosquitto.

The provider ("gov") publishes rain-gauge readings from a JetStream subject (and an MQTT
topic) with the station operator's name masked; consumers ("a", "b") follow them through
their own connector's admin API, as ``tds subscribe`` does. Each record is checked in
sequence, windows are signed by the consumer and countersigned by the provider, holdings
are committed per window; a resume loses and doubles nothing; a revocation stops delivery
within a second; bad input is refused and changes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, stream_pb2, stream_pb2_grpc
from connector.audit.canonical import canonical_json
from connector.audit.window_receipts import WindowReceipt, sign_window, verify_window
from connector.config import StreamConfig
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_private_key
from connector.identity.names import Role
from connector.negotiation.agreement import parse_agreement
from connector.negotiation.store import NegotiationStore
from connector.sources.mqtt_connection import MqttConnection
from connector.sources.nats_connection import NatsConnection
from connector.sources.windows import Window, genesis_head
from connector.transfer.store import CONSUMER
from connector.transfer.subscriber import stream_holding
from tests.sources.conftest import MQTT_URL, NATS_URL, JetStream, _jetstream, _reachable
from tests.support.exchange import admin, agree, entries, logged_soon, offer, publish
from tests.support.hostile import HostileProvider, HostileStreams, Refusal
from tests.support.ports import free_port
from tests.support.streams import (
    FIELDS,
    Follower,
    held,
    readings,
    revoked_while_flowing,
    stream_product,
)


@pytest.fixture(scope="module")
def js() -> Iterator[JetStream]:
    yield from _jetstream(NATS_URL)


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, js: JetStream) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("stream")
    sources: dict[str, Any] = {
        "weather": NatsConnection("weather", NATS_URL, max_message_bytes=4096),
        "down": NatsConnection(
            "down", f"nats://127.0.0.1:{free_port()}", connect_timeout_seconds=1
        ),
        "sensors": MqttConnection("sensors", MQTT_URL),
    }
    settings = StreamConfig(window_messages=5, window_seconds=0.3, ack_timeout_seconds=5)
    with LocalSpace.create(
        root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    ) as sp:
        sp.start_registry()
        sp.start_connector("gov", sources=sources, stream=settings)
        sp.start_connector("a")
        sp.start_connector("b")
        yield sp


@pytest.fixture
def feed(space: LocalSpace, js: JetStream, tmp_path: Path) -> tuple[str, str]:
    """A fresh subject published as a new stream product; (product id, subject)."""
    subject = js.stream()
    pid = "rain-" + subject.rsplit("_", 1)[-1]
    stream_product(
        space, pid, {"kind": "stream", "connection": "weather", "subject": subject}, tmp_path
    )
    return pid, subject


def test_two_consumers_receive_one_live_feed_masked_with_signed_windows(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    pid, subject = feed
    js.publish_json(subject, *readings(12))
    agreements = {who: agree(space, "gov", who, pid) for who in ("a", "b")}
    followers = {who: Follower(space, who, agreements[who]) for who in ("a", "b")}
    try:
        for f in followers.values():
            f.wait_kept(12)
        js.publish_json(subject, *readings(8, start=12))  # live, while they follow
        for f in followers.values():
            f.wait_kept(20)
    finally:
        for f in followers.values():
            f.stop()
    for who, agreement in agreements.items():
        kept = held(space, who, agreement)
        assert [line["sequence"] for line in kept] == list(range(1, 21))
        records = [line["record"] for line in kept]
        assert [r["station"] for r in records] == [f"S{i:03d}" for i in range(20)]
        assert all(set(r) == {"station", "operator", "mm"} for r in records)  # "extra" dropped
        assert not any(r["operator"].startswith("Operator") for r in records)  # masked
        # Both logs hold every window, countersigned; the receipts verify offline.
        provider_windows = [
            e["data"]
            for e in entries(space, "gov", "stream.window")
            if e["data"]["agreement"] == agreement
        ]
        consumer_windows = [e["data"] for e in entries(space, who, "stream.window")]
        assert [w["receipt"] for w in provider_windows] == [w["receipt"] for w in consumer_windows]
        keys = space.nodes["gov"]._signing_key_of
        covered = [verify_window(w["receipt"], keys).window for w in provider_windows]
        assert covered[0].first_sequence == 1 and covered[-1].last_sequence == 20
        assert sum(w.count for w in covered) == 20
    # Metering was counted ahead in blocks; once both subscriptions ended, what was not
    # sent is given back: exactly the 20 messages and their bytes remain counted.
    store = space.nodes["gov"].stream_store
    assert store is not None
    for agreement in agreements.values():
        deadline = time.monotonic() + 5
        while store.usage(agreement)[0] != 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        messages, used = store.usage(agreement)
        windows = [w for w, _ in store.windows(agreement, "provider")]
        assert (messages, used) == (20, sum(w.bytes for w in windows))
    # Pseudonyms are per agreement: the two consumers cannot link their copies.
    a, b = (held(space, who, agreements[who])[0]["record"]["operator"] for who in ("a", "b"))
    assert a != b


def test_a_resumed_subscription_loses_and_doubles_nothing(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(7))
    first = Follower(space, "a", agreement)
    first.wait_kept(7)
    first.stop()
    js.publish_json(subject, *readings(9, start=7))  # while nobody follows
    second = Follower(space, "a", agreement)
    second.wait_kept(16)
    second.stop()
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == list(range(1, 17))
    assert [line["record"]["station"] for line in kept] == [f"S{i:03d}" for i in range(16)]
    states = [e["data"]["reason"] for e in entries(space, "gov", "stream.suspended")]
    assert any("consumer" in r for r in states)


def test_revocation_stops_delivery_within_a_second_and_the_holding_is_deleted(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    pid, subject = feed
    agreement = agree(space, "gov", "b", pid)
    revoked_while_flowing(space, js, subject, "gov", "b", agreement)
    # Deleted, and logged, by the time the subscription has ended.
    assert [
        e["data"]["reason"]
        for e in entries(space, "b", "stream.deleted")
        if e["data"]["agreement"] == agreement
    ] == ["agreement_revoked"]
    assert not stream_holding(space.configs["b"].data_dir / "holdings", agreement).exists()


def test_a_stop_that_only_says_the_agreement_was_revoked_deletes_nothing(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    """A provider's stop reason is its own free text: a provider that ends the stream
    saying ``agreement_revoked`` with no signed revocation behind it makes the consumer
    delete nothing; the real, signed revocation then deletes the holding at once."""
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(5))
    honest = Follower(space, "a", agreement)
    honest.wait_kept(5)
    honest.stop()
    store = space.nodes["a"].stream_store
    db = space.nodes["a"].db
    assert store is not None and db is not None
    state = store.get(agreement, CONSUMER)
    assert state.obligations.get("delete_on_revocation") is True
    signed = NegotiationStore(db).by_agreement(agreement).agreement
    assert signed
    liar = HostileProvider(space, "gov", parse_agreement(signed), b"")
    # It resumes as the honest provider would, with the obligations it sent, then stops.
    liar.streams = HostileStreams(liar.agreement, FIELDS, state.acked_head, state.next_window)
    liar.streams.obligations_json = json.dumps(state.obligations)
    liar.streams.refusal = Refusal(grpc.StatusCode.PERMISSION_DENIED, "agreement_revoked")
    with liar.serving():
        follower = Follower(space, "a", agreement)
        follower.wait_end(20)
    assert follower.error is not None
    assert follower.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agreement_revoked" in (follower.error.details() or "")
    stopped = [
        e["data"]["reason"]
        for e in entries(space, "a", "stream.stopped")
        if e["data"]["agreement"] == agreement
    ]
    assert stopped and "agreement_revoked" in stopped[-1]

    assert [
        e for e in entries(space, "a", "stream.deleted") if e["data"]["agreement"] == agreement
    ] == []
    assert [r["sequence"] for r in held(space, "a", agreement)] == [1, 2, 3, 4, 5]
    assert store.get(agreement, CONSUMER).deleted_ms == 0

    # The provider's signed revocation, pushed to the consumer, deletes it at once: no
    # subscription is running and no sweep is run here (the periodic one is 10 s apart).
    admin(space, "gov").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="emergency over"),
        timeout=10,
    )
    (logged,) = logged_soon(space, "a", "stream.deleted", agreement=agreement)
    assert (logged["data"]["reason"], logged["data"]["kept_sequence"]) == ("agreement_revoked", 5)
    (revoked,) = logged_soon(space, "a", "agreement.revoked", agreement=agreement)
    assert logged["time_ms"] - revoked["time_ms"] < 1000
    sweeper = space.nodes["a"].sweeper
    assert sweeper is not None
    assert sweeper.sweep() == []  # waits for the one running; nothing is deleted twice
    assert not stream_holding(space.configs["a"].data_dir / "holdings", agreement).exists()


def member_subscribe(
    space: LocalSpace,
    who: str,
    messages: list[stream_pb2.SubscribeUp],
    read: int = 50,
    seconds: float | None = None,
) -> list[stream_pb2.SubscribeDown]:
    """Call the provider's Subscribe directly as member ``who`` (what a hostile or broken
    consumer connector could send); with ``seconds``, what came in that long."""
    channel = space.nodes[who]._member_channel("gov")
    pending = list(messages)
    gate = threading.Event()

    def requests() -> Iterator[stream_pb2.SubscribeUp]:
        yield pending.pop(0)
        gate.wait(10)
        yield from pending
        gate.wait(10)

    got: list[stream_pb2.SubscribeDown] = []
    call = stream_pb2_grpc.StreamServiceStub(channel).Subscribe(requests(), timeout=seconds)
    try:
        for down in call:
            got.append(down)
            if down.WhichOneof("kind") == "window":
                gate.set()
            if len(got) >= read:
                break
    except grpc.RpcError as err:
        if seconds is None or err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        gate.set()
        call.cancel()
        channel.close()
    return got


def start(agreement: str, after: int = 0) -> stream_pb2.SubscribeUp:
    return stream_pb2.SubscribeUp(
        start=stream_pb2.SubscribeStart(agreement_id=agreement, from_sequence=after)
    )


def test_a_subscription_under_another_participants_agreement_is_not_found(
    space: LocalSpace, feed: tuple[str, str]
) -> None:
    agreement = agree(space, "gov", "a", feed[0])
    with pytest.raises(grpc.RpcError) as caught:
        member_subscribe(space, "b", [start(agreement)])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# 3 is inside the only window (1-5): not where a window the provider recorded starts.
@pytest.mark.parametrize("after, where", [(5, "after"), (3, "before")])
def test_a_from_sequence_other_than_the_last_acknowledged_is_refused(
    space: LocalSpace, js: JetStream, feed: tuple[str, str], after: int, where: str
) -> None:
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    if where == "before":
        js.publish_json(subject, *readings(5))
        f = Follower(space, "a", agreement)
        f.wait_kept(5)
        f.stop()
    with pytest.raises(grpc.RpcError) as caught:
        member_subscribe(space, "a", [start(agreement, after)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"is {where} the end of the last window you acknowledged" in (
        caught.value.details() or ""
    )


def test_resuming_from_an_earlier_window_gets_its_receipts_again_and_no_record(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    """What a consumer that lost countersignatures is sent again, and all a consumer
    asking from further back gets: the receipts, never the records or a second count."""
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(15))
    f = Follower(space, "a", agreement)
    f.wait_kept(15)
    f.stop()
    store = space.nodes["gov"].stream_store
    assert store is not None
    receipts = [r for _, r in store.windows(agreement, "provider")]
    assert len(receipts) == 3  # 1-5, 6-10, 11-15
    for after, resent in ((10, receipts[2:]), (5, receipts[1:])):
        # All that comes in a second: the start, with the receipts, and no record.
        got = member_subscribe(space, "a", [start(agreement, after)], seconds=1.0)
        assert [down.WhichOneof("kind") for down in got] == ["started"]
        started = got[0].started
        assert list(started.receipted) == resent
        assert (started.after_sequence, started.next_window) == (15, 3)
    # No more windows than a consumer can have signed ahead (max_unsigned_windows, 2).
    with pytest.raises(grpc.RpcError) as caught:
        member_subscribe(space, "a", [start(agreement, 0)], read=1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "or from the end of one of the last 2 windows" in (caught.value.details() or "")
    # Nothing was counted again: the 15 records once each (once the first subscription
    # has given back what it counted ahead).
    deadline = time.monotonic() + 5
    while store.usage(agreement)[0] != 15 and time.monotonic() < deadline:
        time.sleep(0.05)
    windows = [w for w, _ in store.windows(agreement, "provider")]
    assert store.usage(agreement) == (15, sum(w.bytes for w in windows))
    assert [r for _, r in store.windows(agreement, "provider")] == receipts


def test_a_tampered_window_receipt_is_refused_logged_and_ends_the_subscription(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(5))
    cfg = space.configs["a"]
    key = load_ed25519_private_key(cfg.pki.signing_key, "pki.signing_key")
    lying = WindowReceipt(agreement, pid, "gov", "a", Window(0, 1, 5, 4, 10, "00" * 32, "11" * 32))
    with pytest.raises(grpc.RpcError) as caught:
        member_subscribe(
            space, "a", [start(agreement), stream_pb2.SubscribeUp(receipt=sign_window(lying, key))]
        )
    assert "window receipt was refused" in (caught.value.details() or "")
    refused = [
        e["data"]
        for e in entries(space, "gov", "stream.window_refused")
        if e["data"]["agreement"] == agreement
    ]
    assert refused and "differ" in refused[-1]["reason"]


def test_a_broker_that_is_down_at_subscribe_is_unavailable(
    space: LocalSpace, tmp_path: Path
) -> None:
    stream_product(
        space, "rain-down", {"kind": "stream", "connection": "down", "subject": "rain"}, tmp_path
    )
    agreement = agree(space, "gov", "a", "rain-down")
    f = Follower(space, "a", agreement)
    f.wait_end(15)
    assert f.error is not None and f.error.code() == grpc.StatusCode.UNAVAILABLE
    assert "unreachable" in (f.error.details() or "")


def test_an_unconfigured_connection_is_refused_at_publish(
    space: LocalSpace, tmp_path: Path
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stream_product(
            space, "rain-x", {"kind": "stream", "connection": "radar", "subject": "r"}, tmp_path
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[sources.radar]" in (caught.value.details() or "")


def test_an_mqtt_topic_is_followed_as_well(space: LocalSpace, tmp_path: Path) -> None:
    if why := _reachable(MQTT_URL):
        pytest.skip(f"MQTT broker not reachable at {MQTT_URL}: {why}")
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    topic = f"tds/test/{time.monotonic_ns()}/rain"
    stream_product(
        space, "rain-mqtt", {"kind": "stream", "connection": "sensors", "topic": topic}, tmp_path
    )
    agreement = agree(space, "gov", "a", "rain-mqtt")
    f = Follower(space, "a", agreement)
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        time.sleep(1.0)  # the provider's client subscribes at the first subscription
        for r in readings(6):
            client.publish(topic, json.dumps(r), qos=1).wait_for_publish(5)
        f.wait_kept(6)
    finally:
        f.stop()
        client.loop_stop()
        client.disconnect()
    kept = held(space, "a", agreement)
    assert [line["record"]["station"] for line in kept] == [f"S{i:03d}" for i in range(6)]
    assert [line["sequence"] for line in kept] == sorted({line["sequence"] for line in kept})


def test_non_json_and_oversized_messages_are_skipped_and_the_chain_still_checks(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(3))
    js.publish(
        subject, b"not json", b"[1, 2]", b'{"station": "big", "pad": "' + b"x" * 10_000 + b'"}'
    )
    js.publish_json(subject, *readings(3, start=3))
    f = Follower(space, "a", agreement)
    try:
        f.wait_kept(9)  # sequences 4, 5, 6 were never delivered
    finally:
        f.stop()
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == [1, 2, 3, 7, 8, 9]


def test_the_byte_limit_stops_the_stream_and_nothing_past_it_is_sent(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    subject = js.stream()
    pid = "rain-limit-" + subject.rsplit("_", 1)[-1]
    publish(
        space,
        "gov",
        {
            "id": pid,
            "title": "Rain gauges",
            "grade": "general",
            "fields": FIELDS,
            "source": {"kind": "stream", "connection": "weather", "subject": subject},
            "offers": [offer(max_bytes=300)],
        },
        tmp_path,
    )
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(20))
    f = Follower(space, "a", agreement)
    f.wait_end(15)
    assert f.error is not None and f.error.code() == grpc.StatusCode.PERMISSION_DENIED
    stopped = [
        e["data"]
        for e in entries(space, "gov", "stream.stopped")
        if e["data"]["agreement"] == agreement
    ]
    assert stopped[-1]["reason"] == "byte_limit_reached"
    assert 0 < stopped[-1]["sent_bytes"] <= 300
    metering = space.nodes["gov"].stream_store
    assert metering is not None
    messages, used = metering.usage(agreement)
    assert used <= 300 and messages == stopped[-1]["sent"]
    # A new subscription is refused: the stream was terminated at the limit.
    again = Follower(space, "a", agreement)
    again.wait_end(10)
    assert again.error is not None
    assert again.error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_feed_published_while_followed_arrives_whole(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    pid, subject = feed
    agreement = agree(space, "gov", "a", pid)
    f = Follower(space, "a", agreement)
    try:
        for i in range(0, 150, 5):  # 150 readings at about 100 a second
            js.publish_json(subject, *readings(5, start=i))
            time.sleep(0.05)
        f.wait_kept(150, timeout=30)
    finally:
        f.stop()
    assert [line["sequence"] for line in held(space, "a", agreement)] == list(range(1, 151))


def _subscribe_raw(
    space: LocalSpace, agreement: str, *, batches: bool, windows: int
) -> list[stream_pb2.SubscribeDown]:
    """What the provider sends a member that subscribes and signs nothing, up to the
    ``windows``-th window proposal."""
    channel = space.nodes["a"]._member_channel("gov")
    leave = threading.Event()

    def requests() -> Iterator[stream_pb2.SubscribeUp]:
        yield stream_pb2.SubscribeUp(
            start=stream_pb2.SubscribeStart(agreement_id=agreement, batches=batches)
        )
        leave.wait(20)

    got: list[stream_pb2.SubscribeDown] = []
    call = stream_pb2_grpc.StreamServiceStub(channel).Subscribe(requests())
    try:
        for down in call:
            got.append(down)
            if sum(d.WhichOneof("kind") == "window" for d in got) == windows:
                break
    finally:
        leave.set()
        call.cancel()
        channel.close()
    return got


@pytest.mark.parametrize("batches", [True, False])
def test_records_come_in_batches_to_a_consumer_that_asks_and_never_across_a_window(
    space: LocalSpace, js: JetStream, feed: tuple[str, str], batches: bool
) -> None:
    pid, subject = feed
    js.publish_json(subject, *readings(12))
    downs = _subscribe_raw(space, agree(space, "gov", "a", pid), batches=batches, windows=2)
    kinds = [d.WhichOneof("kind") for d in downs]
    assert kinds[0] == "started"
    assert ("message" in kinds) != batches and ("batch" in kinds) == batches
    received: list[stream_pb2.StreamMessage] = []
    for down in downs[1:]:
        if down.WhichOneof("kind") == "batch":
            assert 1 <= len(down.batch.messages) <= 5  # window_messages: never across one
            received += down.batch.messages
        elif down.WhichOneof("kind") == "message":
            received.append(down.message)
        else:  # a proposal follows the frame that holds its window's last record
            assert down.window.last_sequence == received[-1].sequence
    assert [(m.sequence, m.previous) for m in received] == [(i, i - 1) for i in range(1, 11)]
    if batches:  # the records fetched together went together (5: the window's room)
        assert [len(d.batch.messages) for d in downs if d.WhichOneof("kind") == "batch"] == [5, 5]


@pytest.mark.parametrize(
    "links, fault",
    [
        ([(1, 0), (2, 1), (4, 3), (5, 4)], "gap: sequence 4 follows 3"),
        ([(1, 0), (2, 1), (2, 1), (3, 2)], "sequence 2 was received twice"),
        ([(1, 0), (3, 1), (2, 1), (4, 3)], "sequence 2 arrived after 3"),
    ],
)
def test_a_batch_with_a_gap_repeat_or_reordering_inside_is_refused_and_nothing_is_kept(
    space: LocalSpace, feed: tuple[str, str], links: list[tuple[int, int]], fault: str
) -> None:
    agreement = agree(space, "gov", "a", feed[0])
    db = space.nodes["a"].db
    assert db is not None
    signed = NegotiationStore(db).by_agreement(agreement).agreement
    assert signed
    liar = HostileProvider(space, "gov", parse_agreement(signed), b"")
    liar.streams = HostileStreams(liar.agreement, FIELDS, genesis_head(agreement).hex())
    records = [
        stream_pb2.StreamMessage(
            sequence=seq, previous=prev, record=canonical_json({"station": f"S{seq}", "mm": 1})
        )
        for seq, prev in links
    ]
    # A window proposal after the batch, so that an accepted batch would be committed.
    liar.streams.frames = [
        stream_pb2.SubscribeDown(batch=stream_pb2.StreamBatch(messages=records)),
        stream_pb2.SubscribeDown(window=stream_pb2.WindowProposal(index=0, count=len(links))),
    ]
    with liar.serving():
        follower = Follower(space, "a", agreement)
        follower.wait_end(20)
    assert follower.error is not None
    assert fault in (follower.error.details() or "")
    failed = [
        e["data"]
        for e in entries(space, "a", "stream.failed")
        if e["data"]["agreement"] == agreement
    ]
    assert (
        failed and failed[-1]["reason"].startswith("integrity") and failed[-1]["kept_sequence"] == 0
    )
    assert not list(stream_holding(space.configs["a"].data_dir / "holdings", agreement).glob("0*"))
    assert not entries(space, "a", "stream.window") or all(
        e["data"]["agreement"] != agreement for e in entries(space, "a", "stream.window")
    )


def test_a_subscription_cancelled_while_a_record_goes_out_ends_on_the_provider(
    space: LocalSpace, js: JetStream, feed: tuple[str, str]
) -> None:
    # grpc stops pulling a response iterator whose call was cancelled while a message was
    # being sent, without closing it: the provider's subscription must still end (logged,
    # SUSPENDED, its source subscription closed), not wait for the garbage collector.
    pid, subject = feed
    store = space.nodes["gov"].stream_store
    assert store is not None
    for _ in range(3):
        agreement = agree(space, "gov", "a", pid)
        channel = space.nodes["a"]._member_channel("gov")
        leave = threading.Event()

        def requests(
            agreement: str = agreement, leave: threading.Event = leave
        ) -> Iterator[stream_pb2.SubscribeUp]:
            yield stream_pb2.SubscribeUp(
                start=stream_pb2.SubscribeStart(agreement_id=agreement, from_sequence=0)
            )
            leave.wait(20)

        call = stream_pb2_grpc.StreamServiceStub(channel).Subscribe(requests())
        try:
            assert next(call).WhichOneof("kind") == "started"
            call.cancel()
            # A record published right after the cancel is sent into the closed call
            # before the provider's next look at it.
            js.publish_json(subject, *readings(1))
        finally:
            leave.set()
            channel.close()
        deadline = time.monotonic() + 5
        while True:
            ended = [
                e
                for e in entries(space, "gov", "stream.suspended")
                if e["data"]["agreement"] == agreement
            ]
            if ended and store.get(agreement, "provider").state != "STARTED":
                break
            assert time.monotonic() < deadline, "the cancelled subscription has not ended"
            time.sleep(0.05)
        assert len(ended) == 1, ended
