"""Benchmark the stream sources against plain clients of the same brokers, and their memory.

    python bench/stream_source.py [--messages 20000] [--size 1024] [--stall 30] [--json]

Against the machine's NATS (JetStream) at 127.0.0.1:4222 and Mosquitto at 127.0.0.1:1883;
a broker that is not up is reported as skipped. For each broker, in the same run:

- **throughput**: ``--messages`` JSON records of about ``--size`` bytes are read (NATS:
  published first, then read from sequence 0; MQTT: a plain paho subscriber and the source
  both subscribed while they are published, QoS 1; the broker drops what a subscriber
  cannot take fast enough, so the counts each received are reported too) by a plain
  client of the broker and by the tds source (MQTT: journaled on disk as a provider runs
  it; decode, skip rules, sequence linking, and
  the window hash chain over each delivered record as the provider will compute it).
  Reported: messages/s of each and the ratio source / plain.
- **memory**: a subscription whose reader stops reading for ``--stall`` seconds while the
  same number of messages is published; reported: the process's resident memory before,
  at the end of the stall and its peak (VmHWM), in MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from connector.sources.mqtt import MqttConnection, MqttStreamSource
from connector.sources.nats import NatsConnection, NatsStreamSource
from connector.sources.windows import HashChain, WindowAccumulator, genesis_head

NATS_URL = "nats://127.0.0.1:4222"
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
FIELDS = ("station", "seq", "mm", "pad")


def _payloads(n: int, size: int) -> list[bytes]:
    pad = "x" * max(0, size - 60)
    return [
        json.dumps({"station": f"s{i % 50}", "seq": i, "mm": i / 10, "pad": pad}).encode()
        for i in range(n)
    ]


def _rss_mb(key: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _drain(sub: Any, n: int, chain: WindowAccumulator) -> None:
    got = 0
    while got < n:
        record = sub.poll(5)
        if record is None:
            raise SystemExit(f"the source stalled after {got} of {n} messages")
        chain.add(record.sequence, dict(zip(FIELDS, record.row, strict=True)))
        got += 1


def _windows() -> WindowAccumulator:
    return WindowAccumulator(HashChain(genesis_head("bench")), every_messages=1000, every_seconds=5)


# --- NATS ---------------------------------------------------------------------------------


async def _nats_setup(payloads: list[bytes]) -> tuple[Any, str, str]:
    nc = await nats.connect(NATS_URL, connect_timeout=3)
    js = nc.jetstream()
    name = f"BENCH_{uuid.uuid4().hex[:10]}"
    subject = f"bench.{name.lower()}"
    await js.add_stream(name=name, subjects=[subject])
    pending = [await js.publish_async(subject, p) for p in payloads]  # type: ignore[attr-defined]
    await asyncio.gather(*pending)
    return nc, name, subject


async def _nats_plain(subject: str, stream: str, n: int) -> float:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    started = time.perf_counter()
    sub = await js.pull_subscribe(subject, stream=stream)
    got = 0
    while got < n:
        msgs = await sub.fetch(256, timeout=5)
        for m in msgs:
            json.loads(m.data)
            await m.ack()
        got += len(msgs)
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed


def bench_nats(n: int, size: int, stall: float) -> dict[str, Any]:
    payloads = _payloads(n, size)
    loop = asyncio.new_event_loop()
    try:
        nc, stream, subject = loop.run_until_complete(_nats_setup(payloads))
    except Exception as exc:
        return {"skipped": f"NATS not usable at {NATS_URL}: {exc.__class__.__name__}"}
    try:
        plain = loop.run_until_complete(_nats_plain(subject, stream, n))
        source = NatsStreamSource(NatsConnection(name="bench", url=NATS_URL), subject, FIELDS)
        started = time.perf_counter()
        with source.subscribe(0) as sub:
            _drain(sub, n, _windows())
        tds = time.perf_counter() - started
        # Memory: a reader that stops while as many messages again arrive.
        before = _rss_mb()
        with source.subscribe(n) as sub:
            started = time.perf_counter()
            loop.run_until_complete(_nats_publish(nc, subject, payloads))
            time.sleep(max(0.0, stall - (time.perf_counter() - started)))
            during = _rss_mb()
            sub.poll(0)  # the reader is back: one fetch tells it how far behind it is
            lag = sub.lag
        return {
            "messages": n,
            "plain_msgs_per_s": round(n / plain),
            "source_msgs_per_s": round(n / tds),
            "ratio": round(plain / tds, 2),
            "stalled_reader": {
                "lag": lag,
                "rss_before_mb": round(before, 1),
                "rss_during_mb": round(during, 1),
            },
        }
    finally:
        loop.run_until_complete(_nats_cleanup(nc, stream))
        loop.close()


async def _nats_publish(nc: Any, subject: str, payloads: list[bytes]) -> None:
    js = nc.jetstream()
    pending = [await js.publish_async(subject, p) for p in payloads]
    await asyncio.gather(*pending)


async def _nats_cleanup(nc: Any, stream: str) -> None:
    await nc.jetstream().delete_stream(stream)
    await nc.close()


# --- MQTT ---------------------------------------------------------------------------------


def bench_mqtt(n: int, size: int, stall: float) -> dict[str, Any]:
    payloads = _payloads(n, size)
    topic = f"bench/{uuid.uuid4().hex[:10]}"
    received = 0
    plain_last = 0.0

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        nonlocal received, plain_last
        json.loads(message.payload)
        received += 1
        plain_last = time.perf_counter()

    plain = paho.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex)
    plain.on_message = on_message
    try:
        plain.connect(MQTT_HOST, MQTT_PORT)
    except OSError as exc:
        return {"skipped": f"MQTT broker not reachable: {exc.__class__.__name__}"}
    plain.subscribe(topic, qos=1)
    plain.loop_start()
    connection = MqttConnection(
        name="bench",
        url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        qos=1,
        replay_messages=max(1000, n),
        max_lag_messages=max(1000, n),
    )
    # Journaled as a provider's node runs it (the replay buffer on disk, each message
    # committed before it is acknowledged to the broker).
    journal = tempfile.TemporaryDirectory(prefix="tds-bench-journal-")
    source = MqttStreamSource(connection, topic, FIELDS, journal_dir=Path(journal.name))
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex)
    publisher.connect(MQTT_HOST, MQTT_PORT)
    publisher.loop_start()
    try:
        with source.subscribe(0) as sub:
            time.sleep(0.5)  # both subscriptions acknowledged by the broker
            started = time.perf_counter()
            for p in payloads:
                publisher.publish(topic, p, qos=1)
            chain = _windows()
            got = 0
            source_last = started
            while got < n and (record := sub.poll(3)) is not None:
                chain.add(record.sequence, dict(zip(FIELDS, record.row, strict=True)))
                got += 1
                source_last = time.perf_counter()
            time.sleep(1)
        plain_got, plain_elapsed = received, plain_last - started
        source_elapsed = source_last - started
        before = _rss_mb()
        with source.subscribe(source._buffer.newest) as sub:
            begun = time.perf_counter()
            for p in payloads:
                publisher.publish(topic, p, qos=1)
            time.sleep(max(0.0, stall - (time.perf_counter() - begun)))
            during = _rss_mb()
            lag = sub.lag
        return {
            "messages": n,
            # The broker drops what a subscriber cannot take fast enough (its per-client
            # queue): the counts say how many each one got.
            "plain_received": plain_got,
            "source_received": got,
            "plain_msgs_per_s": round(plain_got / plain_elapsed),
            "source_msgs_per_s": round(got / source_elapsed),
            "ratio": round((got / source_elapsed) / (plain_got / plain_elapsed), 2),
            "stalled_reader": {
                "lag": lag,
                "replay_messages": connection.replay_messages,
                "rss_before_mb": round(before, 1),
                "rss_during_mb": round(during, 1),
            },
        }
    finally:
        source.close()
        journal.cleanup()
        for client in (plain, publisher):
            client.disconnect()
            client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--stall", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {
        "nats": bench_nats(args.messages, args.size, args.stall),
        "mqtt": bench_mqtt(args.messages, args.size, args.stall),
        "peak_rss_mb": round(_rss_mb("VmHWM"), 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for broker in ("nats", "mqtt"):
            r = result[broker]
            if "skipped" in r:
                print(f"{broker}: skipped ({r['skipped']})")
                continue
            s = r["stalled_reader"]
            print(
                f"{broker}: plain {r['plain_msgs_per_s']} msg/s, source "
                f"{r['source_msgs_per_s']} msg/s (ratio {r['ratio']}); stalled reader "
                f"lag {s['lag']}, RSS {s['rss_before_mb']} -> {s['rss_during_mb']} MB"
            )
        print(f"peak RSS {result['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
