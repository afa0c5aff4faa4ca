"""The single-pass differencing check refuses exactly what the per-filter check refused.

``reference_isolating_cells`` is the former check, kept here as the oracle: one counting
query per filter, over the rows matching the other filters, counting the cells that could
be isolated. The engine's ``isolating_groups`` checks every filter in one statement from
one scan and counts the groups holding such a cell (a group holds one exactly when its
smallest cell is one). On random tables and random queries (filters on the same dimension
twice, NULL keys, IN / NOT IN, ordering on integers; on MariaDB also values equal under
its case- and pad-insensitive collation) both must refuse the same filters, on DuckDB,
PostgreSQL and MariaDB, and never count more groups than there are cells.
"""

from __future__ import annotations

import csv
import random
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlglot import exp

from connector.compute import engine
from connector.compute.database import DatabaseSource
from connector.compute.embedded import DuckDBTable
from connector.compute.engine import _N, Executor, _bind, _condition, isolating_groups
from connector.compute.query import Filter
from tests.compute.conftest import MARIADB_URL

COLUMNS = ("a", "b", "c", "m")
TEXT = ("x", "y", "z", "w", None)
TEXT_MARIADB = (*TEXT, "X", "y ")  # equal to x and y under MariaDB's default collation
INTS = (1, 2, 3, 4, 5, None)


def reference_isolating_cells(
    dimensions: Sequence[str],
    dimension: str,
    filters: Sequence[Filter],
    executor: Executor,
    *,
    k: int,
) -> int:
    """The per-filter check as it was: cells of ``dimension`` among the rows matching
    ``filters`` (the other filters), grouped by ``dimensions``, of 1 to k - 1 rows in a
    group with at least k rows besides them."""
    params, names = _bind(filters)
    split = list(dict.fromkeys((*dimensions, dimension)))
    cells = exp.select(
        *(exp.column(d) for d in split), exp.alias_(exp.Count(this=exp.Star()), _N)
    ).from_(executor.source())
    for f, mine in zip(filters, names, strict=True):
        cells = cells.where(_condition(f, mine, executor), copy=False)
    cells = cells.group_by(*(exp.column(d) for d in split), copy=False)
    total = exp.Window(
        this=exp.Sum(this=exp.column(_N)), partition_by=[exp.column(d) for d in dimensions]
    )
    sized = exp.select(exp.column(_N), exp.alias_(total, "tds_total")).from_(
        cells.subquery("tds_cells")
    )
    n, rest = exp.column(_N), exp.Sub(this=exp.column("tds_total"), expression=exp.column(_N))
    select = (
        exp.select(exp.Count(this=exp.Star()))
        .from_(sized.subquery("tds_sized"))
        .where(exp.LT(this=n, expression=exp.Literal.number(k)))
        .where(exp.GTE(this=rest, expression=exp.Literal.number(k)))
    )
    return int(executor.execute(executor.text(select, params), params)[0][0])


def _rows(rng: random.Random, text: Sequence[str | None]) -> list[tuple[Any, ...]]:
    # Skewed choices, so that small cells next to large ones are common.
    weights = [rng.randint(1, 30) for _ in text]
    iw = [rng.randint(1, 30) for _ in INTS]
    return [
        (
            rng.choices(text, weights)[0],
            rng.choices(INTS, iw)[0],
            rng.choices(text, weights[::-1])[0],
            rng.randint(0, 100),
        )
        for _ in range(rng.randint(5, 150))
    ]


def _filter(rng: random.Random, text: Sequence[str | None]) -> Filter:
    dim = rng.choice(("a", "b", "c"))
    pool = [v for v in (INTS if dim == "b" else text) if v is not None]
    ops = ["=", "!=", "in", "not in"] + (["<", "<=", ">", ">="] if dim == "b" else [])
    op = rng.choice(ops)
    if op in ("in", "not in"):
        values = tuple(sorted(set(rng.sample(pool, rng.randint(1, 3))), key=str))
    else:
        values = (rng.choice(pool),)
    return Filter(dim, op, values)


def _compare(executor: Executor, rng: random.Random, text: Sequence[str | None]) -> int:
    """Random questions on ``executor``; returns how many filters were refused."""
    refused = 0
    for _ in range(12):
        dims = rng.sample(("a", "b", "c"), rng.randint(0, 2))
        filters = [_filter(rng, text) for _ in range(rng.randint(1, 3))]
        k = rng.randint(2, 6)
        got = isolating_groups(dims, filters, executor, k=k)
        want = tuple(
            reference_isolating_cells(
                dims, f.dimension, filters[:i] + filters[i + 1 :], executor, k=k
            )
            for i, f in enumerate(filters)
        )
        assert [c > 0 for c in got] == [c > 0 for c in want], (dims, filters, k, got, want)
        assert all(g <= w for g, w in zip(got, want, strict=True))
        refused += sum(1 for c in got if c)
    return refused


def _csv(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(["" if v is None else v for v in r] for r in rows)
    return path


def test_single_pass_matches_per_filter_check_on_duckdb(tmp_path: Path) -> None:
    rng = random.Random(19)
    refused = 0
    for i in range(25):
        t = DuckDBTable(_csv(tmp_path / f"t{i}.csv", _rows(rng, TEXT)), "csv")
        try:
            refused += _compare(t, rng, TEXT)
        finally:
            t.close()
    assert refused > 20  # the cases exercise refusals, not only passes


def test_cells_summed_here_count_exactly_what_the_statement_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a table whose cells are counted once, the check sums the cells the engine
    marked (``CELLS_SUMMED_HERE``); it must count, filter by filter, exactly the groups
    the whole statement counts (forced by a limit of 0), and fall back to the statement
    when the cells are more than the limit (a limit of 3), with the same counts."""
    rng = random.Random(23)
    compared = refused = 0
    for i in range(20):
        t = DuckDBTable(_csv(tmp_path / f"t{i}.csv", _rows(rng, TEXT)), "csv")
        try:
            for _ in range(12):
                dims = rng.sample(("a", "b", "c"), rng.randint(0, 2))
                filters = [_filter(rng, TEXT) for _ in range(rng.randint(1, 3))]
                k = rng.randint(2, 6)
                counts = []
                for limit in (engine.CELLS_SUMMED_HERE, 0, 3):
                    monkeypatch.setattr(engine, "CELLS_SUMMED_HERE", limit)
                    counts.append(isolating_groups(dims, filters, t, k=k))
                monkeypatch.undo()
                assert counts[0] == counts[1] == counts[2], (dims, filters, k, counts)
                compared += 1
                refused += sum(1 for c in counts[0] if c)
        finally:
            t.close()
    assert compared == 240 and refused > 20


def _database_tables(
    conn: Any, rng: random.Random, text: Sequence[str | None], ddl_text: str
) -> Iterator[str]:
    for _ in range(6):
        table = f"iso_{uuid.uuid4().hex[:10]}"
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} (a {ddl_text}, b INTEGER, c {ddl_text}, m INTEGER)")
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s)", _rows(rng, text))  # noqa: S608
        conn.commit()
        try:
            yield table
        finally:
            cur = conn.cursor()
            cur.execute(f"DROP TABLE {table}")
            conn.commit()


@pytest.mark.postgres
def test_single_pass_matches_per_filter_check_on_postgres(postgres_url: str) -> None:
    import psycopg
    from sqlalchemy import create_engine

    rng = random.Random(20)
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    refused = 0
    try:
        with psycopg.connect(postgres_url) as conn:
            for table in _database_tables(conn, rng, TEXT, "VARCHAR(8)"):
                refused += _compare(DatabaseSource(engine, f"SELECT * FROM {table}"), rng, TEXT)  # noqa: S608
    finally:
        engine.dispose()
    assert refused > 5


@pytest.mark.mariadb
def test_single_pass_matches_per_filter_check_on_mariadb() -> None:
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
    rng = random.Random(21)
    engine = create_engine(MARIADB_URL)
    refused = 0
    try:
        for table in _database_tables(conn, rng, TEXT_MARIADB, "VARCHAR(8)"):
            src = DatabaseSource(engine, f"SELECT * FROM {table}")  # noqa: S608
            refused += _compare(src, rng, TEXT_MARIADB)
    finally:
        engine.dispose()
        conn.close()
    assert refused > 5
