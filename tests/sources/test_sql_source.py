"""SQL sources against the real PostgreSQL and MariaDB servers of this machine.

Each test runs once per server (markers ``postgres`` and ``mariadb``; skipped with the
reason when a server does not answer) on a table of its own, dropped afterwards.
"""

# The SQL below names tables each test creates under generated names (S608 is for input).
# ruff: noqa: S608

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from pathlib import Path

import pytest

from connector.errors import InvalidRequest, PreconditionFailed, Unavailable
from connector.sources.delivered import materialise
from connector.sources.sql import SqlConnection, SqlPool, SqlSource, SqlSources
from connector.sources.sql_query import Query
from connector.transfer.masking import Masker
from tests.sources.conftest import Database

KEY = bytes(range(32))


def _sources(database: Database, **settings: object) -> SqlSources:
    return SqlSources({"main": SqlConnection("main", database.url, **settings)})  # type: ignore[arg-type]


def _people(database: Database, table: str) -> None:
    database.run(
        f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(40), city VARCHAR(40), "
        "cost DECIMAL(10, 2), urgent BOOLEAN)"
    )
    database.run(
        f"INSERT INTO {table} VALUES (1, 'Li Wei', 'Haidian', 123.45, TRUE), "
        "(2, 'Zhang \"Min\", Jr', 'Chaoyang', 8.00, FALSE), (3, NULL, 'Haidian', NULL, NULL)"
    )


def test_valid_query_delivers_masked_rows(database: Database, table: str, tmp_path: Path) -> None:
    _people(database, table)
    fields = ["id", "name", "city", "cost", "urgent"]
    sources = _sources(database)
    try:
        source = sources.source(
            "main", f"SELECT id, name, city, cost, urgent FROM {table} ORDER BY id", fields
        )
        masks = {"name": {"method": "hash"}, "cost": {"method": "generalise", "step": 100}}
        out = tmp_path / "t.csv"
        made = materialise(
            source, out, fmt="csv", permitted=["id", "name", "cost", "urgent"], masks=masks, key=KEY
        )
        pseudonym = Masker({"name": {"method": "hash"}}, KEY).apply
        first_name, second_name = pseudonym("name", "Li Wei"), pseudonym("name", 'Zhang "Min", Jr')
        # MariaDB's BOOLEAN is TINYINT(1): it reports 1 and 0.
        yes, no = ("true", "false") if database.dialect == "postgres" else ("1", "0")
        assert out.read_text() == (
            f"id,name,cost,urgent\n1,{first_name},100,{yes}\n2,{second_name},0,{no}\n3,,,\n"
        )
        assert made.delivered.fields == ("id", "name", "cost", "urgent")
        assert made.delivered.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
        assert made.rows == 3
        # The rows hash covers what was read (all columns, unmasked), as one JSON array.
        rows = [
            [1, "Li Wei", "Haidian", "123.45", True],
            [2, 'Zhang "Min", Jr', "Chaoyang", "8.00", False],
            [3, None, "Haidian", None, None],
        ]
        if database.dialect == "mysql":  # MariaDB's BOOLEAN is TINYINT(1): 1 and 0
            for row in rows:
                row[4] = None if row[4] is None else int(row[4])
        rows_hash = hashlib.sha256(
            json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()
        ).hexdigest()
        assert made.state == f"sql:sha256:{source.query.sha256}:{rows_hash}"

        # The delivered form is the same bytes every time the same data is read.
        again = materialise(
            source,
            tmp_path / "again.csv",
            fmt="csv",
            permitted=["id", "name", "cost", "urgent"],
            masks=masks,
            key=KEY,
        )
        assert again.delivered.sha256 == made.delivered.sha256
        assert again.state == made.state

        jsonl = tmp_path / "t.jsonl"
        materialise(source, jsonl, fmt="jsonl", permitted=None, masks={}, key=KEY)
        first = json.loads(jsonl.read_text().splitlines()[0])
        assert first == dict(zip(fields, rows[0], strict=True))
        assert list(csv.reader(io.StringIO(out.read_text())))[2][0] == "2"
    finally:
        sources.close()


def test_changed_source_data_changes_the_state(
    database: Database, table: str, tmp_path: Path
) -> None:
    _people(database, table)
    sources = _sources(database)
    try:
        source = sources.source("main", f"SELECT id, city FROM {table} ORDER BY id", ["id", "city"])
        before = materialise(source, tmp_path / "a", fmt="csv", permitted=None, masks={}, key=KEY)
        database.run(f"UPDATE {table} SET city = 'Xicheng' WHERE id = 3")
        after = materialise(source, tmp_path / "b", fmt="csv", permitted=None, masks={}, key=KEY)
        assert before.state.split(":")[2] == after.state.split(":")[2]  # same query
        assert before.state != after.state
    finally:
        sources.close()


def test_statement_timeout_cancels_slow_query(
    database: Database, table: str, tmp_path: Path
) -> None:
    database.run(f"CREATE TABLE {table} (n INT)")
    database.run(f"INSERT INTO {table} VALUES " + ",".join(f"({i})" for i in range(2000)))
    sources = _sources(database, statement_timeout_seconds=0.5)
    # A query the checks allow (count over a cross join: 8e9 rows) that runs far too long.
    text = f"SELECT count(*) AS n FROM {table} a CROSS JOIN {table} b CROSS JOIN {table} c"
    out = tmp_path / "slow.csv"
    try:
        source = sources.source("main", text, ["n"])
        with pytest.raises(Unavailable, match=r"longer than its statement timeout \(0.5 s\)"):
            materialise(source, out, fmt="csv", permitted=None, masks={}, key=KEY)
        assert list(tmp_path.iterdir()) == []
        # The connection that was cancelled is not reused broken: the next query works.
        quick = sources.source("main", f"SELECT count(*) AS n FROM {table}", ["n"])
        materialise(quick, out, fmt="csv", permitted=None, masks={}, key=KEY)
        assert out.read_text() == "n\n2000\n"
    finally:
        sources.close()


def _writer_function(database: Database, table: str) -> str:
    """A function that writes, so a write hides inside a SELECT the checks would refuse."""
    name = f"{table}_w"
    if database.dialect == "postgres":
        database.run(
            f"CREATE FUNCTION {name}() RETURNS INT LANGUAGE sql AS "
            f"$$ INSERT INTO {table} VALUES (99) RETURNING 1 $$"
        )
    else:
        database.run(
            f"CREATE FUNCTION {name}() RETURNS INT MODIFIES SQL DATA "
            f"BEGIN INSERT INTO {table} VALUES (99); RETURN 1; END"
        )
    return name


def test_write_refused_by_read_only_transaction(database: Database, table: str) -> None:
    """Even with the checks bypassed (the executor called directly), nothing is written."""
    database.run(f"CREATE TABLE {table} (n INT)")
    database.run(f"INSERT INTO {table} VALUES (1)")
    function = _writer_function(database, table)
    pool = SqlPool(SqlConnection("main", database.url))
    try:
        with (
            pytest.raises(PreconditionFailed, match="refused the query"),
            pool.execute(f"UPDATE {table} SET n = 2") as (_, batches, _scalar),
        ):
            list(batches)
        with (
            pytest.raises(PreconditionFailed, match=r"it tries to write.*read-only transaction"),
            pool.execute(f"SELECT {function}() AS x") as (_, batches, _scalar),
        ):
            list(batches)
        assert database.run(f"SELECT n FROM {table}") == [(1,)]
        # The pool still serves reads afterwards.
        with pool.execute(f"SELECT n FROM {table}") as (columns, batches, _scalar):
            assert columns == ("n",)
            assert [tuple(r) for b in batches for r in b] == [(1,)]
    finally:
        pool.close()
        database.run(f"DROP FUNCTION IF EXISTS {function}")


def test_database_down_is_unavailable_and_writes_nothing(
    database: Database, tmp_path: Path
) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(database.url).set(port=1, password="hunter2")
    connection = SqlConnection("orders", url.render_as_string(hide_password=False))
    sources = SqlSources({"orders": connection})
    try:
        source = sources.source("orders", "SELECT a FROM t", ["a"])
        with pytest.raises(Unavailable) as raised:
            materialise(source, tmp_path / "x.csv", fmt="csv", permitted=None, masks={}, key=KEY)
        message = str(raised.value)
        assert "source connection 'orders' is unreachable" in message
        assert "hunter2" not in message
        assert list(tmp_path.iterdir()) == []
    finally:
        sources.close()


def test_mariadb_executable_comment_is_not_run(
    database: Database, table: str, tmp_path: Path
) -> None:
    """A MariaDB executable comment is not run: the checked text is, so the columns hold."""
    _people(database, table)
    sources = _sources(database)
    text = f"SELECT id /*!10000 , name */ FROM {table}"
    try:
        source = sources.source("main", text, ["id"])
        made = materialise(source, tmp_path / "x.csv", fmt="csv", permitted=None, masks={}, key=KEY)
        assert made.delivered.fields == ("id",)
        assert (tmp_path / "x.csv").read_text().splitlines()[0] == "id"
    finally:
        sources.close()


def test_pool_is_bounded(database: Database, table: str) -> None:
    _people(database, table)
    sources = _sources(database, pool_size=1, pool_timeout_seconds=0.2)
    try:
        source = sources.source("main", f"SELECT id FROM {table}", ["id"])
        with source.open_snapshot() as held:
            with (
                pytest.raises(Unavailable, match="all 1 connections of source connection 'main'"),
                source.open_snapshot(),
            ):
                pass
            assert len(list(held)) == 3
        with source.open_snapshot() as snapshot:  # released: usable again
            assert len(list(snapshot)) == 3
    finally:
        sources.close()


def test_snapshot_state_only_after_reading(database: Database, table: str) -> None:
    _people(database, table)
    sources = _sources(database)
    try:
        source = sources.source("main", f"SELECT id FROM {table}", ["id"])
        with source.open_snapshot() as snapshot:
            with pytest.raises(RuntimeError):
                snapshot.state()
            list(snapshot)
            assert snapshot.state().startswith("sql:sha256:")
    finally:
        sources.close()


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_streaming_200k_rows(database: Database, table: str) -> None:
    """200,000 rows of ~300 bytes (~60 MB as Python objects) read with RSS growth < 20 MB."""
    database.run(f"CREATE TABLE {table} (id INT, pad VARCHAR(300))")
    if database.dialect == "postgres":
        database.run(
            f"INSERT INTO {table} SELECT i, repeat('x', 300) FROM generate_series(1, 200000) i"
        )
    else:
        database.run(f"INSERT INTO {table} SELECT seq, repeat('x', 300) FROM seq_1_to_200000")
    sources = _sources(database)
    try:
        source = sources.source("main", f"SELECT id, pad FROM {table}", ["id", "pad"])
        base = _rss_bytes()
        peak = base
        count = 0
        with source.open_snapshot() as snapshot:
            for _ in snapshot:
                count += 1
                if count % 5000 == 0:
                    peak = max(peak, _rss_bytes())
        assert count == 200_000
        assert peak - base < 20 * 1024 * 1024, f"RSS grew by {(peak - base) >> 20} MB"
    finally:
        sources.close()


def test_concurrent_snapshots_share_the_pool(database: Database, table: str) -> None:
    _people(database, table)
    sources = _sources(database, pool_size=2)
    errors: list[BaseException] = []
    try:
        source = sources.source("main", f"SELECT id FROM {table} ORDER BY id", ["id"])

        def read() -> None:
            try:
                for _ in range(5):
                    with source.open_snapshot() as snapshot:
                        assert [r[0] for r in snapshot] == [1, 2, 3]
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
    finally:
        sources.close()


def test_unconfigured_connection_refused(database: Database) -> None:
    with pytest.raises(InvalidRequest, match="'other' is not configured"):
        _sources(database).source("other", "SELECT a FROM t", ["a"])


def test_columns_the_database_reports_are_checked_again(database: Database, table: str) -> None:
    """A product whose query no longer outputs its fields is refused, not delivered."""
    _people(database, table)
    pool = SqlPool(SqlConnection("main", database.url))
    try:
        stale = Query(f"SELECT id, city FROM {table}", ("id", "name"), database.dialect)
        with (
            pytest.raises(PreconditionFailed, match=r"now outputs \['id', 'city'\]"),
            SqlSource(pool, stale).open_snapshot(),
        ):
            pass
    finally:
        pool.close()


def test_snapshot_abandoned_mid_read_releases_its_connection(
    database: Database, table: str
) -> None:
    """A delivery that fails part way (disk full, say) leaves a usable pool behind."""
    database.run(f"CREATE TABLE {table} (n INT)")
    database.run(f"INSERT INTO {table} VALUES " + ",".join(f"({i})" for i in range(5000)))
    sources = _sources(database, pool_size=1, fetch_rows=100)
    try:
        source = sources.source("main", f"SELECT n FROM {table}", ["n"])
        with pytest.raises(OSError, match="disk full"), source.open_snapshot() as snapshot:
            for i, _ in enumerate(snapshot):
                if i == 150:
                    raise OSError("disk full")
        with source.open_snapshot() as snapshot:
            assert sum(1 for _ in snapshot) == 5000
    finally:
        sources.close()


def test_timeout_in_a_later_batch_is_raised_and_the_pool_recovers(database: Database) -> None:
    """The statement timeout cancelling a batch read ahead of the one being delivered (on
    PostgreSQL, batches after the first are fetched on a thread while the one before is
    encoded) reaches the reader as the timeout, after the batches before it."""
    sleep = "pg_sleep(1)" if database.dialect == "postgres" else "SLEEP(1)"
    series = (
        "generate_series(1, 300) AS s(n)"
        if database.dialect == "postgres"
        else "(SELECT seq AS n FROM seq_1_to_300) AS s"
    )
    # Called directly: pg_sleep and SLEEP are not allowed in a product's query.
    text = f"SELECT n, CASE WHEN n = 250 THEN {sleep} END AS z FROM {series} ORDER BY n"
    pool = SqlPool(
        SqlConnection("main", database.url, statement_timeout_seconds=0.5, fetch_rows=100)
    )
    seen: list[int] = []
    try:
        with (
            pytest.raises(Unavailable, match=r"longer than its statement timeout \(0.5 s\)"),
            pool.execute(text) as (_, batches, _scalar),
        ):
            for batch in batches:
                seen.extend(int(row[0]) for row in batch)
        assert seen[:200] == list(range(1, 201))
        assert len(seen) < 300
        with pool.execute("SELECT 1 AS one") as (_columns, batches, _scalar):
            assert [tuple(r) for b in batches for r in b] == [(1,)]
    finally:
        pool.close()


def test_values_of_other_types_are_delivered_as_json_values(
    database: Database, table: str, tmp_path: Path
) -> None:
    """Timestamps, floats (also not finite), bytes and text beside them: ISO 8601, the
    number or its name, hex; in batches where they share a row with types the driver
    already hands over as JSON values."""
    pg = database.dialect == "postgres"
    database.run(
        f"CREATE TABLE {table} (id INT, at TIMESTAMP NULL, x DOUBLE PRECISION, "
        f"b {'BYTEA' if pg else 'BLOB'}, t TEXT)"
    )
    blob = "'\\xc0ff'::bytea" if pg else "X'C0FF'"
    nan = "'NaN'::float8" if pg else "NULL"
    database.run(
        f"INSERT INTO {table} VALUES (1, '2026-03-01 10:20:30', 0.5, {blob}, 'a'), "
        f"(2, NULL, {nan}, NULL, NULL)"
    )
    sources = _sources(database)
    try:
        source = sources.source(
            "main", f"SELECT id, at, x, b, t FROM {table} ORDER BY id", ["id", "at", "x", "b", "t"]
        )
        out = tmp_path / "t.jsonl"
        materialise(source, out, fmt="jsonl", permitted=None, masks={}, key=KEY)
        assert [json.loads(line) for line in out.read_text().splitlines()] == [
            {"id": 1, "at": "2026-03-01T10:20:30", "x": 0.5, "b": "c0ff", "t": "a"},
            {"id": 2, "at": None, "x": "nan" if pg else None, "b": None, "t": None},
        ]
    finally:
        sources.close()
