"""Helpers for stream tests: a consumer following a stream, what it holds, readings to
publish, a connector restarted in place, and a revocation while records flow."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from connector._proto.tds.v1 import admin_pb2, stream_pb2
from connector.demo.space import LocalSpace
from connector.demo.steps import Following
from connector.node import Node
from connector.transfer.subscriber import stream_holding
from tests.sources.conftest import JetStream
from tests.support.exchange import admin, entries, offer, publish

FIELDS = ["station", "operator", "mm"]


class Follower:
    """A consumer's admin following a stream (``tds subscribe``), in a thread: the demo's
    ``Following``, with waits that fail the test."""

    def __init__(self, space: LocalSpace, who: str, agreement: str) -> None:
        self._following = Following(space, who, agreement)

    @property
    def events(self) -> list[stream_pb2.FollowEvent]:
        return self._following.events

    @property
    def error(self) -> grpc.RpcError | None:
        return self._following.error

    @property
    def ended_at(self) -> float:
        return self._following.ended_at

    def kept(self) -> int:
        return self._following.kept()

    def wait_kept(self, sequence: int, timeout: float = 20) -> None:
        if not self._following.wait_kept(sequence, timeout):
            assert self.error is None, self.error
            raise AssertionError(f"kept {self.kept()} of {sequence}")

    def stop(self) -> None:
        self._following.close()

    def wait_end(self, timeout: float = 10) -> None:
        assert self._following.wait_end(timeout)
        self._following.close()


def held(space: LocalSpace, who: str, agreement: str) -> list[dict[str, Any]]:
    """Every record a consumer keeps for an agreement, in segment order."""
    directory = stream_holding(space.configs[who].data_dir / "holdings", agreement)
    lines: list[dict[str, Any]] = []
    for segment in sorted(directory.glob("0*.jsonl")):
        lines += [json.loads(line) for line in segment.read_text().splitlines()]
    return lines


def readings(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"station": f"S{i:03d}", "operator": f"Operator {i}", "mm": i / 10, "extra": "x"}
        for i in range(start, start + n)
    ]


def stream_product(
    space: LocalSpace, pid: str, source: dict[str, Any], base: Path, **terms: Any
) -> None:
    """Publish rain-gauge readings from ``source`` as product ``pid`` of "gov", its one
    offer permitting every field with the operator's name masked (``terms`` add to it)."""
    publish(
        space,
        "gov",
        {
            "id": pid,
            "title": "Rain gauges",
            "grade": "general",
            "fields": FIELDS,
            "source": source,
            "offers": [offer(permitted_fields=FIELDS, masks={"operator": "hash"}, **terms)],
        },
        base,
    )


def restart(space: LocalSpace, who: str) -> None:
    """Stop the connector and start it again on the same configuration and port."""
    node = space.nodes[who]
    node.stop(grace=1)
    fresh = Node(node.cfg)
    fresh.start()
    space.nodes[who] = fresh
    assert fresh.wait_ready(10)


def revoked_while_flowing(
    space: LocalSpace, js: JetStream, subject: str, provider: str, consumer: str, agreement: str
) -> None:
    """Revoke ``agreement`` while readings keep arriving on ``subject`` and ``consumer``
    follows them; the stream must end with ``agreement_revoked`` within a second of the
    revocation, and the provider log the stop after sending something."""
    stop = threading.Event()

    def keep_publishing() -> None:
        i = 0
        while not stop.is_set():
            js.publish_json(subject, *readings(20, start=i))
            i += 20

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    follower = Follower(space, consumer, agreement)
    try:
        follower.wait_kept(10)
        revoked_at = time.monotonic()
        admin(space, provider).RevokeAgreement(
            admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="emergency over"),
            timeout=10,
        )
        follower.wait_end(5)
    finally:
        stop.set()
        publisher.join(10)
    assert follower.error is not None
    assert follower.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agreement_revoked" in (follower.error.details() or "")
    assert follower.ended_at - revoked_at < 1.0
    stopped = [
        e["data"]
        for e in entries(space, provider, "stream.stopped")
        if e["data"]["agreement"] == agreement
    ]
    assert stopped and stopped[-1]["reason"] == "agreement_revoked" and stopped[-1]["sent"] > 0
