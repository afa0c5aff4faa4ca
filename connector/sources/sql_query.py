"""Checking a ``sql`` source's query at publish (see :mod:`connector.sources.sql`).

A real SQL parser (sqlglot) reads the query in the database's dialect; what runs is the
parser's rendering of the checked statement. The rules are in :mod:`connector.sources.sql`'s
docstring. This module is apart from the execution so that a connector that publishes no
database source does not import sqlglot (about 30 MB resident, 0.3 s at start).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import sqlglot
import sqlglot.errors
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from connector.errors import InvalidRequest

__all__ = ["ALLOWED_FUNCTIONS", "MAX_QUERY_CHARS", "Query", "check_fields", "validate_query"]

MAX_QUERY_CHARS = 64 * 1024
"""Longest query text accepted (characters)."""


_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except)

_FORBIDDEN: tuple[type[exp.Expression], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Copy,
    exp.LoadData,
    exp.Set,
    exp.Use,
    exp.Pragma,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Grant,
    exp.Revoke,
    exp.Kill,
    exp.Cache,
    exp.Uncache,
    exp.Describe,
    exp.Show,
    exp.Analyze,
    exp.Command,
    exp.Into,
    exp.Lock,
    exp.Parameter,
    exp.SessionParameter,
    exp.Placeholder,
    exp.PropertyEQ,
)
"""Anything that writes, locks, changes the session or was not understood, anywhere."""

_WHY = {
    exp.Into: "INTO (the query may only read)",
    exp.Lock: "a locking clause (FOR UPDATE / FOR SHARE / LOCK IN SHARE MODE)",
    exp.Command: "a statement the parser does not understand",
    exp.Parameter: "a variable or parameter",
    exp.SessionParameter: "a session variable",
    exp.Placeholder: "a placeholder",
    exp.PropertyEQ: "a variable assignment",
}

_SYSTEM_SCHEMAS = {
    "postgres": frozenset({"pg_catalog", "information_schema", "pg_toast"}),
    "mysql": frozenset({"mysql", "information_schema", "performance_schema", "sys"}),
}
"""Schemas of the database's own catalogs (roles, password hashes, settings, statistics)."""

_CHANGING: tuple[type[exp.Func], ...] = (
    exp.CurrentDate,
    exp.CurrentDatetime,
    exp.CurrentTime,
    exp.CurrentTimestamp,
    exp.CurrentTimestampLTZ,
    exp.Localtime,
    exp.Localtimestamp,
    exp.UtcDate,
    exp.UtcTimestamp,
    exp.UnixSeconds,
    exp.Rand,
    exp.Uuid,
)
"""Functions whose value changes from one run to the next (the clock, randomness)."""

_CHANGING_NAMES = frozenset(
    {
        "now",
        "sysdate",
        "unix_timestamp",
        "clock_timestamp",
        "statement_timestamp",
        "transaction_timestamp",
        "timeofday",
        "utc_time",
        "curtime",
        "curdate",
        "random_bytes",
        "uuid_short",
    }
)
"""The same, as the parser leaves them (by name)."""

ALLOWED_FUNCTIONS: frozenset[type[exp.Func]] = frozenset(
    {
        # aggregates
        exp.Count,
        exp.Sum,
        exp.Avg,
        exp.Min,
        exp.Max,
        # conditionals and conversions
        exp.Coalesce,
        exp.Nullif,
        exp.Case,
        exp.If,
        exp.Cast,
        exp.TryCast,
        exp.Greatest,
        exp.Least,
        # text
        exp.Lower,
        exp.Upper,
        exp.Trim,
        exp.Substring,
        exp.Length,
        exp.Concat,
        exp.ConcatWs,
        exp.Left,
        exp.Right,
        # numbers
        exp.Round,
        exp.Floor,
        exp.Ceil,
        exp.Abs,
        # dates (MariaDB's DATE_FORMAT parses as TimeToStr over TsOrDsToTimestamp)
        exp.Extract,
        exp.DateTrunc,
        exp.TimestampTrunc,
        exp.TimeToStr,
        exp.TsOrDsToTimestamp,
    }
)
"""The functions a source query may call; every other function is refused."""


@dataclass(frozen=True)
class Query:
    """A checked query: the text that runs, its output columns and its hash."""

    text: str
    """The parser's rendering of the checked statement, without comments."""
    columns: tuple[str, ...]
    dialect: str

    @property
    def sha256(self) -> str:
        """SHA-256 of :attr:`text`, hex."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def _refuse(what: str) -> InvalidRequest:
    return InvalidRequest(f"source.query {what}")


def _branches(node: exp.Expression) -> list[exp.Expression]:
    """The SELECTs whose rows are the query's output (more than one in a UNION)."""
    while isinstance(node, exp.Subquery | exp.Paren):
        node = node.this
    if isinstance(node, exp.Union | exp.Intersect | exp.Except):
        return _branches(node.this) + _branches(node.expression)
    return [node]


def _output_columns(root: exp.Expression, dialect: str) -> tuple[str, ...]:
    branches = _branches(root)
    for branch in branches:
        if not isinstance(branch, exp.Select):
            raise _refuse("must be a SELECT (or a UNION of SELECTs)")
        for projection in branch.expressions:
            if isinstance(projection, exp.Star) or (
                isinstance(projection, exp.Column) and projection.is_star
            ):
                raise _refuse(
                    "may not SELECT *: name each output column, so the product's fields "
                    "can be checked against it"
                )
    first = branches[0]
    if dialect == "postgres":
        # PostgreSQL folds unquoted names to lower case: the columns it will report.
        first = normalize_identifiers(first.copy(), dialect=dialect)
    names: list[str] = []
    for projection in first.expressions:
        if isinstance(projection, exp.Alias):
            names.append(projection.alias)
        elif isinstance(projection, exp.Column):
            names.append(projection.name)
        else:
            raise _refuse(
                f"output {projection.sql(dialect=dialect)[:80]!r} has no name; give it one with AS"
            )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _refuse(f"names the output column {twice[0]!r} twice; rename one with AS")
    return tuple(names)


def _is_system(table: exp.Table, dialect: str) -> bool:
    schemas = _SYSTEM_SCHEMAS.get(dialect, frozenset())
    if table.db.lower() in schemas or table.catalog.lower() in schemas:
        return True
    # PostgreSQL finds pg_catalog first whatever the search path: pg_shadow, pg_roles, …
    return dialect == "postgres" and not table.db and table.name.lower().startswith("pg_")


def validate_query(text: str, dialect: str, fields: Sequence[str] | None = None) -> Query:
    """The checked form of ``text`` in ``dialect`` (``postgres``/``mysql``), or
    ``InvalidRequest`` saying what to change. With ``fields``, they must equal the query's
    output columns (see :func:`check_fields`)."""
    if not isinstance(text, str) or not text.strip():
        raise _refuse("is empty; give one SELECT statement")
    if len(text) > MAX_QUERY_CHARS:
        raise _refuse(f"is {len(text)} characters long; at most {MAX_QUERY_CHARS} are accepted")
    try:
        parsed = sqlglot.parse(text, read=dialect)
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise _refuse(f"is not valid SQL: {first[:200]}") from None
    except RecursionError:
        raise _refuse("nests too deeply; simplify it") from None
    statements = [s for s in parsed if s is not None]
    if len(statements) != 1:
        raise _refuse(
            f"must be exactly one statement; found {len(statements)} (remove the extra "
            "ones and any ';' between them)"
        )
    root = statements[0]
    if not isinstance(root, _ROOTS):
        raise _refuse(f"must be a SELECT; a {root.key.upper()} statement is not allowed")
    for node in root.walk():
        if isinstance(node, _FORBIDDEN):
            why = _WHY.get(type(node), f"a {node.key.upper()} statement (the query may only read)")
            raise _refuse(f"contains {why}; remove it")
        if isinstance(node, exp.Table) and _is_system(node, dialect):
            raise _refuse(
                f"reads the database's own catalog ({node.sql(dialect=dialect)[:80]}); "
                "publish data from the application's tables"
            )
        if isinstance(node, exp.Func) and type(node) not in ALLOWED_FUNCTIONS:
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            if isinstance(node, _CHANGING) or name.lower() in _CHANGING_NAMES:
                # Named by kind, not by the parser's name for it: PostgreSQL's now() is
                # CURRENT_TIMESTAMP to sqlglot, and a message naming a function the user
                # never wrote reads as a bug.
                raise _refuse(
                    "reads the clock or draws random values (now(), CURRENT_DATE, random(), "
                    "uuid() and the like): its rows would change from one run to the next, "
                    "so a transfer's delivered form could not be made again on another "
                    "replica; filter on fixed values instead"
                )
            raise _refuse(
                f"calls {name.upper()}(), which is not an allowed function; allowed are "
                "aggregates (COUNT, SUM, AVG, MIN, MAX) and text, number and date functions "
                "(see connector.sources.sql_query.ALLOWED_FUNCTIONS)"
            )
    query = Query(
        root.sql(dialect=dialect, comments=False), _output_columns(root, dialect), dialect
    )
    if fields is not None:
        check_fields(query, fields)
    return query


def check_fields(query: Query, fields: Sequence[str]) -> None:
    """``InvalidRequest`` naming the difference unless ``fields`` are the query's columns."""
    fields = tuple(fields)
    if fields == query.columns:
        return
    extra = [f for f in fields if f not in query.columns]
    absent = [c for c in query.columns if c not in fields]
    parts = []
    if absent:
        parts.append(f"the query outputs {', '.join(map(repr, absent))} not in fields")
    if extra:
        parts.append(f"fields name {', '.join(map(repr, extra))} the query does not output")
    if not parts:
        parts.append(f"they are in another order; list them as {list(query.columns)}")
    raise InvalidRequest(
        "the product's fields must equal the query's output columns: " + "; ".join(parts)
    )
