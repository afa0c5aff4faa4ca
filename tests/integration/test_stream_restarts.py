"""A stream survives restarts of either connector: the provider's (JetStream's sequences
are the broker's own) and the consumer's (it resumes from its last countersigned window,
kept in its store), each with nothing lost or doubled in the consumer's holding; and a
break between the provider's countersignature and its arrival at the consumer, after
which the provider sends the lost receipt again (and only a receipt that is the
consumer's own signature on the records it holds is kept)."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector.audit.auditor import fetch_and_witness
from connector.audit.verify import reconcile, verify
from connector.audit.window_receipts import verify_window
from connector.config import StreamConfig
from connector.demo.space import LocalSpace
from connector.errors import Unavailable
from connector.identity.names import Role
from connector.negotiation.agreement import parse_agreement
from connector.negotiation.store import NegotiationStore
from connector.sources.mqtt_connection import MqttConnection
from connector.sources.nats_connection import NatsConnection
from connector.sources.windows import Window
from connector.transfer.subscriber import stream_holding
from tests.sources.conftest import MQTT_URL, NATS_URL, JetStream, _jetstream, _reachable
from tests.support.exchange import agree, entries
from tests.support.hostile import HostileProvider, HostileStreams
from tests.support.streams import FIELDS, Follower, held, readings, restart, stream_product

SETTINGS = StreamConfig(window_messages=4, window_seconds=0.3, ack_timeout_seconds=5)


@pytest.fixture
def js() -> Iterator[JetStream]:
    yield from _jetstream(NATS_URL)


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    """One space for the module (each test has a product and agreement of its own; a
    restarted connector stays in ``space.nodes`` for the tests after it)."""
    parts = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("auditor", Role.AUDITOR)]
    with LocalSpace.create(tmp_path_factory.mktemp("restarts"), parts) as sp:
        sp.start_registry()
        start_provider(sp)
        sp.start_connector("a")
        sp.enrol("auditor", "")
        yield sp


def fresh_product() -> str:
    return f"rain-{uuid.uuid4().hex[:12]}"


def start_provider(space: LocalSpace) -> None:
    sources: dict[str, Any] = {
        "weather": NatsConnection("weather", NATS_URL),
        "sensors": MqttConnection("sensors", MQTT_URL),
    }
    space.start_connector("gov", sources=sources, stream=SETTINGS)


@pytest.mark.slow
@pytest.mark.parametrize("who", ["gov", "a"])
def test_a_restart_of_either_side_resumes_without_loss_or_duplication(
    space: LocalSpace, js: JetStream, tmp_path: Path, who: str
) -> None:
    subject, pid = js.stream(), fresh_product()
    stream_product(
        space, pid, {"kind": "stream", "connection": "weather", "subject": subject}, tmp_path
    )
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(10))
    first = Follower(space, "a", agreement)
    first.wait_kept(10)
    restart(space, who)
    first.wait_end(15)
    if who == "gov":
        assert first.error is not None
        assert first.error.code() == grpc.StatusCode.UNAVAILABLE
    js.publish_json(subject, *readings(11, start=10))  # while the stream is down
    second = Follower(space, "a", agreement)
    second.wait_kept(21)
    second.stop()
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == list(range(1, 22))
    assert [line["record"]["station"] for line in kept] == [f"S{i:03d}" for i in range(21)]


class MqttFeed:
    """A plain MQTT client publishing readings to one topic at QoS 1."""

    def __init__(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = f"tds/test/{time.monotonic_ns()}/rain"
        self._client = paho.Client(CallbackAPIVersion.VERSION2)
        self._client.connect("127.0.0.1", 1883)
        self._client.loop_start()

    def publish(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            self._client.publish(self.topic, json.dumps(r), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.mark.slow
@pytest.mark.parametrize("who", ["gov", "a"])
def test_an_mqtt_stream_resumes_across_a_restart_of_either_side_without_loss_or_duplication(
    space: LocalSpace, tmp_path: Path, who: str
) -> None:
    """MQTT numbers nothing itself: the provider's numbering and replay buffer are on disk
    (the journal), and its broker session queues what is published while it is down."""
    if why := _reachable(MQTT_URL):
        pytest.skip(f"MQTT broker not reachable at {MQTT_URL}: {why}")
    feed = MqttFeed()
    try:
        pid = fresh_product()
        stream_product(
            space, pid, {"kind": "stream", "connection": "sensors", "topic": feed.topic}, tmp_path
        )
        agreement = agree(space, "gov", "a", pid)
        first = Follower(space, "a", agreement)
        time.sleep(1.0)  # the provider's client subscribes at the first subscription
        feed.publish(readings(10))
        first.wait_kept(8)  # two windows countersigned; 9 and 10 are not acknowledged yet
        restart(space, who)
        first.wait_end(15)
        feed.publish(readings(7, start=10))  # while the stream is down (and the provider)
        if who == "gov":
            # The restarted provider takes up its MQTT session at once, before anyone
            # subscribes again: what the broker queued is numbered (and journaled) now.
            sources = space.nodes["gov"].stream_sources
            deadline = time.monotonic() + 10
            while not any(s._buffer.newest >= 17 for s in sources._mqtt.values()):
                assert time.monotonic() < deadline, "the MQTT source was not resumed"
                time.sleep(0.05)
        second = Follower(space, "a", agreement)
        second.wait_kept(17)
        feed.publish(readings(3, start=17))  # live again
        second.wait_kept(20)
        second.stop()
    finally:
        feed.close()
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == list(range(1, 21))
    assert [line["record"]["station"] for line in kept] == [f"S{i:03d}" for i in range(20)]
    # The hash chain runs on across the restart: every window verifies and follows the
    # one before, and the auditor pairs each of them in both logs.
    receipts = window_receipts(space, "gov", agreement)
    assert window_receipts(space, "a", agreement) == receipts
    keys = space.nodes["gov"]._signing_key_of
    covered = [verify_window(r, keys).window for r in receipts]
    assert [w.index for w in covered] == list(range(len(covered)))
    assert all(w.first_sequence == p.last_sequence + 1 for p, w in itertools.pairwise(covered))
    assert all(w.start_head == p.head for p, w in itertools.pairwise(covered))
    assert (covered[0].first_sequence, covered[-1].last_sequence) == (1, 20)
    cfg = space.write_config("auditor", "", space.registry_address)
    for side in ("gov", "a"):
        fetch_and_witness(cfg, side, tmp_path / "audit" / side)
        assert verify(tmp_path / "audit" / side).ok
    paired = reconcile(tmp_path / "audit" / "gov", tmp_path / "audit" / "a")
    assert paired["ok"], paired
    # Every window either log holds is paired (earlier tests' streams share the logs).
    assert paired["windows"] == paired["matched"] >= len(covered)


def drop_after_countersigning(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch, index: int
) -> threading.Event:
    """Break the call just after the provider countersigned (stored and logged) window
    ``index``, before the countersigned receipt goes out: what a connection lost at that
    moment leaves behind. Once."""
    provider = space.nodes["gov"].stream_provider
    assert provider is not None
    countersign = provider._countersign
    dropped = threading.Event()

    def dropping(run: Any, window: Window, signed: str) -> str:
        countersigned = countersign(run, window, signed)
        if window.index == index and not dropped.is_set():
            dropped.set()
            raise Unavailable("the connection was lost (injected)")
        return countersigned

    monkeypatch.setattr(provider, "_countersign", dropping)
    return dropped


def lose_a_countersignature(
    space: LocalSpace, js: JetStream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[str, str]:
    """A stream whose window 1 (records 5-8) the provider countersigned and the consumer
    never got back; (agreement, subject)."""
    subject, pid = js.stream(), fresh_product()
    stream_product(
        space, pid, {"kind": "stream", "connection": "weather", "subject": subject}, tmp_path
    )
    agreement = agree(space, "gov", "a", pid)
    dropped = drop_after_countersigning(space, monkeypatch, index=1)
    js.publish_json(subject, *readings(8))
    first = Follower(space, "a", agreement)
    first.wait_end(20)
    assert dropped.is_set()
    assert first.error is not None and first.error.code() == grpc.StatusCode.UNAVAILABLE
    gov, a = (space.nodes[who].stream_store for who in ("gov", "a"))
    assert gov is not None and a is not None
    # The provider's resume point is past window 1, the consumer's before it: the call
    # broke in between.
    assert (
        gov.get(agreement, "provider").acked_sequence,
        a.get(agreement, "consumer").acked_sequence,
    ) == (8, 4)
    assert [line["sequence"] for line in held(space, "a", agreement)] == [1, 2, 3, 4]
    return agreement, subject


def window_receipts(space: LocalSpace, who: str, agreement: str) -> list[str]:
    return [
        e["data"]["receipt"]
        for e in entries(space, who, "stream.window")
        if e["data"]["agreement"] == agreement
    ]


@pytest.mark.slow
def test_a_countersignature_lost_on_the_way_is_sent_again_and_nothing_is_lost_or_doubled(
    space: LocalSpace, js: JetStream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    agreement, subject = lose_a_countersignature(space, js, monkeypatch, tmp_path)
    store = space.nodes["gov"].stream_store
    assert store is not None
    metered = store.usage(agreement)
    js.publish_json(subject, *readings(6, start=8))
    second = Follower(space, "a", agreement)
    second.wait_kept(14)
    second.stop()
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == list(range(1, 15))
    assert [line["record"]["station"] for line in kept] == [f"S{i:03d}" for i in range(14)]
    # Window 1's receipt came again, as it was: not countersigned or logged again by the
    # provider; its records were neither sent nor metered again.
    resumed = [
        e["data"]
        for e in entries(space, "gov", "stream.started")
        if e["data"]["agreement"] == agreement
    ][-1]
    assert resumed["resent_windows"] == [1] and resumed["after_sequence"] == 8
    assert entries(space, "a", "stream.started")[-1]["data"]["resent_windows"] == [1]
    provider_receipts = window_receipts(space, "gov", agreement)
    assert window_receipts(space, "a", agreement) == provider_receipts
    keys = space.nodes["gov"]._signing_key_of
    covered = [verify_window(r, keys).window for r in provider_receipts]
    assert [w.index for w in covered] == list(range(len(covered)))
    assert (covered[0].first_sequence, covered[-1].last_sequence) == (1, 14)
    deadline = time.monotonic() + 5
    while store.usage(agreement)[0] != 14 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.usage(agreement) == (14, metered[1] + sum(w.bytes for w in covered[2:]))
    # The auditor pairs every window in both logs.
    cfg = space.write_config("auditor", "", space.registry_address)
    for who in ("gov", "a"):
        fetch_and_witness(cfg, who, tmp_path / "audit" / who)
        assert verify(tmp_path / "audit" / who).ok
    paired = reconcile(tmp_path / "audit" / "gov", tmp_path / "audit" / "a")
    assert paired["ok"], paired
    # Every window either log holds is paired (earlier tests' streams share the logs).
    assert paired["windows"] == paired["matched"] >= len(covered)


@pytest.mark.slow
@pytest.mark.parametrize("then", ["consumer restarted", "segment renamed, store not moved"])
def test_a_lost_countersignature_is_recovered_across_a_consumer_restart(
    space: LocalSpace,
    js: JetStream,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    then: str,
) -> None:
    agreement, _ = lose_a_countersignature(space, js, monkeypatch, tmp_path)
    directory = stream_holding(space.configs["a"].data_dir / "holdings", agreement)
    if then == "segment renamed, store not moved":
        # A crash between committing window 1's segment and moving the resume point.
        (directory / "00000001.proposed").rename(directory / "00000001.jsonl")
    restart(space, "a")
    follower = Follower(space, "a", agreement)
    follower.wait_kept(8)
    follower.stop()
    assert [line["sequence"] for line in held(space, "a", agreement)] == list(range(1, 9))
    assert window_receipts(space, "a", agreement) == window_receipts(space, "gov", agreement)
    assert not list(directory.glob("*.proposed"))


def tampered(countersigned: str) -> str:
    """The receipt with the provider's signature changed (one signature byte flipped)."""
    doc = json.loads(countersigned)
    sig = doc["signatures"][1]["signature"]
    doc["signatures"][1]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    return json.dumps(doc, separators=(",", ":"))


@pytest.mark.slow
def test_a_resent_receipt_that_is_not_the_consumers_own_on_what_it_holds_keeps_nothing(
    space: LocalSpace, js: JetStream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    agreement, _ = lose_a_countersignature(space, js, monkeypatch, tmp_path)
    gov_store = space.nodes["gov"].stream_store
    assert gov_store is not None
    (_, r0), (w1, r1) = gov_store.windows(agreement, "provider")
    db = space.nodes["a"].db
    assert db is not None
    signed = NegotiationStore(db).by_agreement(agreement).agreement
    assert signed
    consumer_store = space.nodes["a"].stream_store
    assert consumer_store is not None
    liar = HostileProvider(space, "gov", parse_agreement(signed), b"")
    liar.streams = HostileStreams(liar.agreement, FIELDS, w1.head)
    not_signed_here = "the receipt of window 1 the provider sent again is not the one signed"
    lies = {
        "an earlier window's receipt replayed": ([r0], not_signed_here),
        "the provider's countersignature forged": ([tampered(r1)], not_signed_here),
        # The consumer signed no window 2: whatever the receipt, it has no records for it.
        "the right receipt followed by one for records never signed": (
            [r1, r0],
            "no records of window 2 are held here",
        ),
    }
    with liar.serving():
        for lie, (receipts, refusal) in lies.items():
            liar.streams.receipted = receipts
            follower = Follower(space, "a", agreement)
            follower.wait_end(20)
            assert follower.error is not None, lie
            assert refusal in (follower.error.details() or ""), lie
            # Nothing kept, not even the window whose receipt was right.
            state = consumer_store.get(agreement, "consumer")
            assert (state.acked_sequence, state.next_window) == (4, 1), lie
            assert [line["sequence"] for line in held(space, "a", agreement)] == [1, 2, 3, 4]
            assert window_receipts(space, "a", agreement) == [r0], lie
            failed = entries(space, "a", "stream.failed")[-1]["data"]
            assert failed["reason"].startswith("integrity") and failed["kept_sequence"] == 4
    # What was refused lost nothing: the honest provider's resend is kept.
    honest = Follower(space, "a", agreement)
    honest.wait_kept(8)
    honest.stop()
    assert [line["sequence"] for line in held(space, "a", agreement)] == list(range(1, 9))
    assert window_receipts(space, "a", agreement) == [r0, r1]
