"""The meteorological bureau's rain gauges on NATS JetStream, for the flood-warning example.

python3 gauges.py create NATS_URL            -> prints a new subject (its own stream)
python3 gauges.py publish NATS_URL SUBJECT N RATE
    publishes N readings at RATE per second (stations S01..S12, each with its operator)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import nats


async def create(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=3)
    name = f"FLOOD_{uuid.uuid4().hex[:10]}"
    subject = f"flood.{name.lower()}.rain"
    # Readings older than an hour are of no use to anyone: the stream drops them.
    await nc.jetstream().add_stream(name=name, subjects=[subject], max_age=3600)
    await nc.close()
    print(subject)


async def publish(url: str, subject: str, n: int, rate: float) -> None:
    nc = await nats.connect(url, connect_timeout=3)
    js = nc.jetstream()
    start = time.monotonic()
    for i in range(n):
        station = i % 12 + 1
        reading = {
            "station": f"S{station:02d}",
            "operator": f"Station keeper {station}",
            "mm_per_hour": round(20 + (i % 17) * 1.5, 1),
            "time_ms": int(time.time() * 1000),
        }
        await js.publish(subject, json.dumps(reading).encode())
        await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    await nc.close()


if __name__ == "__main__":
    if sys.argv[1] == "create":
        asyncio.run(create(sys.argv[2]))
    else:
        asyncio.run(publish(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
