"""Shared compute rules for the compute tests: hospital admissions, as in the city scenario."""

from __future__ import annotations

import copy
from typing import Any

import pytest

HOSPITAL: dict[str, Any] = {
    "k": 5,
    "max_groups": 100,
    "dimensions": {
        "district": {"type": "text"},
        "age_band": {"type": "text", "values": ["0-17", "18-64", "65+"]},
        "year": {"type": "integer"},
    },
    "measures": {
        "cost": {
            "aggregates": ["count", "sum", "avg", "min", "max", "quantile"],
            "lower": 0,
            "upper": 10000,
            "quantiles": [0.5, 0.9],
        },
        "days": {"aggregates": ["sum", "avg"], "lower": 0, "upper": 60},
    },
}

PRIVACY: dict[str, Any] = {"epsilon_per_query": 1.0, "epsilon_budget": 3.0, "delta": 1e-6}


def hospital(**changes: Any) -> dict[str, Any]:
    """A deep copy of the hospital rules with top-level fields replaced."""
    spec = copy.deepcopy(HOSPITAL)
    spec.update(changes)
    return spec


def hospital_dp() -> dict[str, Any]:
    """The hospital rules with differential privacy (count, sum, avg only)."""
    spec = hospital(privacy=dict(PRIVACY))
    spec["measures"]["cost"] = {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 10000}
    return spec


@pytest.fixture
def rules_spec() -> dict[str, Any]:
    """The hospital rules without differential privacy."""
    return hospital()


# -- data: hospital admissions ------------------------------------------------------------

COLUMNS = ("patient_id", "district", "age_band", "year", "cost", "days")


def admissions() -> list[tuple[Any, ...]]:
    """Deterministic admission rows: four large districts, and 'harbour' with 3 patients
    (a group below k = 5). Patient 'p-lone' is the only 65+ in 'east' for 2026."""
    rows: list[tuple[Any, ...]] = []
    bands = ("0-17", "18-64")
    i = 0
    for district in ("north", "south", "east", "west"):
        for year in (2025, 2026):
            for band in bands:
                for j in range(12):
                    i += 1
                    cost = 100.0 * (1 + (i * 37) % 50) + (j % 3)
                    rows.append((f"p-{i}", district, band, year, cost, (i * 7) % 20))
    for district in ("north", "south", "west"):
        for j in range(6):
            i += 1
            rows.append((f"p-{i}", district, "65+", 2026, 3000.0 + j, 5))
    rows.append(("p-lone", "east", "65+", 2026, 9876.0, 30))
    for j in range(3):
        i += 1
        rows.append((f"p-{i}", "harbour", "18-64", 2026, 500.0 + j, 2))
    rows.append(("p-null", "north", "18-64", 2026, None, None))
    return rows


def write_csv(path: Any) -> Any:
    """The admissions as a CSV file with a header; returns the path."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in admissions():
            w.writerow(["" if v is None else v for v in r])
    return path


_DDL = (
    "CREATE TABLE {t} (patient_id VARCHAR(32), district VARCHAR(32), age_band VARCHAR(8),"
    " year INTEGER, cost NUMERIC(12, 2), days INTEGER)"
)


def _fill(conn: Any, table: str, style: str) -> None:
    cur = conn.cursor()
    cur.execute(_DDL.format(t=table))
    holders = ", ".join(["%s"] * len(COLUMNS))
    cur.executemany(f"INSERT INTO {table} VALUES ({holders})", admissions())  # noqa: S608
    conn.commit()


@pytest.fixture
def pg_admissions(postgres_url: str) -> Any:
    """A SQLAlchemy engine on a fresh PostgreSQL database holding table ``admissions``."""
    import psycopg
    from sqlalchemy import create_engine

    with psycopg.connect(postgres_url) as conn:
        _fill(conn, "admissions", "pg")
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    yield engine
    engine.dispose()


MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


@pytest.fixture
def mariadb_admissions() -> Any:
    """A SQLAlchemy engine on MariaDB's ``test`` database with a fresh admissions table
    (its name is yielded too); skipped when the server is unreachable."""
    import uuid

    import pymysql
    from sqlalchemy import create_engine

    try:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=3306,
            user="root",
            password="",
            database="test",
            connect_timeout=3,
        )
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"MariaDB not reachable at 127.0.0.1:3306: {exc}")
    table = f"adm_{uuid.uuid4().hex[:10]}"
    try:
        _fill(conn, table, "mysql")
        engine = create_engine(MARIADB_URL)
        yield engine, table
        engine.dispose()
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        conn.commit()
        conn.close()
