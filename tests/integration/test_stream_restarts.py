"""A stream survives restarts of either connector: the provider's (JetStream's sequences
are the broker's own) and the consumer's (it resumes from its last countersigned window,
kept in its store), each with nothing lost or doubled in the consumer's holding."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector.config import StreamConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node import Node
from connector.sources.nats_connection import NatsConnection
from tests.integration.test_stream_subscribe import (
    Follower,
    held,
    readings,
    stream_product,
)
from tests.sources.conftest import NATS_URL, JetStream, _jetstream
from tests.support.exchange import agree

SETTINGS = StreamConfig(window_messages=4, window_seconds=0.3, ack_timeout_seconds=5)


@pytest.fixture
def js() -> Iterator[JetStream]:
    yield from _jetstream(NATS_URL)


@pytest.fixture
def space(tmp_path: Path) -> Iterator[LocalSpace]:
    with LocalSpace.create(tmp_path, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        start_provider(sp)
        sp.start_connector("a")
        yield sp


def start_provider(space: LocalSpace) -> None:
    sources: dict[str, Any] = {"weather": NatsConnection("weather", NATS_URL)}
    space.start_connector("gov", sources=sources, stream=SETTINGS)


def restart(space: LocalSpace, who: str) -> None:
    """Stop the connector and start it again on the same configuration and port."""
    node = space.nodes[who]
    node.stop(grace=1)
    fresh = Node(node.cfg)
    fresh.start()
    space.nodes[who] = fresh
    assert fresh.wait_ready(10)


@pytest.mark.slow
@pytest.mark.parametrize("who", ["gov", "a"])
def test_a_restart_of_either_side_resumes_without_loss_or_duplication(
    space: LocalSpace, js: JetStream, tmp_path: Path, who: str
) -> None:
    subject = js.stream()
    stream_product(
        space, "rain", {"kind": "stream", "connection": "weather", "subject": subject}, tmp_path
    )
    agreement = agree(space, "gov", "a", "rain")
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
