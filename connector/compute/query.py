"""The consumer's question: SQL or JSON in, one canonical, validated ``Query`` out.

SQL is parsed with sqlglot (a real parser) and then *rebuilt* from a whitelist: the only
shape accepted is ::

    SELECT <declared dimensions>, <allowed aggregates of declared measures>
    FROM product
    [WHERE <dimension> <op> <literal> [AND ...]]
    [GROUP BY <the same dimensions>]

with ``op`` one of ``= != <> < <= > >= IN NOT IN``. Everything else is refused with the
reason: ``SELECT *``, a raw measure or an undeclared column in the output, a measure in
WHERE or GROUP BY, joins, subqueries and CTEs, window functions, table functions, any table
but ``product``, a second statement, HAVING / ORDER BY / LIMIT / DISTINCT / locking clauses,
calls other than the aggregates, OR / NOT / BETWEEN / LIKE, text that is too long or holds a
NUL byte. Nothing of the consumer's text is ever executed: the engine builds its own SQL
from the ``Query``.

The JSON form says the same thing::

    {"dimensions": ["district"],
     "filters": [{"dimension": "year", "op": "=", "value": 2026}],
     "aggregates": [{"fn": "count"}, {"fn": "avg", "measure": "cost"},
                    {"fn": "quantile", "measure": "cost", "q": 0.5}]}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from connector.compute.rules import ComputeRules
from connector.errors import InvalidRequest

__all__ = [
    "MAX_QUERY_CHARS",
    "OPS",
    "Aggregate",
    "Filter",
    "Query",
    "parse_query",
]

MAX_QUERY_CHARS = 4096
MAX_FILTERS = 16
MAX_IN_VALUES = 100
MAX_AGGREGATES = 32

OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in")
_ORDERING = frozenset({"<", "<=", ">", ">="})
_CMP: dict[type[exp.Expression], str] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_SIMPLE_AGGS: dict[type[exp.Expression], str] = {
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
}
_QUANTILE_NAMES = frozenset({"quantile", "quantile_cont"})

# Select clauses and what a user calls them, for the refusal message.
_CLAUSES = {
    "with": "WITH (common table expressions)",
    "with_": "WITH (common table expressions)",
    "joins": "a join",
    "laterals": "LATERAL",
    "having": "HAVING",
    "order": "ORDER BY",
    "limit": "LIMIT",
    "offset": "OFFSET",
    "distinct": "DISTINCT",
    "windows": "a window function",
    "qualify": "QUALIFY (window functions)",
    "locks": "a locking clause (FOR UPDATE / FOR SHARE)",
    "into": "SELECT INTO",
    "sample": "TABLESAMPLE",
    "pivots": "PIVOT",
}
_ALLOWED_CLAUSES = frozenset({"expressions", "from", "from_", "where", "group"})

Value = str | int | float


@dataclass(frozen=True)
class Filter:
    """``dimension op values``: one conjunct of the WHERE clause."""

    dimension: str
    op: str
    values: tuple[Value, ...]
    """One value except for ``in`` / ``not in`` (sorted, without repeats)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        if self.op in ("in", "not in"):
            return {"dimension": self.dimension, "op": self.op, "values": list(self.values)}
        return {"dimension": self.dimension, "op": self.op, "value": self.values[0]}


@dataclass(frozen=True)
class Aggregate:
    """One aggregate in the answer: ``count(*)`` has no measure."""

    fn: str
    measure: str | None = None
    q: float | None = None

    @property
    def column(self) -> str:
        """Its column name in the answer: ``count``, ``avg_cost``, ``quantile_cost_0.5``."""
        if self.measure is None:
            return "count"
        if self.q is not None:
            return f"quantile_{self.measure}_{self.q!r}"
        return f"{self.fn}_{self.measure}"

    def label(self) -> str:
        """How the usage policy input names it: ``count``, ``avg(cost)``, ``quantile(cost,0.5)``."""
        if self.measure is None:
            return "count"
        if self.q is not None:
            return f"quantile({self.measure},{self.q!r})"
        return f"{self.fn}({self.measure})"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"fn": self.fn}
        if self.measure is not None:
            out["measure"] = self.measure
        if self.q is not None:
            out["q"] = self.q
        return out


@dataclass(frozen=True)
class Query:
    """A validated question: the only thing the engine ever runs (in its own SQL)."""

    dimensions: tuple[str, ...]
    filters: tuple[Filter, ...]
    aggregates: tuple[Aggregate, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The answer's columns: dimensions, then aggregates."""
        return self.dimensions + tuple(a.column for a in self.aggregates)

    @property
    def measures(self) -> tuple[str, ...]:
        """The measures aggregated, in order of first use."""
        return tuple(dict.fromkeys(a.measure for a in self.aggregates if a.measure is not None))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``parse_query`` reads it back)."""
        return {
            "dimensions": list(self.dimensions),
            "filters": [f.to_dict() for f in self.filters],
            "aggregates": [a.to_dict() for a in self.aggregates],
        }

    def expression(self) -> exp.Select:
        """The query as a sqlglot tree over table ``product`` (literals inline).

        Built node by node, not with sqlglot's builder (``select().from_().where()``),
        which parses the table's name and copies the tree at each step (about half of
        the canonical text's cost); the tree is the one the builder makes, conjuncts
        nested as its ``where`` nests them, so the text, which receipts carry and both
        sides compare, is unchanged.
        """
        args: dict[str, Any] = {
            "expressions": [exp.column(d) for d in self.dimensions]
            + [
                aggregate_expression(a, exp.column(a.measure) if a.measure else None)
                for a in self.aggregates
            ],
            "from_": exp.From(this=exp.Table(this=exp.to_identifier("product"))),
        }
        condition: exp.Expression | None = None
        for f in self.filters:
            one = filter_expression(f, [literal(v) for v in f.values])
            if condition is None:
                condition = one
            else:
                left = exp.Paren(this=condition) if isinstance(condition, exp.And) else condition
                condition = exp.And(this=left, expression=one)
        if condition is not None:
            args["where"] = exp.Where(this=condition)
        if self.dimensions:
            args["group"] = exp.Group(expressions=[exp.column(d) for d in self.dimensions])
        return exp.Select(**args)

    def canonical_text(self) -> str:
        """Deterministic SQL text of the query: equal questions give equal text."""
        return self._canonical_text

    @cached_property
    def _canonical_text(self) -> str:
        # Made once: the receipt, its hash and the consumer's check each need it, and
        # sqlglot takes about 0.3 ms to build and print the tree.
        return self.expression().sql(copy=False)  # the tree is ours, made for this

    def sha256(self) -> str:
        """Hex SHA-256 of ``canonical_text()`` (UTF-8)."""
        return hashlib.sha256(self.canonical_text().encode()).hexdigest()

    def shape(self, rules: ComputeRules) -> dict[str, Any]:
        """What the usage policy sees of the query (``action: compute.run``)."""
        return {
            "dimensions": list(self.dimensions),
            "filtered": sorted({f.dimension for f in self.filters}),
            "measures": list(self.measures),
            "aggregates": [a.label() for a in self.aggregates],
            "epsilon": rules.privacy.epsilon_per_query if rules.privacy else 0.0,
        }


def literal(value: Value) -> exp.Expression:
    """A SQL literal for a filter value (strings escaped by sqlglot's generator)."""
    if isinstance(value, str):
        return exp.Literal.string(value)
    if value < 0:
        return exp.Neg(this=exp.Literal.number(repr(-value)))
    return exp.Literal.number(repr(value))


def filter_expression(f: Filter, values: Sequence[exp.Expression]) -> exp.Expression:
    """``f`` as a condition, with ``values`` (literals or placeholders) standing for its values."""
    col = exp.column(f.dimension)
    if f.op in ("in", "not in"):
        cond: exp.Expression = exp.In(this=col, expressions=list(values))
        return exp.Not(this=cond) if f.op == "not in" else cond
    cls = next(c for c, o in _CMP.items() if o == f.op)
    return cls(this=col, expression=values[0])


def aggregate_expression(a: Aggregate, arg: exp.Expression | None) -> exp.Expression:
    """``a`` applied to ``arg`` (the measure's column, or a clamped form of it)."""
    if a.fn == "count":
        return exp.Count(this=arg if arg is not None else exp.Star())
    if a.fn == "quantile":
        assert a.q is not None and arg is not None
        return exp.Anonymous(this="QUANTILE_CONT", expressions=[arg, literal(a.q)])
    return next(c for c, n in _SIMPLE_AGGS.items() if n == a.fn)(this=arg)


def parse_query(question: str | Mapping[str, Any], rules: ComputeRules) -> Query:
    """Parse SQL text or the JSON form and check it against ``rules``.

    ``InvalidRequest`` says what was refused and why; nothing is run.
    """
    if isinstance(question, str):
        return _parsed_sql(question, rules)
    query = _from_json(question)
    return _checked(query, rules, list(query.dimensions))


@lru_cache(maxsize=256)
def _parsed_sql(text: str, rules: ComputeRules) -> Query:
    """A question's SQL text checked against ``rules``, kept for the same text under equal
    rules: a question asked again (a dashboard's) is not parsed, checked and printed again
    on either side (about 0.8 ms a side). A refusal is raised, never kept; texts are at
    most ``MAX_QUERY_CHARS`` long."""
    query, group = _from_sql(text)
    return _checked(query, rules, group)


# -- SQL ----------------------------------------------------------------------------------


def _refuse(what: str) -> InvalidRequest:
    return InvalidRequest(f"query refused: {what}")


def _from_sql(text: str) -> tuple[Query, list[str]]:
    """The query as written and its GROUP BY (compared once the names are checked)."""
    if len(text) > MAX_QUERY_CHARS:
        raise _refuse(f"the text is longer than {MAX_QUERY_CHARS} characters")
    if "\x00" in text:
        raise _refuse("the text holds a NUL byte")
    try:
        statements = [s for s in sqlglot.parse(text) if s is not None]
    except (SqlglotError, RecursionError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _refuse(f"not valid SQL ({first})") from None
    if len(statements) != 1:
        raise _refuse(f"one statement only (found {len(statements)})")
    stmt = statements[0]
    if not isinstance(stmt, exp.Select):
        raise _refuse(f"only SELECT is allowed (found {stmt.key.upper()})")
    for key, value in stmt.args.items():
        if value and key not in _ALLOWED_CLAUSES:
            raise _refuse(f"{_CLAUSES.get(key, key.upper())} is not allowed")
    _check_from(stmt.args.get("from_") or stmt.args.get("from"))
    dims: list[str] = []
    aggs: list[Aggregate] = []
    for item in stmt.expressions:
        if isinstance(item, exp.Column):
            dims.append(_column(item))
        else:
            aggs.append(_aggregate(item))
    filters = _where(stmt.args.get("where"))
    group = _group(stmt.args.get("group"))
    return Query(dimensions=tuple(dims), filters=tuple(filters), aggregates=tuple(aggs)), group


def _check_from(node: Any) -> None:
    if not isinstance(node, exp.From):
        raise _refuse("FROM product is required")
    table = node.this
    if isinstance(table, exp.Subquery) or table.find(exp.Select):
        raise _refuse("subqueries are not allowed")
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        raise _refuse("table functions are not allowed; ask FROM product")
    if table.name != "product" or table.args.get("db") or table.args.get("catalog"):
        raise _refuse(f"the only table is product (found {table.sql()})")
    if any(v for k, v in table.args.items() if k != "this"):
        raise _refuse("FROM product takes no alias, hints or sampling")


def _column(node: exp.Expression) -> str:
    if not isinstance(node, exp.Column) or not isinstance(node.this, exp.Identifier):
        raise _refuse(f"{_show(node)} is not allowed here; name a declared column")
    if node.table not in ("", "product") or node.args.get("db") or node.args.get("catalog"):
        raise _refuse(f"{node.sql()}: the only table is product")
    ident = node.this
    return str(ident.this) if ident.quoted else str(ident.this).lower()


def _show(node: exp.Expression) -> str:
    text = node.sql()
    return text if len(text) <= 80 else text[:77] + "..."


def _aggregate(node: exp.Expression) -> Aggregate:
    if isinstance(node, exp.Star):
        raise _refuse("SELECT * is not allowed; name dimensions and aggregates")
    if isinstance(node, exp.Alias):
        raise _refuse("aliases are not supported; the answer names its columns")
    if isinstance(node, exp.Window):
        raise _refuse("window functions are not allowed")
    if isinstance(node, exp.Filter):
        raise _refuse("FILTER on an aggregate is not allowed; use WHERE")
    if isinstance(node, exp.Subquery) or node.find(exp.Select):
        raise _refuse("subqueries are not allowed")
    if isinstance(node, exp.Count):
        if isinstance(node.this, exp.Star):
            return Aggregate("count")
        if isinstance(node.this, exp.Distinct):
            raise _refuse("count(DISTINCT ...) is not allowed")
        return Aggregate("count", _measure_arg(node.this, node))
    for cls, fn in _SIMPLE_AGGS.items():
        if type(node) is cls:
            if node.expressions:
                raise _refuse(f"{_show(node)}: {fn} takes one measure")
            return Aggregate(fn, _measure_arg(node.this, node))
    if isinstance(node, exp.Median):
        return Aggregate("quantile", _measure_arg(node.this, node), 0.5)
    if isinstance(node, exp.Quantile):
        return Aggregate(
            "quantile", _measure_arg(node.this, node), _level(node.args.get("quantile"))
        )
    if isinstance(node, exp.Anonymous) and str(node.this).lower() in _QUANTILE_NAMES:
        if len(node.expressions) != 2:
            raise _refuse(f"{_show(node)}: quantile takes a measure and a level")
        arg, level = node.expressions
        return Aggregate("quantile", _measure_arg(arg, node), _level(level))
    if isinstance(node, exp.WithinGroup) and isinstance(node.this, exp.PercentileCont):
        order = node.expression
        if not isinstance(order, exp.Order) or len(order.expressions) != 1:
            raise _refuse(f"{_show(node)}: order by one measure")
        ordered = order.expressions[0]
        if ordered.args.get("desc"):
            raise _refuse(f"{_show(node)}: order ascending")
        return Aggregate("quantile", _measure_arg(ordered.this, node), _level(node.this.this))
    if isinstance(node, exp.Func):
        raise _refuse(f"{_show(node)}: only count, sum, avg, min, max and quantiles are allowed")
    raise _refuse(f"{_show(node)} is not allowed; select declared dimensions and aggregates")


def _measure_arg(arg: Any, node: exp.Expression) -> str:
    if not isinstance(arg, exp.Column):
        raise _refuse(f"{_show(node)}: aggregate a bare measure column")
    return _column(arg)


def _number(node: Any) -> int | float:
    if isinstance(node, exp.Neg):
        return -_number(node.this)
    if isinstance(node, exp.Literal) and not node.is_string:
        text = str(node.this)
        try:
            value: int | float = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise _refuse(f"{text!r} is not a number") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _refuse(f"{text!r} is not a finite number")
        return value
    raise _refuse(
        f"{_show(node) if isinstance(node, exp.Expression) else node!r}: expected a number"
    )


def _level(node: Any) -> float:
    return float(_number(node))


def _value(node: exp.Expression) -> Value:
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    if isinstance(node, (exp.Literal, exp.Neg)):
        return _number(node)
    raise _refuse(f"{_show(node)}: filters compare with literal values only")


def _conjuncts(node: exp.Expression) -> list[exp.Expression]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _where(node: Any) -> list[Filter]:
    if node is None:
        return []
    out: list[Filter] = []
    for c in _conjuncts(node.this):
        if isinstance(c, exp.Or):
            raise _refuse("OR is not supported in WHERE; use IN (...)")
        if isinstance(c, exp.Between):
            raise _refuse("BETWEEN is not supported; use >= and <=")
        negated = isinstance(c, exp.Not)
        inner = c.this if negated else c
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, exp.In):
            if inner.args.get("query") or inner.args.get("unnest") or inner.find(exp.Select):
                raise _refuse("subqueries are not allowed")
            values = tuple(_value(v) for v in inner.expressions)
            out.append(Filter(_column(inner.this), "not in" if negated else "in", values))
            continue
        if negated or type(inner) not in _CMP:
            raise _refuse(
                f"{_show(c)}: WHERE takes only comparisons (= != < <= > >= IN NOT IN)"
                " of a dimension with literal values, joined by AND"
            )
        op = _CMP[type(inner)]
        left, right = inner.this, inner.expression
        if isinstance(left, exp.Column):
            out.append(Filter(_column(left), op, (_value(right),)))
        elif isinstance(right, exp.Column):
            out.append(Filter(_column(right), _FLIP[op], (_value(left),)))
        else:
            raise _refuse(f"{_show(c)}: compare a dimension with a literal value")
    return out


def _group(node: Any) -> list[str]:
    if node is None:
        return []
    extra = [k for k, v in node.args.items() if v and k != "expressions"]
    if extra:
        raise _refuse("GROUP BY takes dimension names only (no ROLLUP, CUBE, GROUPING SETS)")
    names = []
    for e in node.expressions:
        if not isinstance(e, exp.Column):
            raise _refuse(f"GROUP BY {_show(e)}: name the dimension")
        names.append(_column(e))
    return names


# -- JSON ---------------------------------------------------------------------------------


def _only(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InvalidRequest(f"{where}.{unknown[0]} is not a known field")


def _list(d: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise InvalidRequest(f"{where}.{key} must be a list")
    return v


def _json_value(v: Any, where: str) -> Value:
    if isinstance(v, str) or (type(v) in (int, float) and math.isfinite(v)):
        return v  # type: ignore[no-any-return]
    raise InvalidRequest(f"{where} must be a string or a finite number")


def _from_json(doc: Mapping[str, Any]) -> Query:
    if not isinstance(doc, Mapping):
        raise InvalidRequest("query must be SQL text or a JSON object")
    _only(doc, {"dimensions", "filters", "aggregates"}, "query")
    dims = _list(doc, "dimensions", "query")
    for i, d in enumerate(dims):
        if not isinstance(d, str):
            raise InvalidRequest(f"query.dimensions[{i}] must be a string")
    filters = []
    for i, f in enumerate(_list(doc, "filters", "query")):
        where = f"query.filters[{i}]"
        if not isinstance(f, Mapping):
            raise InvalidRequest(f"{where} must be an object")
        op = f.get("op")
        many = op in ("in", "not in")
        _only(f, {"dimension", "op", "values" if many else "value"}, where)
        if op not in OPS:
            raise InvalidRequest(f"{where}.op must be one of {', '.join(OPS)}")
        if not isinstance(f.get("dimension"), str):
            raise InvalidRequest(f"{where}.dimension must be a string")
        if many:
            raw = f.get("values")
            if not isinstance(raw, list):
                raise InvalidRequest(f"{where}.values must be a list")
            values = tuple(_json_value(v, f"{where}.values[{j}]") for j, v in enumerate(raw))
        else:
            if "value" not in f:
                raise InvalidRequest(f"{where}.value is required")
            values = (_json_value(f["value"], f"{where}.value"),)
        filters.append(Filter(f["dimension"], op, values))
    aggs = []
    for i, a in enumerate(_list(doc, "aggregates", "query")):
        where = f"query.aggregates[{i}]"
        if not isinstance(a, Mapping):
            raise InvalidRequest(f"{where} must be an object")
        _only(a, {"fn", "measure", "q"}, where)
        fn, measure, q = a.get("fn"), a.get("measure"), a.get("q")
        if not isinstance(fn, str) or (measure is not None and not isinstance(measure, str)):
            raise InvalidRequest(f"{where}: fn and measure must be strings")
        if q is not None and (type(q) not in (int, float) or not math.isfinite(q)):
            raise InvalidRequest(f"{where}.q must be a number")
        aggs.append(Aggregate(fn, measure, None if q is None else float(q)))
    return Query(dimensions=tuple(dims), filters=tuple(filters), aggregates=tuple(aggs))


# -- against the rules ----------------------------------------------------------------------


def _typed(value: Value, type_: str, dim: str) -> Value:
    if type_ == "text" and isinstance(value, str):
        if len(value) > 256:
            raise _refuse(f"a value of {dim} is longer than 256 characters")
        return value
    if type_ == "integer" and type(value) is int and abs(value) <= 2**53 - 1:
        return value
    if type_ == "number" and type(value) in (int, float):
        return float(value)
    raise _refuse(f"{dim} is compared with {value!r}, which is not a {type_} value")


def _checked(q: Query, rules: ComputeRules, group: list[str]) -> Query:
    def dimension(name: str, where: str) -> None:
        if rules.dimension(name) is not None:
            return
        if rules.measure(name) is not None:
            raise _refuse(f"measure {name} cannot be used {where}; it may only be aggregated")
        raise _refuse(
            f"{name} is not a declared dimension (declared: "
            f"{', '.join(d.name for d in rules.dimensions) or 'none'})"
        )

    if len(set(q.dimensions)) != len(q.dimensions):
        raise _refuse("a dimension is named twice")
    for d in q.dimensions:
        dimension(d, "as a dimension (raw values never leave)")
    for d in group:
        dimension(d, "in GROUP BY (raw values never leave)")
    if sorted(group) != sorted(q.dimensions):
        raise _refuse(
            "the dimensions in SELECT and in GROUP BY must be the same (SELECT has"
            f" {', '.join(q.dimensions) or 'none'}; GROUP BY has {', '.join(group) or 'none'})"
        )
    if not q.aggregates:
        raise _refuse("ask for at least one aggregate, for example count(*)")
    if len(q.aggregates) > MAX_AGGREGATES or len(q.filters) > MAX_FILTERS:
        raise _refuse(f"at most {MAX_AGGREGATES} aggregates and {MAX_FILTERS} filters")
    aggs: list[Aggregate] = []
    for a in q.aggregates:
        if a.measure is None:
            if a.fn != "count" or a.q is not None:
                raise _refuse(f"{a.fn} needs a measure")
            aggs.append(a)
            continue
        m = rules.measure(a.measure)
        if m is None:
            if rules.dimension(a.measure) is not None:
                raise _refuse(f"dimension {a.measure} cannot be aggregated; group by it")
            raise _refuse(f"{a.measure} is not a declared measure")
        if a.fn not in m.aggregates:
            raise _refuse(
                f"{a.fn}({a.measure}) is not allowed (allowed for {a.measure}: "
                f"{', '.join(m.aggregates)}, and count(*))"
            )
        if a.fn == "quantile":
            if a.q not in m.quantiles:
                raise _refuse(
                    f"quantile {a.q} of {a.measure} is not allowed (allowed: "
                    f"{', '.join(repr(x) for x in m.quantiles)})"
                )
        elif a.q is not None:
            raise _refuse(f"{a.fn} takes no quantile level")
        aggs.append(a)
    if len({a.column for a in aggs}) != len(aggs):
        raise _refuse("an aggregate is asked twice")
    filters: list[Filter] = []
    for f in q.filters:
        dimension(f.dimension, "in a filter (it would select rows by their value)")
        dim = rules.dimension(f.dimension)
        assert dim is not None
        if f.op in _ORDERING and dim.type == "text":
            raise _refuse(f"{f.dimension} is text; compare it with =, !=, IN or NOT IN")
        if not f.values or len(f.values) > MAX_IN_VALUES:
            raise _refuse(f"IN takes 1 to {MAX_IN_VALUES} values")
        values = [_typed(v, dim.type, f.dimension) for v in f.values]
        if dim.values is not None:
            for v in values:
                if v not in dim.values:
                    raise _refuse(f"{v!r} is not an allowed value of {f.dimension}")
        if f.op in ("in", "not in"):
            values = sorted(set(values), key=lambda v: (str(type(v)), v))
        filters.append(Filter(f.dimension, f.op, tuple(values)))
    filters.sort(key=lambda f: (f.dimension, OPS.index(f.op), [repr(v) for v in f.values]))
    return Query(
        dimensions=q.dimensions, filters=tuple(dict.fromkeys(filters)), aggregates=tuple(aggs)
    )
