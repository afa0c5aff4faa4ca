"""Running a validated ``Query`` where the data lives.

The engine never runs the consumer's text. It builds its own SELECT from the canonical
``Query`` with sqlglot's builder, for the executor's dialect:

- every measure is clamped to the offer's bounds before it is aggregated
  (``LEAST(GREATEST(x, lower), upper)``, NULL kept NULL), so one row moves a sum by at most
  ``max(|lower|, |upper|)`` — the sensitivity the noise is calibrated to;
- ``COUNT(*)`` of each group is always computed, for suppression;
- filter values are bound parameters, never spliced into the text;
- at most ``max_groups + 1`` groups are fetched, and more than ``max_groups`` is refused.

Executors (``Executor``) say how the FROM item ``product`` is reached and run the text:
``connector.compute.embedded.DuckDBTable`` over CSV / JSON Lines files, and
``connector.compute.database.DatabaseSource`` on PostgreSQL or MariaDB.

An executor whose data cannot change (a file table: its hash is the source's state in the
receipt) may keep a ``Cube`` of it: the rows grouped once by every dimension the rules
declare, with each cell's row count and, per declared measure, the count, sum, least and
greatest of its clamped values. A question may only group and filter by declared
dimensions, so its groups are unions of cells, and its counts, sums, minima and maxima
(and the averages made of them) are sums, minima and maxima of the cells' figures: the
statement then reads the cells instead of every row, with the same filters, bound the
same way. Quantiles cannot be added up, so a question asking one scans the rows; so does
every question on an executor that keeps no cube (a database, or a cube too large).

A cube of few cells is also held in Python (``CubeCells``, handed back with the cube's
table as a ``KeptCube``): a question whose dimensions and filter values Python compares
and groups exactly as DuckDB does is answered from it without any statement (DuckDB spends
about 1 ms on any GROUP BY, however few its rows), and so is its differencing check; any
other reads the cube's table with a statement.

A statement's text depends on the question's shape (dimensions, filtered dimensions with
their operators and number of values, statistics), the rules and the executor, never on
the filter values, which are bound: the text generated for a shape is kept
(``_Statements``) and reused with the next question's values, instead of building and
printing the same sqlglot tree again (about 1 ms of a question with a filter).
"""

from __future__ import annotations

import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlglot import exp

from connector.compute.query import Aggregate, Filter, Query, Value, filter_expression
from connector.compute.rules import ComputeRules, Measure
from connector.errors import InvalidRequest

__all__ = [
    "CELLS_IN_PYTHON",
    "Cube",
    "CubeCells",
    "Executor",
    "Group",
    "KeptCube",
    "Statistic",
    "compute_groups",
    "isolating_groups",
    "statistics",
]

_N = "tds_n"


class Executor(Protocol):
    """Where ``product`` is and how a SELECT over it is run, read-only."""

    dialect: str
    """The sqlglot dialect of the generated SQL."""
    quantiles: bool
    """Whether the source can compute continuous quantiles of a group."""

    def source(self) -> exp.Expression:
        """The FROM item named ``product`` (a table, or the source query as a subquery)."""
        ...

    def placeholder(self, name: str) -> exp.Expression:
        """How a bound parameter called ``name`` is written in this executor's SQL."""
        ...

    @property
    def plan_key(self) -> Hashable:
        """Executors with equal keys turn the same tree into the same text (``text``)."""
        ...

    def text(self, select: exp.Select, params: Mapping[str, Value]) -> str:
        """The SQL text this executor runs for ``select`` (whose parameters are ``params``)."""
        ...

    def execute(self, sql: str, params: dict[str, Value]) -> list[tuple[Any, ...]]:
        """Run text made by ``text`` read-only with a time limit; every row as a tuple."""
        ...

    def never_null(self, column: str) -> bool:
        """Whether ``column`` is known to hold no NULL (data that cannot change)."""
        ...

    def counted(self, keys: Sequence[str]) -> str | None:
        """A table of the source's rows counted per combination of ``keys`` (columns
        ``keys`` and ``tds_n``) that this executor keeps because its data cannot change,
        or None: the statement counts the rows itself."""
        ...

    def cube(self, cube: Cube) -> KeptCube | None:
        """A table holding the result of ``cube.statement(self)``, made by this executor
        from the engine's own statement and kept because its data cannot change (with its
        cells held in Python when they are few, ``CubeCells``), or None (too large, or
        data that changes): the statement reads the rows themselves."""
        ...


@dataclass(frozen=True)
class Statistic:
    """One exact statistic per group the source computes: ``count``, ``sum``, ``min``,
    ``max`` or ``quantile`` of a measure."""

    fn: str
    measure: str
    q: float | None = None

    @property
    def key(self) -> str:
        """``sum(cost)``, ``quantile(cost,0.5)``."""
        return (
            f"{self.fn}({self.measure})"
            if self.q is None
            else (f"quantile({self.measure},{self.q!r})")
        )


@dataclass(frozen=True)
class Group:
    """One group's exact figures, before disclosure control. Never leaves the provider."""

    key: tuple[Value | None, ...]
    n: int
    """Contributing rows (``COUNT(*)``)."""
    values: dict[str, float | None]
    """``Statistic.key`` -> exact value (``None`` when the group has no non-NULL value)."""


def statistics(aggregates: Sequence[Aggregate]) -> tuple[Statistic, ...]:
    """What the source must compute for ``aggregates``: ``avg`` is sum over count, so that
    the noisy answer can be the ratio of two noisy releases."""
    out: dict[Statistic, None] = {}
    for a in aggregates:
        if a.measure is None:
            continue
        if a.fn == "avg":
            out[Statistic("sum", a.measure)] = None
            out[Statistic("count", a.measure)] = None
        else:
            out[Statistic(a.fn, a.measure, a.q)] = None
    return tuple(out)


def _bound(x: float) -> exp.Expression:
    """A clamping bound as a literal: integral bounds as integers, so that clamping an
    integer column stays integer arithmetic (a decimal literal would turn every value of
    it into a DECIMAL first)."""
    return exp.Literal.number(str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x))


def _clamped(m: Measure, executor: Executor) -> exp.Expression:
    col = exp.column(m.name)
    # ignore_nulls: plain GREATEST/LEAST in every dialect (x is not NULL in that branch);
    # without it sqlglot wraps each in its own NULL test for DuckDB, which costs time.
    clamp = exp.Least(
        this=exp.Greatest(this=col, expressions=[_bound(m.lower)], ignore_nulls=True),
        expressions=[_bound(m.upper)],
        ignore_nulls=True,
    )
    if executor.never_null(m.name):
        return clamp  # nothing to keep NULL: the test per row would only cost time
    # GREATEST/LEAST ignore NULL in PostgreSQL and DuckDB and propagate it in MariaDB: say
    # NULL stays NULL (an unknown value is not a value at a bound), the same everywhere.
    return exp.If(this=exp.Is(this=col.copy(), expression=exp.Null()), true=exp.Null(), false=clamp)


def _statistic(s: Statistic, rules: ComputeRules, executor: Executor) -> exp.Expression:
    m = rules.measure(s.measure)
    assert m is not None  # the Query was checked against the rules
    if s.fn == "count":
        return exp.Count(this=exp.column(m.name))
    arg = _clamped(m, executor)
    if s.fn == "sum":
        return exp.Sum(this=arg)
    if s.fn == "min":
        return exp.Min(this=arg)
    if s.fn == "max":
        return exp.Max(this=arg)
    assert s.fn == "quantile" and s.q is not None
    if not executor.quantiles:
        raise InvalidRequest(
            f"quantile({s.measure}) cannot be computed by this source; ask without quantiles"
        )
    return exp.WithinGroup(
        this=exp.PercentileCont(this=exp.Literal.number(repr(s.q))),
        expression=exp.Order(expressions=[exp.Ordered(this=arg)]),
    )


_CUBE_FIGURES = {"count": "tds_nn", "sum": "tds_sum", "min": "tds_lo", "max": "tds_hi"}
"""A measure's figures in a cube, by the statistic each answers: column ``<prefix><i>`` for
the ``i``-th measure (no name a statement's own aliases use, ``tds_s<i>`` among them)."""


@dataclass(frozen=True)
class Cube:
    """A pre-aggregate of a source over the dimensions and measures an offer declares.

    One row per combination of the dimensions' values that occurs (a cell; NULL is a value
    of its own, as in a GROUP BY): its rows (``tds_n``) and, for the ``i``-th measure, its
    non-NULL values (``tds_nn<i>``) and the sum, least and greatest of its values clamped
    to the measure's bounds (``tds_sum<i>``, ``tds_lo<i>``, ``tds_hi<i>``), clamped exactly
    as a statement over the rows clamps them (``_clamped``). A group of a question is the
    union of the cells with its key that pass the filters (a filter reads only its
    dimension, so a cell's rows pass or fail it alike), so its ``COUNT(*)`` is the sum of
    their ``tds_n``, a measure's count and sum are sums, its minimum the least minimum and
    its maximum the greatest. Equal for equal bounds: the cube depends on the dimensions
    and the measures' bounds only, not on the aggregates allowed or on ``k``.
    """

    dimensions: tuple[str, ...]
    measures: tuple[Measure, ...]
    """The measures' names and bounds (aggregates and quantile levels left out)."""

    @classmethod
    def of(cls, rules: ComputeRules) -> Cube:
        """The cube of everything ``rules`` let a question group, filter and aggregate."""
        return cls(
            tuple(d.name for d in rules.dimensions),
            tuple(Measure(m.name, (), m.lower, m.upper) for m in rules.measures),
        )

    def answers(self, query: Query, stats: Sequence[Statistic]) -> bool:
        """Whether the cells give exactly what a statement over the rows would: every
        grouped and filtered dimension is one of the cube's, and every statistic is a
        count, sum, minimum or maximum of one of its measures (a quantile is not)."""
        dims = set(self.dimensions)
        names = {m.name for m in self.measures}
        return (
            dims.issuperset(query.dimensions)
            and dims.issuperset(f.dimension for f in query.filters)
            and all(s.fn in _CUBE_FIGURES and s.measure in names for s in stats)
        )

    def statement(self, executor: Executor) -> exp.Select:
        """The SELECT over the executor's rows whose result is the cube."""
        columns: list[exp.Expr] = [exp.column(d) for d in self.dimensions]
        columns.append(exp.alias_(exp.Count(this=exp.Star()), _N))
        for i, m in enumerate(self.measures):
            count = exp.Count(this=exp.column(m.name))
            columns.append(exp.alias_(count, f"{_CUBE_FIGURES['count']}{i}"))
            for fn, stat in ((exp.Sum, "sum"), (exp.Min, "min"), (exp.Max, "max")):
                figure = fn(this=_clamped(m, executor))
                columns.append(exp.alias_(figure, f"{_CUBE_FIGURES[stat]}{i}"))
        select = exp.select(*columns).from_(executor.source(), copy=False)
        if self.dimensions:
            select = select.group_by(*(exp.column(d) for d in self.dimensions), copy=False)
        return select

    def figure(self, s: Statistic) -> exp.Expression:
        """``s`` of a group, from its cells."""
        i = next(i for i, m in enumerate(self.measures) if m.name == s.measure)
        column = exp.column(f"{_CUBE_FIGURES[s.fn]}{i}")
        if s.fn == "min":
            return exp.Min(this=column)
        if s.fn == "max":
            return exp.Max(this=column)
        return exp.Sum(this=column)  # counts and sums add up


CELLS_IN_PYTHON = 4096
"""Cells up to which a kept cube's cells are also held in Python (``CubeCells``). Below
the measured crossing: a question filtering by one dimension and grouping by two took
0.22 / 0.36 / 0.69 / 1.53 ms in Python over 336 / 1,344 / 4,032 / 10,080 cells, and
1.10-1.27 ms by the statement over the cube's table at every size."""

COUNTED_IN_PYTHON = 16
"""Combinations of dimensions whose counts a ``CubeCells`` keeps for the differencing check."""

_INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
    }
)
_EXACT_AS_DOUBLE = 2**53
"""Integers up to this magnitude are the same number as a double."""
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _kind(type_: str, values: Sequence[Any]) -> str | None:
    """How a cube's dimension column of DuckDB type ``type_`` holding ``values`` compares
    and groups in Python exactly as in DuckDB: ``text`` (VARCHAR or ENUM, fetched as str),
    ``int`` (an integer type, fetched as int), ``int53`` (the same, every value exact as
    a double), ``double`` (DOUBLE without NaN or -0.0, which DuckDB orders and groups
    unlike Python's floats); None for any other type (DATE, DECIMAL, FLOAT, BOOLEAN, ...)."""
    if type_ == "VARCHAR" or type_.startswith("ENUM("):
        return "text"
    if type_ in _INTEGER_TYPES:
        exact = all(v is None or abs(v) <= _EXACT_AS_DOUBLE for v in values)
        return "int53" if exact else "int"
    if type_ == "DOUBLE":
        odd = any(
            v is not None and (v != v or (v == 0 and math.copysign(1.0, v) < 0)) for v in values
        )
        return None if odd else "double"
    return None


def _matches(kind: str | None, f: Filter) -> bool:
    """Whether Python's comparison of a column of ``kind`` with ``f``'s values is
    DuckDB's, with the values bound as the statement binds them."""
    values = f.values
    if kind == "text":
        # Only equality on text (no ordering is allowed on it); a str DuckDB cannot bind
        # (not UTF-8: a lone surrogate) fails there, so it is left to the statement.
        return f.op in ("=", "!=", "in", "not in") and all(
            type(v) is str and _utf8(v) for v in values
        )
    if kind in ("int", "int53"):
        # An int is compared exactly by both; a float against an integer column is
        # compared as doubles by DuckDB, which is exact only when every value is.
        return all(type(v) is int or (type(v) is float and kind == "int53") for v in values)
    if kind == "double":
        return all(
            type(v) is float or (type(v) is int and abs(v) <= _EXACT_AS_DOUBLE) for v in values
        )
    return False


def _utf8(v: str) -> bool:
    try:
        v.encode()
    except UnicodeEncodeError:
        return False
    return True


def _predicate(f: Filter) -> Callable[[Any], bool]:
    """Whether a cell's value of ``f``'s dimension passes ``f``, as SQL's WHERE decides:
    NULL passes nothing (``!=`` and ``NOT IN`` included), a value list holds no NULL."""
    if f.op in ("in", "not in"):
        values = frozenset(f.values)
        if f.op == "in":
            return values.__contains__  # None is never among them
        return lambda x: x is not None and x not in values
    v, compare = f.values[0], _COMPARE[f.op]
    return lambda x: x is not None and compare(x, v)


def _too_many(max_groups: int) -> InvalidRequest:
    return InvalidRequest(
        f"the answer would have more than {max_groups} groups; group by fewer dimensions or filter"
    )


class CubeCells:
    """A kept cube's cells held in Python, fetched once when it is made (they cannot
    change), as one tuple per column.

    A question's groups are then the cells that pass its filters, added up by its
    dimensions in Python: what the statement over the cells (``compute_groups``) computes,
    without the statement, whose fixed cost in DuckDB (about 1 ms for any GROUP BY, over a
    few hundred cells) is most of a question's time there. Only where Python gives
    provably the same groups (``answers``): each grouped or filtered dimension's column
    compares and groups in Python as in DuckDB (``_kind``), and each filter's values
    compare with it as DuckDB compares them bound (``_matches``). Counts and integer sums
    are exact (Python ints), sums of doubles are added in the cells' order (as the cube
    and a scan already differ, up to the order of additions), minima and maxima are the
    cells' least and greatest, and a figure with no non-NULL value is None, as SQL's SUM,
    MIN and MAX over none are NULL.
    """

    def __init__(
        self,
        n: tuple[int, ...],
        dimensions: dict[str, tuple[Any, ...]],
        kinds: dict[str, str | None],
        figures: dict[tuple[str, str], tuple[Any, ...]],
    ) -> None:
        self._n = n
        self._dimensions = dimensions
        self._kinds = kinds
        self._figures = figures
        self._counted: dict[tuple[str, ...], list[tuple[tuple[Any, ...], int]]] = {}

    @classmethod
    def of(
        cls,
        cube: Cube,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[tuple[Any, ...]],
    ) -> CubeCells | None:
        """The cells ``rows`` of ``cube``'s table, whose columns are ``columns`` (name,
        DuckDB type); None when a measure's figures are not plain integers or doubles
        (a DECIMAL sum, say), which Python would not add up as DuckDB does."""
        at = {name: i for i, (name, _) in enumerate(columns)}
        data = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
        figures: dict[tuple[str, str], tuple[Any, ...]] = {}
        for i, m in enumerate(cube.measures):
            for fn, prefix in _CUBE_FIGURES.items():
                j = at[f"{prefix}{i}"]
                type_, values = columns[j][1], data[j]
                if type_ not in _INTEGER_TYPES and (
                    type_ != "DOUBLE" or any(v is not None and v != v for v in values)
                ):
                    return None
                figures[(fn, m.name)] = values
        dimensions = {d: data[at[d]] for d in cube.dimensions}
        kinds = {d: _kind(columns[at[d]][1], dimensions[d]) for d in cube.dimensions}
        return cls(data[at[_N]], dimensions, kinds, figures)

    def __len__(self) -> int:
        return len(self._n)

    def answers(self, dimensions: Sequence[str], filters: Sequence[Filter]) -> bool:
        """Whether the groups by ``dimensions`` of the cells passing ``filters`` are, in
        Python, exactly what DuckDB makes of them."""
        return all(self._kinds.get(d) is not None for d in dimensions) and all(
            _matches(self._kinds.get(f.dimension), f) for f in filters
        )

    def _passing(self, filters: Sequence[Filter]) -> Sequence[int]:
        at: Sequence[int] = range(len(self._n))
        for f in filters:
            column, passes = self._dimensions[f.dimension], _predicate(f)
            at = [i for i in at if passes(column[i])]
        return at

    def _split(
        self, dimensions: Sequence[str], at: Sequence[int]
    ) -> dict[tuple[Any, ...], list[int]]:
        """The cells ``at`` by their values of ``dimensions`` (NULL a value of its own, as
        in a GROUP BY); one group of them all for no dimension, none for no cell."""
        if not dimensions:
            return {(): list(at)} if at else {}
        columns = [self._dimensions[d] for d in dimensions]
        split: dict[tuple[Any, ...], list[int]] = {}
        for i in at:
            key = tuple(c[i] for c in columns)
            members = split.get(key)
            if members is None:
                split[key] = [i]
            else:
                members.append(i)
        return split

    def groups(self, query: Query, stats: Sequence[Statistic], max_groups: int) -> list[Group]:
        """The groups of ``query`` (``answers`` said yes), unsorted; more than
        ``max_groups`` is refused as the statement refuses it."""
        split = self._split(query.dimensions, self._passing(query.filters))
        if len(split) > max_groups:
            raise _too_many(max_groups)
        wanted = [(s.key, s.fn, self._figures[(s.fn, s.measure)]) for s in stats]
        n = self._n
        groups = []
        for key, members in split.items():
            values: dict[str, float | None] = {}
            for name, fn, column in wanted:
                if fn == "count":
                    values[name] = float(sum(column[i] for i in members))
                    continue
                present = [v for v in (column[i] for i in members) if v is not None]
                figure = (
                    None
                    if not present
                    else (sum if fn == "sum" else min if fn == "min" else max)(present)
                )
                values[name] = None if figure is None else float(figure)
            groups.append(
                Group(
                    key=tuple(_plain(v) for v in key),
                    n=int(sum(n[i] for i in members)),
                    values=values,
                )
            )
        return groups

    def counted(self, keys: Sequence[str], filters: Sequence[Filter]) -> list[tuple[Any, ...]]:
        """The cells' rows counted per combination of ``keys`` (kept per ``keys``, as
        ``Executor.counted`` keeps its tables), each with whether it meets each of
        ``filters``: a row of ``_isolating_from_cells``' table."""
        wanted = tuple(keys)
        counts = self._counted.get(wanted)
        if counts is None:
            n = self._n
            split = self._split(wanted, range(len(n)))
            counts = [(key, sum(n[i] for i in members)) for key, members in split.items()]
            if len(self._counted) < COUNTED_IN_PYTHON:
                self._counted[wanted] = counts  # the same list for the same keys, any thread
        if not filters:
            return [(*key, count) for key, count in counts]
        marks = [
            [passes(key[j]) for key, _ in counts]
            for j, passes in ((wanted.index(f.dimension), _predicate(f)) for f in filters)
        ]
        return [(*key, count, *met) for (key, count), *met in zip(counts, *marks, strict=True)]


@dataclass(frozen=True)
class KeptCube:
    """A cube an executor keeps: the table holding it, and its cells in Python when they
    are few enough (``CELLS_IN_PYTHON``) and plain enough to hold (``CubeCells.of``)."""

    table: str
    cells: CubeCells | None = None


def _bind(filters: Sequence[Filter]) -> tuple[dict[str, Value], list[tuple[str, ...]]]:
    """Every value of ``filters`` as a bound parameter ``p0``, ``p1``, ... in order, and
    the names of each filter's values."""
    params: dict[str, Value] = {}
    names: list[tuple[str, ...]] = []
    for f in filters:
        mine = tuple(f"p{len(params) + i}" for i in range(len(f.values)))
        params.update(zip(mine, f.values, strict=True))
        names.append(mine)
    return params, names


def _condition(f: Filter, names: Sequence[str], executor: Executor) -> exp.Expression:
    """``f`` as a condition on its bound parameters ``names``."""
    return filter_expression(f, [executor.placeholder(n) for n in names])


def _shape(filters: Sequence[Filter]) -> tuple[tuple[str, str, int], ...]:
    """What of ``filters`` a statement's text depends on (their values are bound)."""
    return tuple((f.dimension, f.op, len(f.values)) for f in filters)


class _Statements:
    """Statement texts the engine generated, by everything the text depends on (least
    recently used go first)."""

    def __init__(self, keep: int = 512) -> None:
        self._texts: OrderedDict[Hashable, str] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def run(
        self,
        executor: Executor,
        key: tuple[Hashable, ...],
        build: Callable[[], exp.Select],
        params: dict[str, Value],
    ) -> list[tuple[Any, ...]]:
        """Run the statement ``build`` makes for ``key`` on ``executor`` with ``params``,
        built and printed only the first time."""
        full = (executor.plan_key, *key)
        with self._lock:
            sql = self._texts.get(full)
            if sql is not None:
                self._texts.move_to_end(full)
        if sql is None:
            sql = executor.text(build(), params)
            with self._lock:
                self._texts[full] = sql
                while len(self._texts) > self._keep:
                    self._texts.popitem(last=False)
        return executor.execute(sql, params)


_STATEMENTS = _Statements()


def compute_groups(query: Query, rules: ComputeRules, executor: Executor) -> list[Group]:
    """The exact per-group figures of ``query`` (already checked against ``rules``).

    Read from the executor's ``Cube`` of the rules when it keeps one and the cube answers
    the question (``Cube.answers``), otherwise computed over the rows: the same groups
    and figures either way (sums of floats up to the order they are added in).

    Groups are sorted by key, so the same data gives the same list. More than
    ``rules.max_groups`` groups is an ``InvalidRequest`` (narrow the question).
    """
    stats = statistics(query.aggregates)
    cube = Cube.of(rules)
    kept = executor.cube(cube) if cube.answers(query, stats) else None
    if (
        kept is not None
        and kept.cells is not None
        and kept.cells.answers(query.dimensions, query.filters)
    ):
        groups = kept.cells.groups(query, stats, rules.max_groups)
    else:
        groups = _groups_of_statement(
            query, stats, rules, executor, cube, None if kept is None else kept.table
        )
    groups.sort(key=lambda g: [_order(v) for v in g.key])
    return groups


def _order(v: Value | None) -> tuple[bool, str, bool, Value]:
    """Where a key's value sorts: by type, NULL and NaN last (a NaN, unequal to every
    value, would leave the order to the order the groups came in)."""
    nan = isinstance(v, float) and v != v
    return (v is None, str(type(v)), nan, 0 if v is None or nan else v)


def _groups_of_statement(
    query: Query,
    stats: Sequence[Statistic],
    rules: ComputeRules,
    executor: Executor,
    cube: Cube,
    cells: str | None,
) -> list[Group]:
    """``compute_groups`` by a statement: over ``cube``'s table ``cells``, or the rows."""
    params, names = _bind(query.filters)

    def build() -> exp.Select:
        columns: list[exp.Expr] = [
            exp.alias_(exp.column(d), f"tds_d{i}") for i, d in enumerate(query.dimensions)
        ]
        if cells is None:
            columns.append(exp.alias_(exp.Count(this=exp.Star()), _N))
            columns += [
                exp.alias_(_statistic(s, rules, executor), f"tds_s{i}") for i, s in enumerate(stats)
            ]
            select = exp.select(*columns).from_(executor.source(), copy=False)
        else:
            columns.append(exp.alias_(exp.Sum(this=exp.column(_N)), _N))
            columns += [exp.alias_(cube.figure(s), f"tds_s{i}") for i, s in enumerate(stats)]
            select = exp.select(*columns).from_(cells)
        for f, mine in zip(query.filters, names, strict=True):
            select = select.where(_condition(f, mine, executor), copy=False)
        if query.dimensions:
            select = select.group_by(*(exp.column(d) for d in query.dimensions), copy=False)
        return select.limit(rules.max_groups + 1, copy=False)

    # The rules give the clamping bounds and max_groups (and the cube's columns).
    key = ("groups", query.dimensions, _shape(query.filters), tuple(stats), rules, cells)
    rows = _STATEMENTS.run(executor, key, build, params)
    if len(rows) > rules.max_groups:
        raise _too_many(rules.max_groups)
    nd = len(query.dimensions)
    groups = []
    for row in rows:
        # No GROUP BY over an empty population still gives one row: COUNT(*) 0 over the
        # rows, a NULL sum over the cells.
        if not row[nd]:
            continue
        values = {
            s.key: None if v is None else float(v)
            for s, v in zip(stats, row[nd + 1 :], strict=True)
        }
        groups.append(Group(key=tuple(_plain(v) for v in row[:nd]), n=int(row[nd]), values=values))
    return groups


def _plain(v: Any) -> Value | None:
    """A group key as JSON can carry it (database types become str, int or float)."""
    if v is None or (isinstance(v, (str, int, float)) and not isinstance(v, bool)):
        return v
    if isinstance(v, bool):
        return int(v)
    try:
        f = float(v)  # Decimal
    except (TypeError, ValueError):
        return str(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def isolating_groups(
    dimensions: Sequence[str],
    filters: Sequence[Filter],
    executor: Executor,
    *,
    k: int,
    cube: KeptCube | None = None,
) -> tuple[int, ...]:
    """For each filter, in how many groups a cell could be isolated by differencing on it.

    For filter ``i``: among rows matching every *other* filter, each group by
    ``dimensions`` splits into cells by the values of filter ``i``'s dimension. A cell of
    ``n`` rows, ``0 < n < k``, whose group has at least ``k`` rows besides it can be
    recovered as the difference of two answers that are both shown (the group with the
    cell and without it). A group holds such a cell exactly when its *smallest* cell is
    one (a smaller cell leaves more rows besides it), so each group needs only its total
    and its smallest cell: two plain aggregations, no window.

    One statement, one scan of the source (on MariaDB one per filter, see below): the rows
    are counted once per combination of the query's dimensions and every filtered
    dimension (``tds_cells``). A filter only reads its own dimension, so all rows of such
    a combination match or fail each filter alike, and the rows matching the other
    filters, split by filter ``i``'s dimension, are sums of those counts.
    """
    if not filters:
        return ()
    keys = tuple(dict.fromkeys((*dimensions, *(f.dimension for f in filters))))
    if cube is not None and cube.cells is not None and cube.cells.answers(keys, filters):
        # The counts and marks of ``_isolating_from_cells``, made in Python from the cube.
        rows = cube.cells.counted(keys, filters if len(filters) > 1 else ())
        return _isolated(
            rows, keys, dimensions, filters, len(filters) if len(filters) > 1 else 0, k
        )
    # A lone filter's check reads no condition (there are no others), so binds nothing.
    params, names = _bind(filters) if len(filters) > 1 else ({}, [])
    counted = executor.counted(keys)
    if counted is not None:
        found = _isolating_from_cells(dimensions, filters, names, params, executor, k, counted)
        if found is not None:
            return found
    key = ("isolation", tuple(dimensions), _shape(filters), k, counted)
    [row] = _STATEMENTS.run(
        executor,
        key,
        lambda: _isolation(dimensions, filters, names, executor, k=k, counted=counted),
        params,
    )
    return tuple(int(c) for c in row)


CELLS_SUMMED_HERE = 4096
"""Counted cells up to which ``isolating_groups`` sums them here rather than in SQL."""


def _isolating_from_cells(
    dimensions: Sequence[str],
    filters: Sequence[Filter],
    names: Sequence[Sequence[str]],
    params: dict[str, Value],
    executor: Executor,
    k: int,
    counted: str,
) -> tuple[int, ...] | None:
    """``isolating_groups`` over a small table of counted cells: the engine marks each
    cell with whether it matches each filter, and the sums, minima and counts of the
    check (``_isolation``) are made here. None when the table has more than
    ``CELLS_SUMMED_HERE`` cells (the statement does it all then).

    The statement of ``_isolation`` nests a subquery chain per filter over a shared CTE:
    planning it cost DuckDB about 4-5 ms of CPU a question, for a table of a few hundred
    cells, as much as running it. Here the engine plans one plain projection, and still
    evaluates every condition itself, with the values bound (no comparison of a value is
    made in Python: only additions and comparisons of counts). A condition that is not
    true (false, or NULL, as in a WHERE) leaves the cell out, as the statement does.
    """
    keys = list(dict.fromkeys((*dimensions, *(f.dimension for f in filters))))

    def build() -> exp.Select:
        # A lone filter has no other filter to match (``names`` is empty then).
        marks = [
            exp.alias_(_condition(f, mine, executor), f"tds_m{j}")
            for j, (f, mine) in enumerate(zip(filters, names, strict=True) if names else ())
        ]
        select = exp.select(*(exp.column(d) for d in keys), exp.column(_N), *marks)
        return select.from_(counted).limit(CELLS_SUMMED_HERE + 1, copy=False)

    key = ("isolation-cells", tuple(keys), _shape(filters), counted, CELLS_SUMMED_HERE)
    rows = _STATEMENTS.run(executor, key, build, params)
    if len(rows) > CELLS_SUMMED_HERE:
        return None
    return _isolated(rows, keys, dimensions, filters, len(names), k)


def _isolated(
    rows: Sequence[tuple[Any, ...]],
    keys: Sequence[str],
    dimensions: Sequence[str],
    filters: Sequence[Filter],
    nf: int,
    k: int,
) -> tuple[int, ...]:
    """``isolating_groups`` from counted cells ``rows``: each one's values of ``keys``,
    its rows, and (``nf`` of them, none for a lone filter) whether it meets each filter."""
    nk = len(keys)
    # How many of its conditions each cell meets: it matches every filter but i when it
    # meets all of them, or all but i's own.
    met = [sum(1 for m in row[nk + 1 :] if m is True) for row in rows]
    group_of = _picker([keys.index(d) for d in dict.fromkeys(dimensions)])
    found = []
    for i, f in enumerate(filters):
        # Filter i's split: the query's dimensions, then its own.
        cell_of = _picker([keys.index(d) for d in dict.fromkeys((*dimensions, f.dimension))])
        matching = (
            rows
            if nf == 0
            else [
                row
                for row, n in zip(rows, met, strict=True)
                if n == nf or (n == nf - 1 and row[nk + 1 + i] is not True)
            ]
        )
        cells: dict[tuple[Any, ...], list[Any]] = {}  # cell -> [its group, its rows]
        for row in matching:
            at = cell_of(row)
            cell = cells.get(at)
            if cell is None:
                cells[at] = [group_of(row), int(row[nk])]
            else:
                cell[1] += int(row[nk])
        # Per group of the query's dimensions: its total and its smallest cell.
        groups: dict[tuple[Any, ...], tuple[int, int]] = {}
        for group, n in cells.values():
            total, smallest = groups.get(group, (0, n))
            groups[group] = (total + n, min(smallest, n))
        found.append(
            sum(1 for total, smallest in groups.values() if smallest < k <= total - smallest)
        )
    return tuple(found)


def _picker(at: Sequence[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """The values at positions ``at`` of a row, as a tuple (empty for none)."""
    if not at:
        return lambda row: ()
    if len(at) == 1:
        only = at[0]
        return lambda row: (row[only],)
    return operator.itemgetter(*at)


def _isolation(
    dimensions: Sequence[str],
    filters: Sequence[Filter],
    names: Sequence[Sequence[str]],
    executor: Executor,
    *,
    k: int,
    counted: str | None,
) -> exp.Select:
    """The statement of ``isolating_groups`` (``names``: each filter's bound parameters,
    none for a lone filter; ``counted``: the executor's table of the cells' counts)."""
    conditions = (
        [_condition(f, mine, executor) for f, mine in zip(filters, names, strict=True)]
        if names
        else []
    )
    keys = list(dict.fromkeys((*dimensions, *(f.dimension for f in filters))))
    n, k_ = exp.column(_N), exp.Literal.number(k)
    # DuckDB and PostgreSQL count the rows once (a materialised CTE) and every filter's
    # check sums those counts. MariaDB cannot be told to keep a CTE and evaluates it again
    # for each reference, unpruned; there each filter's check counts the rows matching
    # the other filters itself (one scan per filter, still one statement). Measured on
    # 200,000 rows with 2 filters: 246 ms through a shared CTE, 172 ms for one statement
    # per filter, and this form as fast as the latter.
    shared = executor.dialect != "mysql"
    if counted is not None:  # counted once for the table, read here
        cells = exp.select(*(exp.column(d) for d in keys), exp.column(_N)).from_(counted)
    else:
        cells = exp.select(
            *(exp.column(d) for d in keys), exp.alias_(exp.Count(this=exp.Star()), _N)
        ).from_(executor.source(), copy=False)
        cells = cells.group_by(*(exp.column(d) for d in keys), copy=False)
    counts = []
    for i, f in enumerate(filters):
        split = list(dict.fromkeys((*dimensions, f.dimension)))
        if len(filters) == 1:
            part = cells.subquery("tds_split")  # the cells are this filter's split
        else:
            if shared:
                regroup = exp.select(
                    *(exp.column(d) for d in split), exp.alias_(exp.Sum(this=n.copy()), _N)
                ).from_("tds_cells", copy=False)
            else:
                regroup = exp.select(
                    *(exp.column(d) for d in split), exp.alias_(exp.Count(this=exp.Star()), _N)
                ).from_(executor.source(), copy=False)
            for j, cond in enumerate(conditions):
                if j != i:
                    regroup = regroup.where(cond.copy(), copy=False)
            regroup = regroup.group_by(*(exp.column(d) for d in split), copy=False)
            part = regroup.subquery("tds_split")
        sized = exp.select(
            exp.alias_(exp.Sum(this=n.copy()), "tds_total"),
            exp.alias_(exp.Min(this=n.copy()), "tds_min"),
        ).from_(part, copy=False)
        if dimensions:
            sized = sized.group_by(*(exp.column(d) for d in dimensions), copy=False)
        smallest = exp.column("tds_min")
        rest = exp.Sub(this=exp.column("tds_total"), expression=smallest.copy())
        count = (
            exp.select(exp.Count(this=exp.Star()))
            .from_(sized.subquery("tds_groups", copy=False), copy=False)
            .where(exp.LT(this=smallest, expression=k_.copy()), copy=False)
            .where(exp.GTE(this=rest, expression=k_.copy()), copy=False)
        )
        counts.append(exp.alias_(count.subquery(), f"tds_i{i}"))
    select = exp.select(*counts)
    if len(filters) > 1 and shared:
        # Counted once, read by every filter's check: without MATERIALIZED, DuckDB and
        # PostgreSQL may scan the source again for each reference.
        select = select.with_("tds_cells", as_=cells, materialized=True, copy=False)
    return select
