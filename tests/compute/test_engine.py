"""The engine: its own SQL from the canonical query, clamped, on a locked-down DuckDB or on
the source database in a read-only transaction with a timeout."""

from __future__ import annotations

import statistics as st
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from connector.compute.database import DatabaseSource
from connector.compute.embedded import DuckDBTable, EmbeddedLimits
from connector.compute.engine import Executor, Group, compute_groups, isolating_groups
from connector.compute.query import Filter, parse_query
from connector.compute.rules import parse_rules
from connector.errors import InvalidRequest, Unavailable
from tests.compute.conftest import admissions, hospital, write_csv

RULES = parse_rules(
    hospital(
        measures={
            "cost": {
                "aggregates": ["count", "sum", "avg", "min", "max", "quantile"],
                "lower": 200,
                "upper": 5000,
                "quantiles": [0.5],
            }
        }
    )
)
ASK = (
    "SELECT district, age_band, count(*), count(cost), sum(cost), avg(cost), min(cost),"
    " max(cost) FROM product WHERE year = 2026 GROUP BY district, age_band"
)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[DuckDBTable]:
    t = DuckDBTable(write_csv(tmp_path / "admissions.csv"), "csv")
    yield t
    t.close()


def _expected() -> dict[tuple[str, str], dict[str, Any]]:
    """The same figures computed in Python from the rows, with clamping to [200, 5000]."""
    out: dict[tuple[str, str], list[Any]] = {}
    for _pid, district, band, year, cost, _days in admissions():
        if year == 2026:
            out.setdefault((district, band), []).append(cost)
    result = {}
    for key, costs in out.items():
        vals = [min(max(c, 200.0), 5000.0) for c in costs if c is not None]
        result[key] = {
            "n": len(costs),
            "count(cost)": float(len(vals)),
            "sum(cost)": sum(vals),
            "min(cost)": min(vals),
            "max(cost)": max(vals),
        }
    return result


def _check(groups: list[Group]) -> None:
    expected = _expected()
    assert {g.key for g in groups} == set(expected)
    for g in groups:
        e = expected[g.key]  # type: ignore[index]
        assert g.n == e["n"]
        for k in ("count(cost)", "sum(cost)", "min(cost)", "max(cost)"):
            assert g.values[k] == pytest.approx(e[k]), (g.key, k)
    # clamped: p-lone's 9876 counts as 5000
    lone = next(g for g in groups if g.key == ("east", "65+"))
    assert lone.n == 1 and lone.values["max(cost)"] == 5000.0


def test_duckdb_computes_clamped_groups(table: DuckDBTable) -> None:
    groups = compute_groups(parse_query(ASK, RULES), RULES, table)
    _check(groups)
    assert groups == sorted(groups, key=lambda g: g.key)


def test_a_measure_without_nulls_is_clamped_alike(tmp_path: Path, table: DuckDBTable) -> None:
    """A column known to hold no NULL is clamped without a NULL test per row; a table
    whose column holds NULLs, asked the same question next, still keeps them NULL."""
    import csv

    path = tmp_path / "complete.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("patient_id", "district", "age_band", "year", "cost", "days"))
        w.writerows(r for r in admissions() if r[4] is not None and r[5] is not None)
    complete = DuckDBTable(path, "csv")
    try:
        assert complete.never_null("cost") and not table.never_null("cost")
        expected = _expected()
        expected[("north", "18-64")]["n"] -= 1  # p-null, whose cost is NULL, is not there
        groups = compute_groups(parse_query(ASK, RULES), RULES, complete)
        assert {g.key for g in groups} == set(expected)
        for g in groups:
            e = expected[g.key]  # type: ignore[index]
            assert g.n == e["n"]
            for k in ("count(cost)", "sum(cost)", "min(cost)", "max(cost)"):
                assert g.values[k] == pytest.approx(e[k]), (g.key, k)
        _check(compute_groups(parse_query(ASK, RULES), RULES, table))
    finally:
        complete.close()


def test_duckdb_reads_json_lines(tmp_path: Path) -> None:
    import json

    path = tmp_path / "a.jsonl"
    keys = ("patient_id", "district", "age_band", "year", "cost", "days")
    path.write_text(
        "".join(json.dumps(dict(zip(keys, r, strict=True))) + "\n" for r in admissions())
    )
    t = DuckDBTable(path, "jsonl")
    _check(compute_groups(parse_query(ASK, RULES), RULES, t))


def test_quantile_and_no_group_by(table: DuckDBTable) -> None:
    q = parse_query("SELECT median(cost), count(*) FROM product WHERE district = 'north'", RULES)
    [g] = compute_groups(q, RULES, table)
    costs = [min(max(r[4], 200), 5000) for r in admissions() if r[1] == "north" and r[4]]
    assert g.key == () and g.values["quantile(cost,0.5)"] == pytest.approx(st.median(costs))


def test_more_groups_than_max_groups_is_refused(table: DuckDBTable) -> None:
    rules = parse_rules(hospital(max_groups=3))
    q = parse_query("SELECT district, count(*) FROM product GROUP BY district", rules)
    with pytest.raises(InvalidRequest, match="more than 3 groups"):
        compute_groups(q, rules, table)


def test_a_shape_reuses_its_statement_with_the_next_values_bound(table: DuckDBTable) -> None:
    """The engine keeps the text it generated for a question's shape: the next question of
    that shape gets its own values, and another operator, number of values or clamping
    bound is another statement."""

    def counts(question: str, rules: Any = RULES) -> dict[tuple[Any, ...], float | None]:
        q = parse_query(question, rules)
        return {g.key: g.values["max(cost)"] for g in compute_groups(q, rules, table)}

    def expected(keep: Any, upper: float = 5000.0) -> dict[tuple[Any, ...], float]:
        out: dict[tuple[Any, ...], float] = {}
        for _pid, district, _band, year, cost, _days in admissions():
            if keep(district, year) and cost is not None:
                v = min(max(cost, 200.0), upper)
                out[(district,)] = max(out.get((district,), v), v)
        return out

    ask = "SELECT district, max(cost) FROM product WHERE {} GROUP BY district"
    for district in ("north", "east", "north"):
        assert counts(ask.format(f"district = '{district}'")) == expected(
            lambda d, _y, want=district: d == want
        )
    assert counts(ask.format("district != 'north'")) == expected(lambda d, _y: d != "north")
    assert counts(ask.format("district IN ('east', 'west')")) == expected(
        lambda d, _y: d in ("east", "west")
    )
    assert counts(ask.format("district IN ('east', 'west', 'south')")) == expected(
        lambda d, _y: d in ("east", "west", "south")
    )
    assert counts(ask.format("year < 2026")) == expected(lambda _d, y: y < 2026)
    lower_cap = parse_rules(
        hospital(measures={"cost": {"aggregates": ["max"], "lower": 200, "upper": 1000}})
    )
    assert counts(ask.format("district = 'north'"), lower_cap) == expected(
        lambda d, _y: d == "north", upper=1000.0
    )
    # The differencing check too: the same shape with other values, another answer.
    east, north = Filter("district", "=", ("east",)), Filter("district", "=", ("north",))
    not_old = Filter("age_band", "!=", ("65+",))
    # (harbour's 3 rows split off by either district filter; east's lone 65+ only in east)
    assert isolating_groups([], [east, not_old], table, k=5) == (1, 1)
    assert isolating_groups([], [north, not_old], table, k=5) == (1, 0)


@pytest.mark.parametrize(
    "evil",
    [
        "x' OR '1'='1",
        "x' OR 1=1 --",
        "north'; DROP TABLE product; --",
        "north\\' OR 1=1 #",
        "$p0",
        "%(p0)s",
    ],
)
def test_filter_values_cannot_inject_sql(table: DuckDBTable, evil: str) -> None:
    """A filter value is a bound parameter: it matches nothing, it is never SQL."""
    q = parse_query(
        {
            "aggregates": [{"fn": "count"}],
            "filters": [{"dimension": "district", "op": "=", "value": evil}],
        },
        RULES,
    )
    assert compute_groups(q, RULES, table) == []
    assert table.execute("SELECT count(*) FROM product") == [(len(admissions()),)]


# -- DuckDB is locked down: even SQL text injected into the executor cannot reach out ------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM glob('/etc/*')",
        "COPY product TO '{out}'",
        "COPY (SELECT 1) TO '{out}' (FORMAT csv)",
        "EXPORT DATABASE '{dir}'",
        "ATTACH '{db}' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SELECT * FROM read_csv('https://example.org/x.csv')",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "SET autoload_known_extensions = true",
        "SET allow_unsigned_extensions = true",
        "SET temp_directory = '{dir}'",
        "CREATE TABLE stolen AS SELECT * FROM read_csv_auto('/etc/hostname')",
    ],
)
def test_duckdb_lockdown_refuses_file_and_network_access(
    table: DuckDBTable, tmp_path: Path, sql: str
) -> None:
    out = tmp_path / "leak.csv"
    with pytest.raises(Exception) as err:
        table.execute(sql.format(out=out, dir=tmp_path / "exp", db=tmp_path / "x.db"))
    assert "duckdb" in type(err.value).__module__ or isinstance(err.value, Unavailable)
    assert not out.exists() and not (tmp_path / "exp").exists()
    assert not (tmp_path / "x.db").exists()
    assert table.execute("SELECT current_setting('enable_external_access')") == [(False,)]


def test_duckdb_interrupts_a_query_past_its_time_limit(tmp_path: Path) -> None:
    t = DuckDBTable(write_csv(tmp_path / "a.csv"), "csv", EmbeddedLimits(timeout_s=0.2))
    with pytest.raises(Unavailable, match=r"longer than 0\.2 s"):
        t.execute(
            "SELECT count(*) FROM range(10000000000) a, range(10) b WHERE a.range % 7 = b.range"
        )
    assert t.execute("SELECT count(*) FROM product") == [(len(admissions()),)]


def test_few_valued_text_columns_are_stored_as_enums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """District and age band (a handful of values) become ENUMs, patient ids (hundreds)
    stay text; answers are the figures computed in Python from the rows."""
    monkeypatch.setattr("connector.compute.embedded.DICTIONARY_MAX_VALUES", 50)
    t = DuckDBTable(write_csv(tmp_path / "a.csv"), "csv")
    types = dict((r[0], r[1]) for r in t.execute("DESCRIBE product"))
    assert types["district"].startswith("ENUM(") and types["age_band"].startswith("ENUM(")
    assert types["patient_id"] == "VARCHAR" and types["cost"] != "VARCHAR"
    _check(compute_groups(parse_query(ASK, RULES), RULES, t))
    q = parse_query(
        "SELECT count(*) FROM product WHERE district IN ('north', 'nowhere') AND age_band != '65+'",
        RULES,
    )
    expected = sum(1 for r in admissions() if r[1] == "north" and r[2] != "65+")
    assert [g.n for g in compute_groups(q, RULES, t)] == [expected]


def test_engine_errors_do_not_quote_the_data(table: DuckDBTable) -> None:
    """A provider's rules that do not fit the table (district declared an integer) make
    the engine fail; its message, which names values of the column, is not passed on."""
    rules = parse_rules(hospital(dimensions={"district": {"type": "integer"}}))
    q = parse_query("SELECT count(*) FROM product WHERE district = 3", rules)
    with pytest.raises(Unavailable) as err:
        compute_groups(q, rules, table)
    assert "north" not in str(err.value) and "provider's log" in str(err.value)


def test_time_limits_are_per_engine_and_a_dropped_engine_is_released(tmp_path: Path) -> None:
    """One watchdog serves every engine: a slow query on one is interrupted at its own
    limit while another engine answers; an engine dropped without close() is freed."""
    import gc
    import weakref

    slow = DuckDBTable(write_csv(tmp_path / "a.csv"), "csv", EmbeddedLimits(timeout_s=0.3))
    other = DuckDBTable(write_csv(tmp_path / "b.csv"), "csv", EmbeddedLimits(timeout_s=30))
    with pytest.raises(Unavailable, match=r"longer than 0\.3 s"):
        slow.execute(
            "SELECT count(*) FROM range(10000000000) a, range(10) b WHERE a.range = b.range"
        )
    assert other.execute("SELECT count(*) FROM product") == [(len(admissions()),)]
    assert slow.execute("SELECT count(*) FROM product") == [(len(admissions()),)]
    gone = weakref.ref(other)
    del other
    gc.collect()
    assert gone() is None
    slow.close()


def test_unreadable_table_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="could not be read"):
        DuckDBTable(tmp_path / "missing.csv", "csv")
    with pytest.raises(InvalidRequest, match="csv or jsonl"):
        DuckDBTable(tmp_path / "a.parquet", "parquet")


def test_isolating_groups_counts_small_cells_in_large_groups(table: DuckDBTable) -> None:
    year = Filter("year", "=", (2026,))
    not_old = Filter("age_band", "!=", ("65+",))
    # east in 2026: 0-17 (12), 18-64 (12), 65+ (1): the lone 65+ can be differenced out;
    # harbour's 3 rows split off from the other districts by the filter on district;
    # the filter on year splits off nothing small
    east = Filter("district", "=", ("east",))
    assert isolating_groups([], [year, east, not_old], table, k=5) == (0, 1, 1)
    # by district and age band, every year-cell is alone in its group or large
    assert isolating_groups(["district", "age_band"], [year], table, k=5) == (0,)
    # harbour (3 rows) is small but so is its whole group: nothing to subtract from
    harbour = Filter("district", "=", ("harbour",))
    assert isolating_groups([], [harbour, not_old], table, k=5)[1] == 0
    assert isolating_groups([], [year, east], table, k=5)[1] == 1  # harbour against all
    assert isolating_groups(["district"], [], table, k=5) == ()


def test_the_differencing_check_reads_counts_kept_per_table_within_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded table keeps its rows counted per combination of the checked columns
    (it cannot change); the check gives the same answers from them as from the rows, and
    past the bounds the statement counts the rows itself."""
    from connector.compute import embedded

    year, east = Filter("year", "=", (2026,)), Filter("district", "=", ("east",))
    not_old = Filter("age_band", "!=", ("65+",))
    checks = [
        (["district", "age_band"], [year]),
        ([], [year, east, not_old]),
        (["age_band"], [east]),
        ([], [Filter("district", "=", ("north",)), not_old]),
    ]
    kept = DuckDBTable(write_csv(tmp_path / "kept.csv"), "csv")
    counting = DuckDBTable(write_csv(tmp_path / "counting.csv"), "csv")
    try:
        from_kept = []
        for dimensions, filters in checks:
            from_kept.append(isolating_groups(dimensions, filters, kept, k=5))
            keys = tuple(dict.fromkeys((*dimensions, *(f.dimension for f in filters))))
            name = kept.counted(keys)
            assert name is not None and kept.counted(keys) == name  # made once, kept
        assert from_kept[1] == (0, 1, 1)
        monkeypatch.setattr(embedded, "COUNTED_MAX_ROWS", 2)
        for (dimensions, filters), expected in zip(checks, from_kept, strict=True):
            assert isolating_groups(dimensions, filters, counting, k=5) == expected
            keys = tuple(dict.fromkeys((*dimensions, *(f.dimension for f in filters))))
            assert counting.counted(keys) is None  # more than 2 combinations: not kept
        monkeypatch.setattr(embedded, "COUNTED_MAX_TABLES", len(checks))
        assert kept.counted(("year",)) is None  # no more tables for this one
        assert isolating_groups([], [year], kept, k=5) == (0,)
        # The engine stays locked down with its tables of counts.
        assert kept.execute("SELECT current_setting('enable_external_access')") == [(False,)]
    finally:
        kept.close()
        counting.close()


# -- the source database itself ------------------------------------------------------------


def _database_contract(executor: Executor, raw: DatabaseSource, table: str) -> None:
    _check(compute_groups(parse_query(ASK, RULES), RULES, executor))
    for evil in ("x' OR '1'='1", "north\\' OR 1=1 -- ", "%(p0)s", "%s"):
        q = parse_query(
            {
                "aggregates": [{"fn": "count"}],
                "filters": [{"dimension": "district", "op": "in", "values": [evil, "harbour"]}],
            },
            RULES,
        )
        assert [g.n for g in compute_groups(q, RULES, executor)] == [3]
    year, east = Filter("year", "=", (2026,)), Filter("district", "=", ("east",))
    not_old = Filter("age_band", "not in", ("65+",))
    assert isolating_groups([], [year, east, not_old], executor, k=5) == (0, 1, 1)
    assert isolating_groups(["district", "age_band"], [year], executor, k=5) == (0,)
    # The transaction is read only: even text injected into the executor cannot write.
    with pytest.raises(Unavailable, match="could not answer"):
        raw.execute(f"INSERT INTO {table} (patient_id) VALUES ('x')")  # noqa: S608
    with pytest.raises(Unavailable, match="could not answer"):
        raw.execute(f"DELETE FROM {table}")  # noqa: S608
    assert raw.execute(f"SELECT count(*) FROM {table}") == [(len(admissions()),)]  # noqa: S608


def _percent_source(engine: Any, table: str) -> DatabaseSource:
    # A literal % in the source query survives the drivers' pyformat, with and without
    # bound parameters.
    return DatabaseSource(engine, f"SELECT * FROM {table} WHERE patient_id NOT LIKE '%lone'")  # noqa: S608


@pytest.mark.postgres
def test_postgres_computes_read_only(pg_admissions: Any) -> None:
    src = DatabaseSource(pg_admissions, "SELECT * FROM admissions")
    _database_contract(src, src, "admissions")
    q = parse_query("SELECT quantile_cont(cost, 0.5) FROM product WHERE district = 'north'", RULES)
    [g] = compute_groups(q, RULES, src)
    costs = [min(max(r[4], 200), 5000) for r in admissions() if r[1] == "north" and r[4]]
    assert g.values["quantile(cost,0.5)"] == pytest.approx(st.median(costs))
    pct = _percent_source(pg_admissions, "admissions")
    # The same question on two source queries: two statements, two answers.
    everyone = parse_query("SELECT count(*) FROM product", RULES)
    assert compute_groups(everyone, RULES, src)[0].n == len(admissions())
    assert compute_groups(everyone, RULES, pct)[0].n == len(admissions()) - 1
    q2 = parse_query("SELECT count(*) FROM product WHERE district = 'harbour'", RULES)
    assert [g.n for g in compute_groups(q2, RULES, pct)] == [3]


@pytest.mark.postgres
def test_postgres_write_in_source_query_is_refused(pg_admissions: Any) -> None:
    with pg_admissions.begin() as conn:
        conn.execute(text("CREATE SEQUENCE s"))
    src = DatabaseSource(pg_admissions, "SELECT *, nextval('s') AS n2 FROM admissions")
    with pytest.raises(Unavailable, match="could not answer"):
        compute_groups(parse_query("SELECT count(*) FROM product", RULES), RULES, src)
    with pg_admissions.connect() as conn:
        assert conn.execute(text("SELECT last_value, is_called FROM s")).one() == (1, False)


@pytest.mark.postgres
def test_postgres_statement_timeout(pg_admissions: Any) -> None:
    src = DatabaseSource(
        pg_admissions, "SELECT a.* FROM admissions a, pg_sleep(2) AS s", timeout_s=0.2
    )
    with pytest.raises(Unavailable, match=r"did not answer within 0\.2 s"):
        compute_groups(parse_query("SELECT count(*) FROM product", RULES), RULES, src)


def test_unreachable_database_is_unavailable() -> None:
    for url in (
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2",
        "mysql+pymysql://root@127.0.0.1:1/test?connect_timeout=2",
    ):
        src = DatabaseSource(create_engine(url), "SELECT * FROM admissions")
        with pytest.raises(Unavailable, match="unreachable"):
            compute_groups(parse_query("SELECT count(*) FROM product", RULES), RULES, src)


def test_source_query_must_be_one_select() -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    for bad in ("DELETE FROM a", "SELECT 1; SELECT 2", "SELECT (", ""):
        with pytest.raises(InvalidRequest, match="source query"):
            DatabaseSource(engine, bad)
    with pytest.raises(InvalidRequest, match="not sqlite"):
        DatabaseSource(create_engine("sqlite://"), "SELECT 1")


@pytest.mark.mariadb
def test_mariadb_computes_read_only(mariadb_admissions: Any) -> None:
    engine, table = mariadb_admissions
    src = DatabaseSource(engine, f"SELECT * FROM {table}")  # noqa: S608
    _database_contract(src, src, table)
    with pytest.raises(InvalidRequest, match="cannot be computed by this source"):
        compute_groups(parse_query("SELECT median(cost) FROM product", RULES), RULES, src)
    pct = _percent_source(engine, table)
    assert (
        compute_groups(parse_query("SELECT count(*) FROM product", RULES), RULES, pct)[0].n
        == len(admissions()) - 1
    )
    q2 = parse_query("SELECT count(*) FROM product WHERE district = 'harbour'", RULES)
    assert [g.n for g in compute_groups(q2, RULES, pct)] == [3]


@pytest.mark.mariadb
def test_mariadb_statement_timeout(mariadb_admissions: Any) -> None:
    engine, table = mariadb_admissions
    src = DatabaseSource(
        engine,
        f"SELECT a.* FROM {table} a WHERE SLEEP(0.05) = 0",  # noqa: S608
        timeout_s=0.3,
    )
    with pytest.raises(Unavailable, match=r"did not answer within 0\.3 s"):
        compute_groups(parse_query("SELECT count(*) FROM product", RULES), RULES, src)
