"""Fixtures for source tests: the real PostgreSQL and MariaDB servers (one table per test),
NATS JetStream and Mosquitto (the machine's, and servers of a test's own to restart)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

from connector.sources.base import StreamRecord, Subscription
from connector.sources.stream import as_object
from connector.sources.windows import StreamChecker
from tests.conftest import POSTGRES_URL
from tests.support.ports import free_port

T = TypeVar("T")

MARIADB_URL = os.environ.get("TDS_TEST_MARIADB_URL", "mariadb://root@127.0.0.1:3306/test")


@dataclass
class Database:
    """A reachable test database: its URL, dialect and an autocommit admin connection."""

    url: str
    dialect: str
    run: Callable[[str], list[tuple[Any, ...]]]
    """Runs one statement as the admin, returns its rows (if any)."""

    def table(self) -> str:
        """A table name no other test uses."""
        return f"tds_src_{uuid.uuid4().hex[:12]}"


def postgres_database() -> Iterator[Database]:
    """The PostgreSQL server's test database (skips with the reason when it does not answer)."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")

    def run(sql: str) -> list[tuple[Any, ...]]:
        cur = admin.execute(sql)  # type: ignore[call-overload]
        return list(cur.fetchall()) if cur.description else []

    with admin:
        yield Database(POSTGRES_URL, "postgres", run)


def mariadb_database() -> Iterator[Database]:
    """The MariaDB server's test database (skips with the reason when it does not answer)."""
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(MARIADB_URL)
    try:
        admin = pymysql.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            database=url.database,
            autocommit=True,
            connect_timeout=3,
        )
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB not reachable at {url.render_as_string(hide_password=True)}: {exc}")

    def run(sql: str) -> list[tuple[Any, ...]]:
        with admin.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall()) if cur.description else []

    with admin:
        yield Database(MARIADB_URL, "mysql", run)


@pytest.fixture
def mariadb() -> Iterator[Database]:
    """The MariaDB server (skips with the reason when it does not answer)."""
    yield from mariadb_database()


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Each source contract test runs once against each real database server."""
    yield from (postgres_database() if request.param == "postgres" else mariadb_database())


@pytest.fixture
def table(database: Database) -> Iterator[str]:
    """A uniquely named table, dropped after the test."""
    name = database.table()
    try:
        yield name
    finally:
        database.run(f"DROP TABLE IF EXISTS {name}")


# --- brokers: NATS JetStream and Mosquitto ------------------------------------------------

NATS_URL = os.environ.get("TDS_TEST_NATS_URL", "nats://127.0.0.1:4222")
MQTT_URL = os.environ.get("TDS_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def _reachable(url: str) -> str | None:
    """Why ``url``'s host and port do not accept a TCP connection, or ``None``."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError as exc:
        return str(exc)
    return None


class AsyncRunner:
    """An asyncio loop on its own thread, for test helpers that drive async clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class JetStream:
    """A publisher on a NATS server with JetStream; streams it creates are deleted after."""

    def __init__(self, url: str) -> None:
        import nats

        self.url = url
        self._runner = AsyncRunner()

        async def connect() -> Any:
            async def quiet(_exc: Exception) -> None:
                pass

            return await nats.connect(url, connect_timeout=3, error_cb=quiet)

        self._nc = self._runner.run(connect())
        self._js = self._nc.jetstream()
        self._streams: list[str] = []

    def stream(self, *suffixes: str, **limits: Any) -> str:
        """A new stream holding a new subject (returned), and that subject plus each of
        ``suffixes``; ``limits`` as ``add_stream``'s."""
        name = f"TDS_{uuid.uuid4().hex[:12]}"
        subject = f"tds.test.{name.lower()}"
        subjects = [subject, *(subject + s for s in suffixes)]
        self._runner.run(self._js.add_stream(name=name, subjects=subjects, **limits))
        self._streams.append(name)
        return subject

    def publish(self, subject: str, *payloads: bytes) -> list[int]:
        """Publish each payload, waiting for the stream's ack; their stream sequences."""

        async def publish_all() -> list[int]:
            return [(await self._js.publish(subject, p)).seq for p in payloads]

        return self._runner.run(publish_all(), timeout=120)

    def publish_json(self, subject: str, *records: dict[str, Any]) -> list[int]:
        return self.publish(subject, *(json.dumps(r).encode() for r in records))

    def close(self, *, keep_streams: bool = False) -> None:
        """Disconnect, deleting the streams this publisher made unless ``keep_streams``."""

        async def cleanup() -> None:
            for name in [] if keep_streams else self._streams:
                with contextlib.suppress(Exception):
                    await self._js.delete_stream(name)
            await self._nc.close()

        with contextlib.suppress(Exception):
            self._runner.run(cleanup())
        self._runner.close()


def _jetstream(url: str) -> Iterator[JetStream]:
    if why := _reachable(url):
        pytest.skip(f"NATS not reachable at {url}: {why}")
    js = JetStream(url)
    try:
        try:
            js._runner.run(js._js.account_info())
        except Exception as exc:
            pytest.skip(f"NATS at {url} has no JetStream: {exc.__class__.__name__}")
        yield js
    finally:
        js.close()


@pytest.fixture
def jetstream() -> Iterator[JetStream]:
    """The machine's NATS server with JetStream (skips with the reason when it is not up)."""
    yield from _jetstream(NATS_URL)


class OwnServer:
    """A broker process this test starts, stops and starts again on the same port."""

    def __init__(self, argv: list[str], port: int, scheme: str) -> None:
        self._argv = argv
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while _reachable(self.url):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                pytest.skip(f"could not start {self._argv[0]} on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None


def _own_server(argv: list[str], port: int, scheme: str) -> Iterator[OwnServer]:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed: cannot start a broker of the test's own")
    server = OwnServer(argv, port, scheme)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnServer]:
    """A NATS server with JetStream (file storage) of this test's own, to stop and restart."""
    port = free_port()
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]
    yield from _own_server(argv, port, "nats")


@pytest.fixture
def own_nats_with_password(tmp_path: Path) -> Iterator[OwnServer]:
    """A NATS server with JetStream that wants user ``tds``, password ``s3cret``."""
    port = free_port()
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]
    yield from _own_server([*argv, "--user", "tds", "--pass", "s3cret"], port, "nats")


@pytest.fixture
def mqtt_url() -> str:
    """The machine's Mosquitto (skips with the reason when it is not up)."""
    if why := _reachable(MQTT_URL):
        pytest.skip(f"MQTT broker not reachable at {MQTT_URL}: {why}")
    return MQTT_URL


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[OwnServer]:
    """A Mosquitto of this test's own (persistent sessions kept on disk), to restart."""
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp_path}/\n"
    )
    yield from _own_server(["mosquitto", "-c", str(config)], port, "mqtt")


# --- reading subscriptions ----------------------------------------------------------------


def take(sub: Subscription, n: int, timeout: float = 20) -> list[StreamRecord]:
    """The next ``n`` records of ``sub`` (fails the test if they do not come in time)."""
    records: list[StreamRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < n:
        assert time.monotonic() < deadline, f"only {len(records)} of {n} records arrived"
        record = sub.poll(0.25)
        if record is not None:
            records.append(record)
    return records


def check_records(
    checker: StreamChecker, fields: tuple[str, ...], records: list[StreamRecord]
) -> None:
    """Hand ``records`` to the consumer's checker as delivered objects of ``fields``."""
    for r in records:
        checker.accept(r.sequence, r.previous, as_object(fields, r.row))
