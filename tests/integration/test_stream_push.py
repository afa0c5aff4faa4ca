"""Streams whose offer delivers by push (``delivery = ["copy", "push"]``), between
connectors against the machine's NATS JetStream: the consumer's connector asks
(RequestStreamPush), the provider opens Deliver into it over mutual TLS and the records,
windows, receipts, metering, stops and resumes are those of a pulled subscription. A push
the consumer did not ask for, or under an agreement that does not deliver by push, is
refused and keeps nothing; a pull of a push stream is refused too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc
from connector.audit.window_receipts import verify_window
from connector.config import StreamConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.sources.nats_connection import NatsConnection
from connector.transfer.stream_push import AGREEMENT_HEADER
from connector.transfer.subscriber import stream_holding
from tests.sources.conftest import NATS_URL, JetStream, _jetstream
from tests.support.exchange import agree, entries, logged_soon
from tests.support.streams import (
    Follower,
    held,
    readings,
    restart,
    revoked_while_flowing,
    stream_product,
)

SETTINGS = StreamConfig(window_messages=5, window_seconds=0.3, ack_timeout_seconds=5)


@pytest.fixture(scope="module")
def js() -> Iterator[JetStream]:
    yield from _jetstream(NATS_URL)


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, js: JetStream) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("push")
    with LocalSpace.create(
        root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    ) as sp:
        sp.start_registry()
        sp.start_connector(
            "gov", sources={"weather": NatsConnection("weather", NATS_URL)}, stream=SETTINGS
        )
        sp.start_connector("a")
        sp.start_connector("b")
        yield sp


def feed(space: LocalSpace, js: JetStream, base: Path, *, push: bool = True) -> tuple[str, str]:
    """A fresh subject published as a stream product (pushed or pulled); (id, subject)."""
    subject = js.stream()
    pid = ("push-" if push else "pull-") + subject.rsplit("_", 1)[-1]
    source = {"kind": "stream", "connection": "weather", "subject": subject}
    stream_product(space, pid, source, base, delivery=["copy", "push"] if push else ["copy"])
    return pid, subject


class Spy:
    """Counts the Deliver calls a consumer's connector takes (the real code runs)."""

    def __init__(self, space: LocalSpace, who: str, monkeypatch: pytest.MonkeyPatch) -> None:
        pushes = space.nodes[who].stream_consumer.pushes  # type: ignore[union-attr]
        real = pushes.deliver
        self.calls: list[str] = []

        def deliver(caller: Any, agreement_id: str, messages: Any) -> Any:
            self.calls.append(agreement_id)
            return real(caller, agreement_id, messages)

        monkeypatch.setattr(pushes, "deliver", deliver)


def test_a_pushed_stream_arrives_checked_windowed_and_metered(
    space: LocalSpace, js: JetStream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid, subject = feed(space, js, tmp_path)
    agreement = agree(space, "gov", "a", pid)
    spy = Spy(space, "a", monkeypatch)
    js.publish_json(subject, *readings(12))
    follower = Follower(space, "a", agreement)
    try:
        follower.wait_kept(10)
        js.publish_json(subject, *readings(8, start=12))  # live
        follower.wait_kept(20)
    finally:
        follower.stop()
    assert spy.calls == [agreement]  # it came by push: the provider called in
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == list(range(1, 21))
    records = [line["record"] for line in kept]
    assert [r["station"] for r in records] == [f"S{i:03d}" for i in range(20)]
    assert not any(r["operator"].startswith("Operator") for r in records)  # masked
    provider_receipts = [
        e["data"]["receipt"]
        for e in entries(space, "gov", "stream.window")
        if e["data"]["agreement"] == agreement
    ]
    assert [e["data"]["receipt"] for e in entries(space, "a", "stream.window")][
        -len(provider_receipts) :
    ] == provider_receipts
    keys = space.nodes["gov"]._signing_key_of
    covered = [verify_window(r, keys).window for r in provider_receipts]
    assert (covered[0].first_sequence, covered[-1].last_sequence) == (1, 20)
    store = space.nodes["gov"].stream_store
    assert store is not None
    deadline = time.monotonic() + 5
    while store.usage(agreement)[0] != 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.usage(agreement) == (20, sum(w.bytes for w in covered))
    # Suspended by the consumer (its follow was cancelled), as a pulled one would be.
    suspended = logged_soon(space, "gov", "stream.suspended", agreement=agreement)
    assert suspended and "consumer" in suspended[-1]["data"]["reason"]


def test_a_pull_of_a_pushed_stream_and_a_push_of_a_pulled_one_are_refused(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    pushed, _ = feed(space, js, tmp_path)
    pulled, _ = feed(space, js, tmp_path, push=False)
    by_push, by_pull = agree(space, "gov", "b", pushed), agree(space, "gov", "b", pulled)
    channel = space.nodes["b"]._member_channel("gov")
    stub = stream_pb2_grpc.StreamServiceStub(channel)
    try:
        start = stream_pb2.SubscribeUp(start=stream_pb2.SubscribeStart(agreement_id=by_push))
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Subscribe(iter([start]), timeout=10))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "delivered by push; use RequestStreamPush" in (caught.value.details() or "")
        # A RequestStreamPush of a pulled stream: the provider refuses it before opening
        # anything to the consumer's connector.
        with pytest.raises(grpc.RpcError) as caught:
            stub.RequestStreamPush(
                stream_pb2.RequestStreamPushRequest(agreement_id=by_pull), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "delivered by pull; use Subscribe" in (caught.value.details() or "")
    finally:
        channel.close()
    assert not stream_holding(space.configs["b"].data_dir / "holdings", by_pull).exists()


@pytest.mark.parametrize("case", ["no follow awaits it", "a pulled agreement", "not its provider"])
def test_the_consumer_refuses_a_push_it_did_not_ask_for_and_keeps_nothing(
    space: LocalSpace, js: JetStream, tmp_path: Path, case: str
) -> None:
    pid, subject = feed(space, js, tmp_path, push=case != "a pulled agreement")
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(3))
    follower = None
    if case == "not its provider":
        # A follow waits for gov's push: "b" (another member) cannot answer it.
        follower = Follower(space, "a", agreement)
        follower.wait_kept(0)
    pusher = "b" if case == "not its provider" else "gov"
    channel = space.nodes[pusher]._member_channel("a")
    fake = [
        stream_pb2.SubscribeDown(
            message=stream_pb2.StreamMessage(sequence=1, previous=0, record=b'{"station":"X"}')
        )
    ]
    try:
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stream_pb2_grpc.StreamServiceStub(channel).Deliver(
                    iter(fake), metadata=((AGREEMENT_HEADER, agreement),), timeout=10
                )
            )
    finally:
        channel.close()
        if follower is not None:
            follower.stop()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "awaits no push" in (caught.value.details() or "")
    kept = held(space, "a", agreement) if case == "not its provider" else []
    assert all(line["record"].get("station") != "X" for line in kept)
    if case != "not its provider":
        assert not stream_holding(space.configs["a"].data_dir / "holdings", agreement).exists()


def test_revocation_stops_a_push_within_a_second(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    pid, subject = feed(space, js, tmp_path)
    agreement = agree(space, "gov", "b", pid)
    revoked_while_flowing(space, js, subject, "gov", "b", agreement)
    deadline = time.monotonic() + 5
    holding = stream_holding(space.configs["b"].data_dir / "holdings", agreement)
    while holding.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not holding.exists()


@pytest.mark.slow
@pytest.mark.parametrize("who", ["a", "gov"])
def test_a_push_resumes_after_a_restart_without_loss_or_duplication(
    space: LocalSpace, js: JetStream, tmp_path: Path, who: str
) -> None:
    pid, subject = feed(space, js, tmp_path)
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(10))
    first = Follower(space, "a", agreement)
    first.wait_kept(10)
    restart(space, who)
    first.wait_end(15)
    js.publish_json(subject, *readings(11, start=10))  # while the stream is down
    second = Follower(space, "a", agreement)
    second.wait_kept(21)
    second.stop()
    kept = held(space, "a", agreement)
    assert [line["sequence"] for line in kept] == list(range(1, 22))
    assert [line["record"]["station"] for line in kept] == [f"S{i:03d}" for i in range(21)]
