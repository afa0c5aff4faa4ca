"""The embedded engine's pre-aggregate (``Cube``): the same groups and figures as a scan of
the rows, for every question the rules allow that it can answer; the scan for the rest."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.compute import embedded
from connector.compute.answer import answer_query
from connector.compute.embedded import DuckDBTable
from connector.compute.engine import Cube, Group, KeptCube, compute_groups, isolating_groups
from connector.compute.query import OPS, Query, parse_query
from connector.compute.rules import ComputeRules, parse_rules
from connector.compute.sources import ComputeSources
from connector.errors import InvalidRequest, PermissionDenied, Unavailable
from connector.sources.file import SourceRoots

DISTRICTS = ["north", "south", "east", "west", "harbour"]
BANDS = ["0-17", "18-64", "65+"]
YEARS = list(range(2019, 2025))
GRADES = [0.5, 1.0, 1.5]
COLUMNS = ("patient_id", "district", "band", "year", "grade", "cost", "days")

SPEC: dict[str, Any] = {
    "k": 4,
    "max_groups": 1000,
    "dimensions": {
        "district": {"type": "text"},
        "band": {"type": "text"},
        "year": {"type": "integer"},
        "grade": {"type": "number"},
    },
    "measures": {
        # A DOUBLE column, negative values and values outside the bounds on both sides.
        "cost": {
            "aggregates": ["count", "sum", "avg", "min", "max", "quantile"],
            "lower": -50,
            "upper": 500.5,
            "quantiles": [0.5, 0.9],
        },
        # An integer column: its clamped sums are integers, added up exactly.
        "days": {"aggregates": ["count", "sum", "avg", "min", "max"], "lower": 0, "upper": 20},
    },
}
RULES = parse_rules(SPEC)
DP_RULES = parse_rules(
    SPEC
    | {
        "measures": {
            "cost": {"aggregates": ["count", "sum", "avg"], "lower": -50, "upper": 500.5},
            "days": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 20},
        },
        "privacy": {"epsilon_per_query": 1.0, "epsilon_budget": 100.0, "delta": 1e-6},
    }
)


def _maybe(rng: random.Random, values: list[Any], nulls: float = 0.05) -> Any:
    return None if rng.random() < nulls else rng.choice(values)


def _write(path: Path, seed: int, rows: int = 8000) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(rows):
            # 'harbour' is rare: small groups, and cells below k.
            district = "harbour" if rng.random() < 0.004 else _maybe(rng, DISTRICTS[:4])
            cost = None if rng.random() < 0.1 else round(rng.uniform(-400, 1500), 2)
            days = None if rng.random() < 0.1 else rng.randint(-10, 40)
            w.writerow(
                (
                    f"p-{i}",
                    "" if district is None else district,
                    _blank(_maybe(rng, BANDS)),
                    _blank(_maybe(rng, YEARS)),
                    _blank(_maybe(rng, GRADES)),
                    _blank(cost),
                    _blank(days),
                )
            )
    return path


def _blank(v: Any) -> Any:
    return "" if v is None else v


class Recording(DuckDBTable):
    """A real embedded table that remembers the statements it ran; ``cubes=False`` keeps
    no cube (every question scans), ``cells=False`` keeps its cubes' cells out of Python
    (every question from the cube is a statement over its table)."""

    def __init__(self, *args: Any, cubes: bool = True, cells: bool = True, **kwargs: Any) -> None:
        self.ran: list[str] = []
        self._cubes_allowed = cubes
        self._cells_allowed = cells
        super().__init__(*args, **kwargs)

    def cube(self, cube: Cube) -> KeptCube | None:
        if not self._cubes_allowed:
            return None
        kept = super().cube(cube)
        return kept if kept is None or self._cells_allowed else KeptCube(kept.table)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        self.ran.append(sql)
        return super().execute(sql, params)


@pytest.fixture(params=[1, 2, 3])
def table_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return _write(tmp_path / "t.csv", request.param)


@pytest.fixture
def tables(table_file: Path) -> Iterator[tuple[Recording, Recording]]:
    """The same random file loaded twice: with cubes, and scanning every question."""
    cubed, scanned = Recording(table_file, "csv"), Recording(table_file, "csv", cubes=False)
    yield cubed, scanned
    cubed.close()
    scanned.close()


@pytest.fixture
def over_cells(table_file: Path) -> Iterator[Recording]:
    """The same file with cubes whose cells are read by statements, never in Python."""
    t = Recording(table_file, "csv", cells=False)
    yield t
    t.close()


def _question(rng: random.Random, rules: ComputeRules) -> dict[str, Any]:
    dims = rng.sample(["district", "band", "year", "grade"], rng.randint(0, 3))
    filters = []
    for _ in range(rng.randint(0, 3)):
        dim = rng.choice(["district", "band", "year", "grade"])
        text = dim in ("district", "band")
        ops = [o for o in OPS if not text or o in ("=", "!=", "in", "not in")]
        op = rng.choice(ops)
        pool: list[Any] = {
            "district": [*DISTRICTS, "nowhere"],
            "band": BANDS,
            "year": [*YEARS, 1990, 2100] + ([2020.5] if _number("year", rules) else []),
            "grade": [*GRADES, 0.75],
        }[dim]
        if op in ("in", "not in"):
            values = rng.sample(pool, rng.randint(1, min(4, len(pool))))
            filters.append({"dimension": dim, "op": op, "values": values})
        else:
            filters.append({"dimension": dim, "op": op, "value": rng.choice(pool)})
    aggregates: list[dict[str, Any]] = [{"fn": "count"}]
    for m in rules.measures:
        fns = [a for a in m.aggregates if a != "quantile"]
        for fn in rng.sample(fns, rng.randint(0, len(fns))):
            aggregates.append({"fn": fn, "measure": m.name})
    return {"dimensions": dims, "filters": filters, "aggregates": aggregates}


def _number(dim: str, rules: ComputeRules) -> bool:
    d = rules.dimension(dim)
    return d is not None and d.type == "number"


# A number dimension over an integer column: its filters' values are floats, which DuckDB
# compares with the column as doubles.
YEAR_AS_NUMBER = parse_rules(
    SPEC | {"dimensions": SPEC["dimensions"] | {"year": {"type": "number"}}}
)


def _same(cubed: list[Group], scanned: list[Group]) -> None:
    assert [repr(g.key) for g in cubed] == [repr(g.key) for g in scanned]  # NaN too
    for c, s in zip(cubed, scanned, strict=True):
        assert c.n == s.n, c.key
        assert c.values.keys() == s.values.keys()
        for key, v in c.values.items():
            if key == "sum(cost)" and v is not None:
                # Doubles added up in another order: equal up to the last bits.
                assert v == pytest.approx(s.values[key], rel=1e-12, abs=1e-9), (c.key, key)
            else:
                assert v == s.values[key], (c.key, key)  # counts, integer sums, min, max


def _read_cube(t: Recording) -> bool:
    return "tds_cube_" in t.ran[-1] and "FROM product" not in t.ran[-1]


def _asked(query: Query, rules: ComputeRules, t: Recording) -> tuple[list[Group], list[str]]:
    """``query``'s groups on ``t``, and the statements answering it ran."""
    before = len(t.ran)
    groups = compute_groups(query, rules, t)
    return groups, t.ran[before:]


@pytest.mark.parametrize(
    "rules", [RULES, DP_RULES, YEAR_AS_NUMBER], ids=["k", "dp", "year as number"]
)
def test_the_cube_gives_the_scans_groups(
    tables: tuple[Recording, Recording], over_cells: Recording, rules: ComputeRules
) -> None:
    """Random questions (every operator, IN lists, NULL keys, empty and small groups, no
    group at all): the groups and figures disclosure control and the noise are given are
    the scan's, and those of the statement over the cube's cells; answered in Python from
    the cells (no statement run)."""
    cubed, scanned = tables
    rng = random.Random(7)
    empty = 0
    for _ in range(150):
        query = parse_query(_question(rng, rules), rules)
        groups, ran = _asked(query, rules, cubed)
        assert ran == []
        statement, ran = _asked(query, rules, over_cells)
        assert len(ran) == 1 and "tds_cube_" in ran[0] and "FROM product" not in ran[0]
        scan = compute_groups(query, rules, scanned)
        assert "FROM product" in scanned.ran[-1]
        _same(groups, scan)
        _same(groups, statement)
        empty += not scan
    assert empty  # some questions matched nothing
    kept = cubed.cube(Cube.of(rules))
    assert kept is not None and kept.cells is not None


def test_none_keys_and_values_outside_the_bounds(tables: tuple[Recording, Recording]) -> None:
    """The cube keeps NULL as a key of its own and clamps as the scan does."""
    cubed, scanned = tables
    q = parse_query(
        "SELECT district, count(*), min(cost), max(cost), min(days), max(days), sum(days)"
        " FROM product GROUP BY district",
        RULES,
    )
    groups, ran = _asked(q, RULES, cubed)
    assert ran == []  # from the cells, in Python
    _same(groups, compute_groups(q, RULES, scanned))
    assert None in {g.key[0] for g in groups}
    big = next(g for g in groups if g.key == ("north",))
    assert big.values["min(cost)"] == -50.0 and big.values["max(cost)"] == 500.5
    assert big.values["min(days)"] == 0.0 and big.values["max(days)"] == 20.0


def _disclosed(question: dict[str, Any], t: Recording) -> tuple[Any, ...]:
    try:
        d = answer_query(question, RULES, t).disclosed
    except PermissionDenied as exc:
        return ("refused", str(exc))
    return ("answered", d.columns, d.suppressed, d.rows)


def test_answers_with_k_are_the_scans(tables: tuple[Recording, Recording]) -> None:
    """The disclosed answers (suppression with k, the differencing check's refusals) of
    both are the same."""
    cubed, scanned = tables
    rng = random.Random(11)
    suppressed = refused = 0
    for _ in range(80):
        question = _question(rng, RULES)
        mine, theirs = _disclosed(question, cubed), _disclosed(question, scanned)
        assert mine[:3] == theirs[:3]
        if mine[0] == "refused":
            refused += 1
            continue
        suppressed += mine[2]
        assert len(mine[3]) == len(theirs[3])
        for a, b in zip(mine[3], theirs[3], strict=True):
            for x, y in zip(a, b, strict=True):
                # avg(cost): doubles, as above; everything else exactly.
                assert x == (pytest.approx(y, rel=1e-12) if isinstance(y, float) else y)
    assert suppressed and refused


def test_dp_answers_come_from_the_cube(tables: tuple[Recording, Recording]) -> None:
    cubed, _ = tables
    q = "SELECT band, count(*), avg(cost), sum(days) FROM product WHERE year >= 2020 GROUP BY band"
    before = len(cubed.ran)
    answer = answer_query(q, DP_RULES, cubed)
    assert cubed.ran[before:] == []  # from the cells, in Python
    assert answer.disclosed.epsilon == 1.0


def test_quantiles_scan_the_rows(tables: tuple[Recording, Recording]) -> None:
    """A question asking a quantile (with other statistics or alone) reads the rows."""
    cubed, scanned = tables
    q = parse_query(
        "SELECT band, count(*), avg(cost), quantile_cont(cost, 0.5) FROM product"
        " WHERE year != 2020 GROUP BY band",
        RULES,
    )
    groups = compute_groups(q, RULES, cubed)
    assert "FROM product" in cubed.ran[-1] and "tds_cube_" not in cubed.ran[-1]
    assert groups == compute_groups(q, RULES, scanned)
    assert all(g.values["quantile(cost,0.5)"] is not None for g in groups)


def test_a_large_cube_is_not_kept(tmp_path: Path) -> None:
    """Rules whose dimensions split the table into nearly as many cells as rows get no
    cube (nothing of it stays in the engine); their questions scan."""
    path = _write(tmp_path / "t.csv", 5, rows=8000)
    spec = SPEC | {"dimensions": SPEC["dimensions"] | {"patient_id": {"type": "text"}}}
    rules = parse_rules(spec)
    t = Recording(path, "csv")
    try:
        q = parse_query(
            "SELECT district, count(*), sum(days) FROM product GROUP BY district", rules
        )
        groups = compute_groups(q, rules, t)
        assert "FROM product" in t.ran[-1]
        assert t.cube(Cube.of(rules)) is None
        [(kept,)] = t.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'tds_cube%'"
        )
        assert kept == 0
        plain = Recording(path, "csv", cubes=False)
        try:
            _same(groups, compute_groups(q, rules, plain))
        finally:
            plain.close()
        # The same table keeps the cube of narrower rules.
        assert t.cube(Cube.of(RULES)) is not None
    finally:
        t.close()


def test_a_cube_the_engine_fails_to_make_is_not_kept_and_the_rows_answer(
    tables: tuple[Recording, Recording],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine failing while it makes the cube (its time limit, its memory) costs the
    cube, said in the provider's log, never the answer: the question reads the rows."""
    cubed, scanned = tables
    run = DuckDBTable._run

    def failing(self: DuckDBTable, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        if sql.startswith("CREATE TABLE tds_cube_"):
            raise Unavailable("the computation ran longer than 30 s")
        return run(self, sql, params)

    monkeypatch.setattr(DuckDBTable, "_run", failing)
    q = parse_query("SELECT band, count(*), sum(days) FROM product GROUP BY band", RULES)
    with caplog.at_level("WARNING", logger="connector.compute.embedded"):
        groups, ran = _asked(q, RULES, cubed)
    assert "FROM product" in ran[-1]
    assert any("is not kept" in r.getMessage() for r in caplog.records)
    assert cubed.cube(Cube.of(RULES)) is None  # remembered: not tried on every question
    _same(groups, compute_groups(q, RULES, scanned))


def test_cubes_per_table_are_bounded(
    tables: tuple[Recording, Recording], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "CUBE_MAX_TABLES", 1)
    cubed, _ = tables
    assert cubed.cube(Cube.of(RULES)) is not None
    other = parse_rules(SPEC | {"measures": {"days": SPEC["measures"]["days"]}})
    assert cubed.cube(Cube.of(other)) is None
    q = parse_query("SELECT band, count(*), sum(days) FROM product GROUP BY band", other)
    compute_groups(q, other, cubed)
    assert "FROM product" in cubed.ran[-1]


def test_one_cube_per_bounds_not_per_aggregates(tables: tuple[Recording, Recording]) -> None:
    """The cube depends on the dimensions and the bounds: rules that differ in k or in
    the aggregates allowed share it, other bounds get their own (clamped to them)."""
    cubed, scanned = tables
    same = parse_rules(SPEC | {"k": 9})
    assert Cube.of(same) == Cube.of(RULES)
    wider = parse_rules(
        SPEC
        | {
            "measures": SPEC["measures"]
            | {"cost": {"aggregates": ["max"], "lower": 0, "upper": 900}}
        }
    )
    mine, theirs = cubed.cube(Cube.of(wider)), cubed.cube(Cube.of(RULES))
    assert mine is not None and theirs is not None and mine.table != theirs.table
    q = parse_query("SELECT band, max(cost) FROM product GROUP BY band", wider)
    _same(compute_groups(q, wider, cubed), compute_groups(q, wider, scanned))
    assert max(g.values["max(cost)"] or 0 for g in compute_groups(q, wider, cubed)) == 900.0


def test_too_many_groups_is_refused_alike(
    tables: tuple[Recording, Recording], over_cells: Recording
) -> None:
    """In Python, by a statement over the cells and over the rows: the same refusal, and
    the same answer at exactly ``max_groups`` groups."""
    cubed, scanned = tables
    q = parse_query("SELECT district, band, count(*) FROM product GROUP BY district, band", RULES)
    most = len(compute_groups(q, RULES, scanned))
    narrow = parse_rules(SPEC | {"max_groups": most - 1})
    exact = parse_rules(SPEC | {"max_groups": most})
    for t in (cubed, over_cells, scanned):
        with pytest.raises(InvalidRequest, match=f"more than {most - 1} groups"):
            compute_groups(q, narrow, t)
        assert len(compute_groups(q, exact, t)) == most
    assert _read_cube(over_cells)
    assert not any("tds_cube_" in sql for sql in cubed.ran)


def test_a_question_cannot_name_the_cube(tables: tuple[Recording, Recording]) -> None:
    """The cube is no source a question can reach: only ``product`` is, and no declared
    column (so no dimension, measure or filter) may be one of the cube's."""
    cubed, _ = tables
    kept = cubed.cube(Cube.of(RULES))
    assert kept is not None and kept.table.startswith("tds_")
    name = kept.table
    for question in (
        f"SELECT count(*) FROM {name}",  # noqa: S608
        f"SELECT district, count(*) FROM {name} GROUP BY district",  # noqa: S608
        "SELECT tds_n, count(*) FROM product GROUP BY tds_n",
        "SELECT count(*) FROM product WHERE tds_n = 1",
        "SELECT sum(tds_sum0) FROM product",
        f"SELECT count(*) FROM product, {name}",  # noqa: S608
        f"SELECT count(*) FROM (SELECT * FROM {name})",  # noqa: S608
    ):
        with pytest.raises(InvalidRequest):
            parse_query(question, RULES)
    with pytest.raises(InvalidRequest, match="tds_"):
        parse_rules(SPEC | {"dimensions": {"tds_n": {"type": "integer"}}})


def test_the_cube_is_made_after_the_lockdown(tables: tuple[Recording, Recording]) -> None:
    """Made on the locked engine: the configuration stays locked, files stay out of reach."""
    cubed, _ = tables
    assert cubed.cube(Cube.of(RULES)) is not None
    for sql in ("SET enable_external_access = true", "SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(Unavailable):
            cubed.execute(sql)


def test_sources_keep_the_cube_with_the_table(tmp_path: Path) -> None:
    """Through ``ComputeSources`` (as the provider opens products): the second question
    on the kept table reads the cube the first one made."""
    from connector.catalog.products import Source

    root = tmp_path / "data"
    root.mkdir()
    _write(root / "t.csv", 9)
    sources = ComputeSources(SourceRoots(root))
    source = Source(kind="table", format="csv", path="t.csv")
    q = parse_query("SELECT band, count(*), avg(cost) FROM product GROUP BY band", RULES)
    first, _ = sources.open(source, list(COLUMNS))
    compute_groups(q, RULES, first)
    second, _ = sources.open(source, list(COLUMNS))
    assert second is first
    assert isinstance(second, DuckDBTable) and second.cube(Cube.of(RULES)) is not None


# -- where Python would not compare or group as DuckDB does, the statement answers ---------

_CHANGED = {
    # A DECIMAL, a FLOAT, a DATE: types whose values Python would compare its own way.
    "decimal": "CAST(grade AS DECIMAL(4, 2)) AS grade",
    "float": "CAST(grade AS FLOAT) AS grade",
    "date": "make_date(CAST(grade * 2 AS BIGINT) + 2000, 1, 1) AS grade",
    # DuckDB orders NaN above every number and equal to itself; Python does neither.
    "nan": "CASE WHEN patient_id IN ('p-3', 'p-9') THEN 'nan'::DOUBLE ELSE grade END AS grade",
    # -0.0 equals 0.0 in both, but which of them a group's key is depends on the order.
    "negative zero": "CASE WHEN patient_id = 'p-3' THEN -0.0::DOUBLE ELSE grade END AS grade",
    # Integers past 2**53 are not exactly doubles: DuckDB compares them with a number
    # (a float) as doubles, Python exactly.
    "large integers": (
        "CAST(grade * 2 AS BIGINT) + CASE WHEN patient_id = 'p-3' THEN 9007199254740993"
        " ELSE 0 END AS grade"
    ),
    # An integer dimension over a text column: text compared with an int.
    "integer over text": "CAST(year AS VARCHAR) AS year",
}


def _changed(path: Path, change: str, **kwargs: Any) -> Recording:
    t = Recording(path, "csv", **kwargs)
    t.execute(f"CREATE OR REPLACE TABLE product AS SELECT * REPLACE ({change}) FROM product")  # noqa: S608
    return t


def _outcome(query: Query, t: Recording) -> tuple[Any, ...]:
    try:
        return ("answered", compute_groups(query, RULES, t))
    except Unavailable:  # the engine's own refusal: the same on both
        return ("unavailable",)


@pytest.mark.parametrize("change", list(_CHANGED), ids=list(_CHANGED))
def test_what_python_cannot_compare_is_read_by_a_statement(table_file: Path, change: str) -> None:
    """A dimension whose column is no text, integer or double without NaN and -0.0, or
    whose values a filter's values would be compared with otherwise than in DuckDB, is
    grouped and filtered by the statement over the cube's table: the scan's groups."""
    column = "year" if change == "integer over text" else "grade"
    cubed = _changed(table_file, _CHANGED[change])
    scanned = _changed(table_file, _CHANGED[change], cubes=False)
    try:
        kept = cubed.cube(Cube.of(RULES))
        assert kept is not None and kept.cells is not None  # the others still in Python
        value: Any = 2020 if column == "year" else 1.5
        questions = [{"dimensions": [column], "filters": [], "aggregates": [{"fn": "count"}]}]
        ops = ["=", "!=", "in", "not in"] + (["<", ">="] if column == "grade" else [])
        for op in ops:
            many = op in ("in", "not in")
            f = {"dimension": column, "op": op} | (
                {"values": [value, 2.0 if column == "grade" else 2021]}
                if many
                else {"value": value}
            )
            questions.append(
                {
                    "dimensions": ["band"],
                    "filters": [f],
                    "aggregates": [{"fn": "count"}, {"fn": "sum", "measure": "days"}],
                }
            )
        statements = 0
        for question in questions:
            q = parse_query(question, RULES)
            before = len(cubed.ran)
            mine, theirs = _outcome(q, cubed), _outcome(q, scanned)
            assert mine[0] == theirs[0], (question, mine, theirs)
            if mine[0] == "answered":
                _same(mine[1], theirs[1])
            ran = cubed.ran[before:]
            grouped_only = not question["filters"]
            if grouped_only and change in ("large integers", "integer over text"):
                assert ran == []  # integers and text group alike in Python
            else:
                assert len(ran) == 1 and "tds_cube_" in ran[0], (question, ran)
                statements += 1
        assert statements
    finally:
        cubed.close()
        scanned.close()


def test_text_duckdb_cannot_bind_is_left_to_it(tables: tuple[Recording, Recording]) -> None:
    """A lone surrogate is no UTF-8: DuckDB refuses to bind it, so Python does not
    answer for it either."""
    cubed, scanned = tables
    q = parse_query(
        {
            "dimensions": [],
            "filters": [{"dimension": "district", "op": "!=", "value": "\ud800"}],
            "aggregates": [{"fn": "count"}],
        },
        RULES,
    )
    before = len(cubed.ran)
    assert _outcome(q, cubed) == _outcome(q, scanned)
    assert len(cubed.ran) == before + 1


def test_few_cells_only_are_held_in_python(
    table_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cube of more than ``CELLS_IN_PYTHON`` cells is read by statements only."""
    monkeypatch.setattr(embedded, "CELLS_IN_PYTHON", 10)
    t = Recording(table_file, "csv")
    try:
        kept = t.cube(Cube.of(RULES))
        assert kept is not None and kept.cells is None
        q = parse_query("SELECT band, count(*) FROM product GROUP BY band", RULES)
        _, ran = _asked(q, RULES, t)
        assert len(ran) == 1 and "tds_cube_" in ran[0]
    finally:
        t.close()


def test_the_differencing_check_from_the_cells(
    tables: tuple[Recording, Recording], over_cells: Recording
) -> None:
    """The differencing check counted from the cube's cells in Python finds what it finds
    from the kept counts (``counted``) and from the statement over the rows."""
    cubed, scanned = tables
    kept = cubed.cube(Cube.of(RULES))
    assert kept is not None and kept.cells is not None
    rng = random.Random(5)
    found = 0
    for _ in range(120):
        q = parse_query(_question(rng, RULES), RULES)
        before = len(cubed.ran)
        mine = isolating_groups(q.dimensions, q.filters, cubed, k=RULES.k, cube=kept)
        assert cubed.ran[before:] == []
        counted = isolating_groups(q.dimensions, q.filters, over_cells, k=RULES.k)
        statement = isolating_groups(q.dimensions, q.filters, _Uncounted(scanned), k=RULES.k)
        assert mine == counted == statement, q
        found += any(mine)
    assert found


class _Uncounted:
    """An executor over a real table that keeps no counts: the check's own statement."""

    def __init__(self, table: DuckDBTable) -> None:
        self._table = table

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def counted(self, keys: Any) -> None:
        return None
