"""Where a product's computations run: an ``Executor`` for its source, and the source's state.

File tables are read into a locked-down DuckDB (``connector.compute.embedded``) through the
provider's source roots (``connector.sources.file.SourceRoots``): the file DuckDB reads is
the descriptor those checks opened (``/proc/self/fd``), so a path swapped for a symlink
after the check reads nothing outside the roots. A loaded table is kept while the file's
SHA-256 is the same, so a second question does not read the file again.

``sql`` products are computed on their own database (``connector.compute.database``), the
product's query checked again as at publish, in a read-only transaction with the
connection's statement timeout; the rows never leave the database.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from connector.catalog.products import Source
from connector.errors import PreconditionFailed
from connector.sources.file import FileDigests, SourceRoots, locate_source
from connector.sources.sql import SqlSources

if TYPE_CHECKING:
    # DuckDB (and SQLAlchemy's dialects) load with the first question, not with every
    # connector process: about 25 MB resident that a connector never asked anything of
    # would otherwise carry (every process is to stay under 200 MB).
    from connector.compute.embedded import DuckDBTable, EmbeddedLimits
    from connector.compute.engine import Executor

__all__ = ["ComputeSources"]


class ComputeSources:
    """Executors for products' sources, and the state each was read in."""

    def __init__(
        self,
        roots: SourceRoots,
        *,
        sql: SqlSources | None = None,
        limits: EmbeddedLimits | None = None,
        keep_tables: int = 4,
    ) -> None:
        """``sql``: the provider's named database connections; ``keep_tables``: loaded
        file tables kept in memory (least recently used go)."""
        self._roots = roots
        self._sql = sql
        self._limits = limits
        self._digests = FileDigests()
        self._keep = keep_tables
        self._tables: OrderedDict[tuple[str, str], DuckDBTable] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, source: Source, fields: Sequence[str]) -> tuple[Executor, str]:
        """The executor for ``source`` (a product with ``fields``) and its state:
        ``sha256:<hex>`` of a file table; for sql, the query's hash and when it was read
        (``sql:sha256:<hex>:at_ms:<ms>``, a database has no cheaper version to name).

        ``PreconditionFailed``: the source is missing, outside the roots, or changed while
        read; ``InvalidRequest``: an sql connection that is not configured;
        ``Unavailable``: the engine could not read it.
        """
        if source.kind == "sql":
            return self._database(source, fields)
        if source.kind != "table":
            raise PreconditionFailed(
                f"computations run on table or sql sources, not {source.kind!r} sources"
            )
        path = locate_source(source, self._roots)
        digest = self._digests.digest(path, self._roots)
        key = (str(path), digest.sha256)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
        if table is None:
            table = self._load(path, source.format, digest.mtime_ns)
            with self._lock:
                self._tables[key] = table
                while len(self._tables) > self._keep:
                    # Dropped, not closed: a question still running on it finishes, and
                    # the engine is released with its last reference.
                    self._tables.popitem(last=False)
        return table, f"sha256:{digest.sha256}"

    def _database(self, source: Source, fields: Sequence[str]) -> tuple[Executor, str]:
        if self._sql is None:
            raise PreconditionFailed("this connector has no sql source connections")
        query = self._sql.check(source.connection, source.query, fields)
        from connector.compute.database import DatabaseSource

        executor = DatabaseSource(
            self._sql.engine(source.connection),
            query.text,
            timeout_s=self._sql.connection(source.connection).statement_timeout_seconds,
            connection=source.connection,
        )
        return executor, f"sql:sha256:{query.sha256}:at_ms:{int(time.time() * 1000)}"

    def _load(self, path: Path, fmt: str, mtime_ns: int) -> DuckDBTable:
        from connector.compute.embedded import DuckDBTable, EmbeddedLimits

        with self._roots.open(path) as f:
            limits = self._limits or EmbeddedLimits()
            table = DuckDBTable(Path(f"/proc/self/fd/{f.fileno()}"), fmt, limits)
            if os.fstat(f.fileno()).st_mtime_ns != mtime_ns:
                table.close()
                raise PreconditionFailed(
                    "the product's source changed while it was read; ask again"
                )
        return table
