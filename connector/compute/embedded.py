"""DuckDB over a file table (CSV or JSON Lines), locked down before any query runs.

The file is read once into an in-memory table by the connector itself; then external
access is disabled (no file, no network: ``read_csv``, ``COPY ... TO``, ``ATTACH``,
``INSTALL`` all fail), extension autoloading and autoinstalling are off, and the
configuration is locked so no statement can turn any of it back on. Memory and threads are
bounded; a query running longer than its time limit is interrupted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from sqlglot import exp

from connector.compute.query import Value
from connector.errors import InvalidRequest, Unavailable

__all__ = ["DuckDBTable", "EmbeddedLimits"]

_LOADERS = {
    "csv": "CREATE TABLE product AS SELECT * FROM read_csv($path, header = true)",
    "jsonl": "CREATE TABLE product AS SELECT * FROM read_json($path, format = 'newline_delimited')",
}


@dataclass(frozen=True)
class EmbeddedLimits:
    """Bounds of the embedded engine."""

    memory_mb: int = 512
    """DuckDB's memory limit (it spills nothing: no temporary directory is allowed)."""
    threads: int = 2
    timeout_s: float = 30.0
    """A query still running after this is interrupted (``Unavailable``)."""


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
        except duckdb.Error as exc:
            self._con.close()
            raise Unavailable(f"the table {path.name} could not be read: {exc}") from None
        self._lockdown(self._con)

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

    def fetch(self, select: exp.Select, params: dict[str, Value]) -> list[tuple[Any, ...]]:
        """Run ``select`` with the time limit."""
        return self.execute(select.sql(dialect=self.dialect), params)

    def execute(self, sql: str, params: dict[str, Value] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL text on the locked engine (the engine only passes text it generated)."""
        with self._lock:
            timer = threading.Timer(self._limits.timeout_s, self._con.interrupt)
            timer.start()
            try:
                return self._con.execute(sql, params or {}).fetchall()
            except duckdb.InterruptException:
                raise Unavailable(
                    f"the computation ran longer than {self._limits.timeout_s:g} s"
                ) from None
            finally:
                timer.cancel()

    def close(self) -> None:
        """Release the engine's memory."""
        with self._lock:
            self._con.close()
