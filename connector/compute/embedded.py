"""DuckDB over a file table (CSV or JSON Lines), locked down before any query runs.

The file is read once into an in-memory table by the connector itself. Text columns with
few distinct values (districts, age bands: what questions group and filter by) are then
stored as DuckDB ENUMs, a dictionary of their values: grouping and comparing small
integers instead of strings makes the scans the answers and the differencing check need
several times faster, and values, NULLs, comparisons with text and the keys returned are
the same. Then external access is disabled (no file, no network: ``read_csv``,
``COPY ... TO``, ``ATTACH``, ``INSTALL`` all fail), extension autoloading and
autoinstalling are off, and the configuration is locked so no statement can turn any of it
back on. Memory and threads are bounded; a query running longer than its time limit is
interrupted.

The file cannot change while its table is kept (its SHA-256 names the source's state), so
the table also keeps what the engine asks it to count once (``DuckDBTable.counted``) and
the pre-aggregates of offers' rules (``DuckDBTable.cube``), each made by the connector
from the engine's own statement, as the table itself is, and named ``tds_...``: no name a
question can reach (questions read ``product`` only, and no declared column may start with
``tds_``).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from connector.compute.engine import CELLS_IN_PYTHON, Cube, CubeCells, KeptCube
from connector.compute.query import Value
from connector.errors import InvalidRequest, Unavailable

__all__ = ["DuckDBTable", "EmbeddedLimits", "encode_categories"]

log = logging.getLogger(__name__)

_LOADERS = {
    "csv": "CREATE TABLE product AS SELECT * FROM read_csv($path, header = true)",
    "jsonl": "CREATE TABLE product AS SELECT * FROM read_json($path, format = 'newline_delimited')",
}

DICTIONARY_MAX_VALUES = 4096
"""A text column with at most about this many distinct values is stored as an ENUM."""

COUNTED_MAX_TABLES = 16
"""Row counts per combination of columns kept for one table (``DuckDBTable.counted``)."""
COUNTED_MAX_ROWS = 100_000
"""Combinations above which such counts are not kept (they would be a table of their own)."""
CUBE_MAX_TABLES = 8
"""Cubes kept for one table (``DuckDBTable.cube``): one per distinct set of rules' dimensions
and measures' bounds asked under."""
CUBE_MAX_CELLS = 100_000
"""Cells above which a cube is not kept."""
CUBE_MAX_SHARE = 0.1
"""Nor one with more cells than this share of the table's rows: reading it would save
too little of a scan for the memory it holds."""


@dataclass(frozen=True)
class EmbeddedLimits:
    """Bounds of the embedded engine."""

    memory_mb: int = 512
    """DuckDB's memory limit (it spills nothing: no temporary directory is allowed)."""
    threads: int = 2
    timeout_s: float = 30.0
    """A query still running after this is interrupted (``Unavailable``)."""


def encode_categories(con: duckdb.DuckDBPyConnection) -> None:
    """Store the text columns of table ``product`` that have few distinct values as ENUMs
    (see the module's docstring)."""
    columns = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'product' ORDER BY ordinal_position"
    ).fetchall()
    text = [name for name, type_ in columns if type_ == "VARCHAR"]
    if not text:
        return

    def col(name: str) -> exp.Column:
        return exp.column(exp.to_identifier(name, quoted=True))

    counts = exp.select(*(exp.ApproxDistinct(this=col(c)) for c in text)).from_("product")
    row = con.execute(counts.sql(dialect="duckdb")).fetchone()
    assert row is not None
    small = {c for c, n in zip(text, row, strict=True) if 0 < n <= DICTIONARY_MAX_VALUES}
    if not small:
        return
    columns_out: list[exp.Expr] = []
    for i, (name, _type) in enumerate(columns):
        if name not in small:
            columns_out.append(col(name))
            continue
        values = (
            exp.select(col(name))
            .distinct()
            .from_("product")
            .where(exp.Not(this=exp.Is(this=col(name), expression=exp.Null())))
            .order_by(col(name))
        )
        # sqlglot has no CREATE TYPE; the column is quoted by it, the type named here.
        con.execute(f"CREATE TYPE tds_enum_{i} AS ENUM ({values.sql(dialect='duckdb')})")
        cast = exp.Cast(this=col(name), to=exp.DataType.build(f"tds_enum_{i}", udt=True))
        columns_out.append(exp.alias_(cast, exp.to_identifier(name, quoted=True)))
    table = exp.select(*columns_out).from_("product")
    con.execute(f"CREATE OR REPLACE TABLE product AS {table.sql(dialect='duckdb')}")


class _Watchdog:
    """One thread for every embedded engine: interrupts a query still running at its
    deadline (starting a timer thread per query cost about 0.3 ms).

    It holds engines weakly, so an engine nobody uses any more is still released.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: list[tuple[float, int]] = []  # a heap of (deadline, ticket)
        self._armed: dict[int, weakref.ref[DuckDBTable]] = {}
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, table: DuckDBTable, seconds: float) -> int:
        """Interrupt ``table`` in ``seconds`` unless ``disarm`` comes first."""
        with self._cond:
            ticket = next(self._tickets)
            heapq.heappush(self._deadlines, (time.monotonic() + seconds, ticket))
            self._armed[ticket] = weakref.ref(table)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tds-compute-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
            return ticket

    def disarm(self, ticket: int) -> None:
        """The query is over: no interrupt for it (its heap entry is dropped when due)."""
        with self._cond:
            self._armed.pop(ticket, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._deadlines and self._deadlines[0][1] not in self._armed:
                    heapq.heappop(self._deadlines)  # disarmed
                if not self._deadlines:
                    self._cond.wait()
                    continue
                deadline, ticket = self._deadlines[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._deadlines)
                table = self._armed.pop(ticket)()
                if table is not None:
                    with contextlib.suppress(duckdb.Error):  # closed: nothing runs on it
                        table.interrupt()


_WATCHDOG = _Watchdog()


class DuckDBTable:
    """A file table loaded into a locked-down in-memory DuckDB, as an ``Executor``."""

    dialect = "duckdb"
    quantiles = True

    def __init__(self, path: Path, fmt: str, limits: EmbeddedLimits | None = None) -> None:
        """Load ``path`` (``csv`` or ``jsonl``) and lock the engine down."""
        if fmt not in _LOADERS:
            raise InvalidRequest(f"table format must be csv or jsonl, not {fmt!r}")
        self._limits = limits or EmbeddedLimits()
        self._lock = threading.Lock()
        self._con = duckdb.connect(
            ":memory:",
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
                "allow_unsigned_extensions": False,
                "memory_limit": f"{self._limits.memory_mb}MB",
                "threads": self._limits.threads,
            },
        )
        try:
            self._con.execute(_LOADERS[fmt], {"path": str(path)})
            encode_categories(self._con)
        except duckdb.Error as exc:
            self._con.close()
            raise Unavailable(f"the table {path.name} could not be read: {exc}") from None
        self._lockdown(self._con)
        self._counted: dict[tuple[str, ...], str | None] = {}
        self._cubes: dict[Cube, KeptCube | None] = {}
        self._rows = 0
        self._never_null = self._columns_without_nulls()

    def _columns_without_nulls(self) -> frozenset[str]:
        """The columns holding no NULL (one count of each, once: the table cannot change);
        the table's rows are counted with them."""
        names = [r[0] for r in self.execute("SELECT column_name FROM (DESCRIBE product)")]
        counts = exp.select(
            exp.Count(this=exp.Star()),
            *(exp.Count(this=exp.column(exp.to_identifier(n, quoted=True))) for n in names),
        ).from_("product")
        [(rows, *non_null)] = self.execute(counts.sql(dialect=self.dialect))
        self._rows = int(rows)
        return frozenset(n for n, c in zip(names, non_null, strict=True) if c == rows)

    def never_null(self, column: str) -> bool:
        """Whether ``column`` holds no NULL."""
        return column in self._never_null

    @staticmethod
    def _lockdown(con: duckdb.DuckDBPyConnection) -> None:
        # Order matters: external access off first, then the lock, which also freezes it.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")

    def source(self) -> exp.Expression:
        """The in-memory table ``product``."""
        return exp.to_table("product")

    def placeholder(self, name: str) -> exp.Expression:
        """DuckDB's named parameter ``$name``."""
        return exp.Placeholder(this=name)

    @property
    def plan_key(self) -> Hashable:
        """Every embedded table is ``product`` in its own engine: one text for all tables
        whose columns without NULL are the same."""
        return ("duckdb", self._never_null)

    def text(self, select: exp.Select, params: Mapping[str, Value]) -> str:
        """``select`` as DuckDB SQL (its parameters are ``$name``)."""
        return select.sql(dialect=self.dialect)

    def counted(self, keys: Sequence[str]) -> str | None:
        """The table of this table's rows counted per combination of ``keys`` (columns
        ``keys`` and ``tds_n``), made the first time it is asked for: the table cannot
        change, so neither can the counts, and the differencing check then reads a few
        hundred counts instead of every row. None (count in the statement) past
        ``COUNTED_MAX_TABLES`` tables or when the combinations exceed
        ``COUNTED_MAX_ROWS``."""
        wanted = tuple(keys)
        with self._lock:
            if wanted in self._counted:
                return self._counted[wanted]
            if len(self._counted) >= COUNTED_MAX_TABLES:
                return None
            name = f"tds_cells_{len(self._counted)}"
            columns = [exp.column(exp.to_identifier(k, quoted=True)) for k in wanted]
            count = exp.select(*columns, exp.alias_(exp.Count(this=exp.Star()), "tds_n"))
            count = count.from_("product").group_by(*(c.copy() for c in columns))
            try:
                self._run(f"CREATE TABLE {name} AS {count.sql(dialect=self.dialect)}", {})
                [(rows,)] = self._run(f"SELECT count(*) FROM {name}", {})  # noqa: S608
                if rows > COUNTED_MAX_ROWS:
                    self._run(f"DROP TABLE {name}", {})
            except Unavailable:
                rows = COUNTED_MAX_ROWS + 1  # not kept: the statement counts instead
            self._counted[wanted] = name if rows <= COUNTED_MAX_ROWS else None
            return self._counted[wanted]

    def cube(self, cube: Cube) -> KeptCube | None:
        """The table of ``cube`` (the result of ``cube.statement(self)``), made the first
        time it is asked for: the table cannot change, so neither can its cells, and a
        question then adds up cells instead of reading every row. None (read the rows)
        past ``CUBE_MAX_TABLES`` cubes, or when it would have more than
        ``CUBE_MAX_CELLS`` cells or more than ``CUBE_MAX_SHARE`` of the table's rows (it
        is made with a LIMIT one past that, so too large a cube is never held whole, and
        dropped); the answer is remembered either way. Up to ``CELLS_IN_PYTHON`` cells
        are also fetched once into Python (``CubeCells``), where questions are answered
        without a statement."""
        with self._lock:
            if cube in self._cubes:
                return self._cubes[cube]
            if len(self._cubes) >= CUBE_MAX_TABLES:
                return None
            name = f"tds_cube_{len(self._cubes)}"
            most = min(CUBE_MAX_CELLS, int(self._rows * CUBE_MAX_SHARE))
            select = cube.statement(self).limit(most + 1, copy=False)
            kept: KeptCube | None = None
            try:
                self._run(f"CREATE TABLE {name} AS {select.sql(dialect=self.dialect)}", {})
                [(cells,)] = self._run(f"SELECT count(*) FROM {name}", {})  # noqa: S608
                if cells > most:
                    self._run(f"DROP TABLE {name}", {})
                elif cells > CELLS_IN_PYTHON:
                    kept = KeptCube(name)
                else:
                    columns = [(r[0], r[1]) for r in self._run(f"DESCRIBE {name}", {})]
                    rows = self._run(f"SELECT * FROM {name}", {})  # noqa: S608
                    kept = KeptCube(name, CubeCells.of(cube, columns, rows))
            except Unavailable as exc:
                # Not kept, and not tried again: questions read the rows, as without one.
                log.warning("the cube of %s is not kept: %s", name, exc)
            self._cubes[cube] = kept
            return kept

    def execute(self, sql: str, params: dict[str, Value] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL text on the locked engine (the engine only passes text it generated)."""
        with self._lock:
            return self._run(sql, params or {})

    def _run(self, sql: str, params: dict[str, Value]) -> list[tuple[Any, ...]]:
        """``execute`` under the lock, held by the caller."""
        ticket = _WATCHDOG.arm(self, self._limits.timeout_s)
        try:
            return self._con.execute(sql, params).fetchall()
        except duckdb.InterruptException:
            raise Unavailable(
                f"the computation ran longer than {self._limits.timeout_s:g} s"
            ) from None
        except duckdb.Error as exc:
            # The engine's message can quote the table's values (an ENUM's type names
            # them): it goes to the provider's log, never into the answer.
            log.warning("compute query failed on the embedded engine: %s", exc)
            raise Unavailable(
                "the embedded engine could not answer the computation (see the provider's log)"
            ) from None
        finally:
            _WATCHDOG.disarm(ticket)

    def interrupt(self) -> None:
        """Stop the query running now, if any (it fails with ``Unavailable``)."""
        self._con.interrupt()

    def close(self) -> None:
        """Release the engine's memory."""
        with self._lock:
            self._con.close()
