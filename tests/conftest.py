"""Shared fixtures: a running local space, PostgreSQL databases, PKI material."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.demo.space import LocalSpace
from connector.identity.names import Role

POSTGRES_URL = os.environ.get("TDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_admin() -> object:
    import psycopg

    from connector.store.database import parsed_safe

    try:
        return psycopg.connect(
            POSTGRES_URL.replace("postgresql+psycopg", "postgresql"),
            autocommit=True,
            connect_timeout=3,
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {parsed_safe(POSTGRES_URL)}: {exc}")


def _fresh_postgres() -> Iterator[str]:
    import psycopg

    admin = _postgres_admin()
    assert isinstance(admin, psycopg.Connection)
    name = f"tds_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = POSTGRES_URL.rsplit("/", 1)[0]
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    yield from _fresh_postgres()


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test module, dropped afterwards."""
    yield from _fresh_postgres()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store contract test runs once per supported database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tds.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    """A registry and connectors a, b (enterprises) and c (government, for revocation)."""
    root = tmp_path_factory.mktemp("space")
    participants = [
        ("a", Role.ENTERPRISE),
        ("b", Role.ENTERPRISE),
        ("c", Role.GOVERNMENT),
        ("aud", Role.AUDITOR),
    ]
    with LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        for pid in ("a", "b", "c"):
            sp.start_connector(pid)
        sp.enrol("aud", "")
        yield sp
