"""Fixtures for source tests: the real PostgreSQL and MariaDB servers, one table per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import POSTGRES_URL

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
