"""The meteorological bureau's rain gauges, for the flood early warning scenario.

Twelve stations (``S01`` … ``S12``), each with the name of the person who keeps it, publish
readings as JSON on a NATS JetStream subject of their own. ``tds demo`` drives them from
its own thread while the connectors stream; ``examples/flood-warning`` runs them as a
command::

    python3 -m connector.demo.gauges create NATS_URL              # prints a new subject
    python3 -m connector.demo.gauges publish NATS_URL SUBJECT N RATE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from connector.errors import Unavailable
from connector.sources.stream import redacted_url

__all__ = ["FIELDS", "STATIONS", "Gauges", "reading"]

T = TypeVar("T")

STATIONS = 12
FIELDS = ("station", "operator", "mm_per_hour", "time_ms")
"""What a reading holds; ``operator`` is the name of the station's keeper (personal)."""

CONNECT_SECONDS = 2.0
"""How long to wait for the server before saying it is unreachable."""


def reading(i: int) -> dict[str, Any]:
    """The ``i``-th reading: stations in turn, rain between 20 and 44 mm an hour."""
    station = i % STATIONS + 1
    return {
        "station": f"S{station:02d}",
        "operator": f"Station keeper {station}",
        "mm_per_hour": round(20 + (i % 17) * 1.5, 1),
        "time_ms": int(time.time() * 1000),
    }


def _reachable(url: str) -> None:
    """Raise :class:`Unavailable` saying why (refused, no route, …) when nothing accepts a
    TCP connection at ``url``'s host and port: nats-py's own error says only that no
    server answered."""
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "127.0.0.1", parts.port or 4222)
        socket.create_connection(address, timeout=CONNECT_SECONDS).close()
    except (OSError, ValueError) as exc:
        raise Unavailable(f"NATS not reachable at {redacted_url(url)}: {exc}") from None


class Gauges:
    """A connection to a NATS server with JetStream and a subject the gauges publish on.

    Without ``subject`` a JetStream stream of its own is made for a new subject (so runs
    never share readings) and deleted again by :meth:`close`. Publishing runs on an event
    loop of its own thread: the caller goes on with gRPC calls while readings flow.
    Raises :class:`Unavailable` saying why when the server cannot be used.
    """

    def __init__(self, url: str, subject: str | None = None) -> None:
        self.url = url
        _reachable(url)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="demo-gauges"
        )
        self._thread.start()
        self._stop = threading.Event()
        self._running: Future[int] | None = None
        self.published = 0
        self.failure = ""
        """Why publishing stopped early ("" while it goes well)."""
        self._stream = ""
        try:
            self._nc = self._run(self._connect())
            self._js = self._nc.jetstream()
            if subject is None:
                self._stream = f"FLOOD_{uuid.uuid4().hex[:12].upper()}"
                subject = f"flood.{self._stream.lower()}.rain"
                # Readings older than an hour are of no use to anyone: the stream drops them.
                self._run(self._js.add_stream(name=self._stream, subjects=[subject], max_age=3600))
        except Unavailable:
            self._end_loop()
            raise
        except Exception as exc:  # nats-py's own errors: JetStream off, a limit, …
            self.close()
            raise Unavailable(
                f"NATS at {redacted_url(url)} cannot hold the gauges' stream "
                f"(is JetStream enabled? nats-server -js): {exc.__class__.__name__}: {exc}"
            ) from None
        self.subject = subject

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self) -> NatsClient:
        where = redacted_url(self.url)

        async def quiet(_exc: Exception) -> None:
            pass

        try:
            return await asyncio.wait_for(
                nats.connect(
                    self.url,
                    connect_timeout=CONNECT_SECONDS,
                    allow_reconnect=False,
                    error_cb=quiet,
                ),
                CONNECT_SECONDS + 1,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise Unavailable(
                f"NATS at {where} did not accept a connection: {exc.__class__.__name__}"
            ) from None

    async def _publish(self, n: int | None, rate: float) -> int:
        """Publish ``n`` readings (until stopped if ``None``) at ``rate`` a second, each
        acknowledged by the stream; how many were published."""
        start = time.monotonic()
        i = 0
        while (n is None or i < n) and not self._stop.is_set():
            try:
                await self._js.publish(self.subject, json.dumps(reading(self.published)).encode())
            except Exception as exc:  # the server went away: say so, publish no more
                self.failure = f"publishing on NATS failed: {exc.__class__.__name__}: {exc}"
                return i
            self.published += 1
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        return i

    def publish(self, n: int, rate: float) -> int:
        """Publish ``n`` readings at ``rate`` a second, waiting until they are all held."""
        return self._run(self._publish(n, rate), timeout=n / rate + 60)

    def start(self, rate: float) -> None:
        """Publish readings at ``rate`` a second in the background until :meth:`stop`."""
        self._stop.clear()
        self._running = asyncio.run_coroutine_threadsafe(self._publish(None, rate), self._loop)

    def stop(self) -> int:
        """Stop publishing in the background; how many readings were published in all
        (if publishing failed, :attr:`failure` says why)."""
        self._stop.set()
        if self._running is not None:
            running, self._running = self._running, None
            running.result(10)
        return self.published

    def close(self) -> None:
        """Stop, delete the stream this made (if any) and disconnect."""
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._running is not None:
                self._running.result(10)

        async def cleanup() -> None:
            if self._stream:
                with contextlib.suppress(Exception):
                    await self._js.delete_stream(self._stream)
            with contextlib.suppress(Exception):
                await self._nc.close()

        if hasattr(self, "_nc"):
            with contextlib.suppress(Exception):
                self._run(cleanup(), timeout=10)
        self._end_loop()

    def keep(self) -> None:
        """Leave the stream on the server when closing (the example's command made it)."""
        self._stream = ""

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Gauges:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str]) -> int:
    """``create URL`` or ``publish URL SUBJECT N RATE`` (for examples/flood-warning)."""
    try:
        if len(argv) == 2 and argv[0] == "create":
            with Gauges(argv[1]) as gauges:
                gauges.keep()
                print(gauges.subject)
            return 0
        if len(argv) == 5 and argv[0] == "publish":
            with Gauges(argv[1], argv[2]) as gauges:
                gauges.publish(int(argv[3]), float(argv[4]))
            if gauges.failure:
                print(gauges.failure, file=sys.stderr)
                return 1
            return 0
    except Unavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
