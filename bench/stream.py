"""End-to-end stream throughput between two connectors, against a plain NATS client.

    python bench/stream.py [--messages 5000] [--size 1024] [--json]

Against the machine's NATS (JetStream) at 127.0.0.1:4222. ``--messages`` JSON records of
about ``--size`` bytes are published to a new JetStream subject first; then, in the same
run, a plain nats-py pull consumer reads them all (decoding each), and a consumer's
connector follows the stream product from the provider's connector over mutual TLS
(policy re-checks, projection and a mask per message, metering, the hash chain, window
receipts every 1,000 messages signed, countersigned, logged and stored, each window's
segment written and fsynced). Reported: messages/s of each and the ratio. Latency at a
steady rate and memory with a stalled consumer (issue 20's other figures) are not
measured here yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stream_source import NATS_URL, _nats_plain, _nats_setup, _payloads
from connector._proto.tds.v1 import admin_pb2, stream_pb2, stream_pb2_grpc
from connector.config import StreamConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import admin_channel
from connector.sources.nats_connection import NatsConnection
from tests.support.exchange import admin, agree, offer


def _follow(space: LocalSpace, agreement: str, n: int) -> float:
    channel = admin_channel(space.configs["a"])
    call = stream_pb2_grpc.StreamServiceStub(channel).Follow(
        stream_pb2.FollowRequest(agreement_id=agreement)
    )
    started = time.perf_counter()
    for event in call:
        if event.kept_sequence >= n:
            break
    elapsed = time.perf_counter() - started
    call.cancel()
    channel.close()
    return elapsed


def bench(n: int, size: int) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    nc, stream, subject = loop.run_until_complete(_nats_setup(_payloads(n, size)))
    plain = loop.run_until_complete(_nats_plain(subject, stream, n))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources: dict[str, Any] = {"feed": NatsConnection("feed", NATS_URL)}
        settings = StreamConfig(window_messages=1000, window_seconds=5.0)
        with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
            sp.start_registry()
            sp.start_connector("gov", sources=sources, stream=settings)
            sp.start_connector("a")
            admin(sp, "gov").AddProduct(
                admin_pb2.AddProductRequest(
                    description=json.dumps(
                        {
                            "id": "feed",
                            "title": "Bench feed",
                            "grade": "general",
                            "fields": ["station", "seq", "mm", "pad"],
                            "source": {"kind": "stream", "connection": "feed", "subject": subject},
                            "offers": [offer(masks={"station": "hash"})],
                        }
                    ),
                    format="json",
                ),
                timeout=10,
            )
            agreement = agree(sp, "gov", "a", "feed")
            connectors = _follow(sp, agreement, n)
    loop.run_until_complete(nc.jetstream().delete_stream(stream))
    loop.run_until_complete(nc.close())
    loop.close()
    return {
        "messages": n,
        "size": size,
        "plain_msgs_per_s": round(n / plain),
        "connectors_msgs_per_s": round(n / connectors),
        "ratio": round(plain / connectors, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = bench(args.messages, args.size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['messages']} messages of {result['size']} B: plain client "
            f"{result['plain_msgs_per_s']}/s, connector to connector "
            f"{result['connectors_msgs_per_s']}/s (ratio {result['ratio']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
