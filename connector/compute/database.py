"""Computing on the source database itself (PostgreSQL, MariaDB): rows never leave it.

The product's own SELECT (validated at publish) becomes the subquery ``product``; the
engine's generated aggregate query runs over it in a READ ONLY transaction with a statement
timeout, on the provider's SQLAlchemy engine (its pool is the provider's configuration).
Filter values are bound parameters in the driver's own style.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import sqlglot
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlglot import exp
from sqlglot.errors import SqlglotError

from connector.compute.engine import Cube, KeptCube
from connector.compute.query import Value
from connector.errors import InvalidRequest, Unavailable
from connector.sources.sql_connection import database_of, unreachable

__all__ = ["DatabaseSource"]

log = logging.getLogger(__name__)

_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
# Driver error codes for "statement timeout": PostgreSQL SQLSTATE 57014 (query_canceled);
# MariaDB 1969 (ER_STATEMENT_TIMEOUT).
_TIMEOUT_CODES: set[object] = {"57014", 1969}


class DatabaseSource:
    """A ``sql`` source as an ``Executor``: the source query, on the source database."""

    quantiles: bool

    def __init__(
        self, engine: Engine, query: str, *, timeout_s: float = 30.0, connection: str = ""
    ) -> None:
        """``engine``: the provider's connection (PostgreSQL or MariaDB); ``query``: the
        product's read-only SELECT; ``timeout_s``: the statement timeout; ``connection``:
        its name in the provider's configuration, for messages (as a transfer's
        name it)."""
        backend = engine.dialect.name
        if backend not in _DIALECTS:
            raise InvalidRequest(f"compute runs on PostgreSQL or MariaDB, not {backend}")
        if not 0 < timeout_s <= 3600:
            raise InvalidRequest("timeout_s must be > 0 and <= 3600")
        self.dialect = _DIALECTS[backend]
        # MariaDB has PERCENTILE_CONT only as a window function, not as an aggregate.
        self.quantiles = self.dialect == "postgres"
        self._engine = engine
        self._timeout_s = timeout_s
        self._connection = connection
        self._database = database_of(connection)
        try:
            parsed = sqlglot.parse(query, read=self.dialect)
        except SqlglotError as exc:
            raise InvalidRequest(f"the source query is not valid SQL: {exc}") from None
        if len(parsed) != 1 or not isinstance(parsed[0], exp.Query):
            raise InvalidRequest("the source query must be one SELECT")
        self._subquery = exp.Subquery(
            this=parsed[0], alias=exp.TableAlias(this=exp.to_identifier("product"))
        )
        self._query = query
        # Bound parameters are written as a marker no source query can contain, then turned
        # into the drivers' pyformat (psycopg and PyMySQL both use %(name)s), after every
        # literal % of the text is doubled.
        self._marker = f"tds_param_{secrets.token_hex(8)}_"

    def source(self) -> exp.Expression:
        """The source query as the subquery ``product``."""
        return self._subquery.copy()

    def placeholder(self, name: str) -> exp.Expression:
        """A marker replaced by ``%(name)s`` once the text is generated."""
        return exp.Var(this=f"{self._marker}{name}_")

    @property
    def plan_key(self) -> Hashable:
        """The dialect and the source query: the generated text holds both (the marker of
        bound parameters does not survive ``text``)."""
        return (self.dialect, self._query)

    def never_null(self, column: str) -> bool:
        """False: the database's rows change."""
        return False

    def counted(self, keys: Sequence[str]) -> str | None:
        """None: the database's rows change, so every statement counts them itself."""
        return None

    def cube(self, cube: Cube) -> KeptCube | None:
        """None: the database's rows change; every statement runs on them."""
        return None

    def text(self, select: exp.Select, params: Mapping[str, Value]) -> str:
        """The SQL text sent to the database (pyformat, literal ``%`` doubled)."""
        sql = select.sql(dialect=self.dialect).replace("%", "%%")
        for name in params:
            sql = sql.replace(f"{self._marker}{name}_", f"%({name})s")
        return sql

    def execute(self, sql: str, params: dict[str, Value] | None = None) -> list[tuple[Any, ...]]:
        """Run SQL text (pyformat) read-only with the timeout; the engine passes only text
        it generated."""
        params = params or {}
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            log.warning("compute: %s is unreachable: %s", self._database, exc)
            raise self._unreachable() from None
        try:
            with conn:
                try:
                    return self._read_only(conn, sql, params)
                finally:
                    conn.rollback()
        except DBAPIError as exc:
            codes = {getattr(exc.orig, "sqlstate", None)}
            if exc.orig is not None and exc.orig.args:
                codes.add(exc.orig.args[0])
            if codes & _TIMEOUT_CODES:
                raise Unavailable(
                    f"{self._database} did not answer within {self._timeout_s:g} s (its "
                    "statement timeout); ask a narrower question or try again later"
                ) from None
            log.warning("compute query failed on the source database: %s", exc.orig)
            if exc.connection_invalidated:
                raise self._unreachable() from None
            raise Unavailable(
                f"{self._database} could not answer the computation (the provider's log says why)"
            ) from None
        except SQLAlchemyError as exc:
            log.warning("compute query failed: %s", exc)
            raise self._unreachable() from None

    def _unreachable(self) -> Unavailable:
        return unreachable(self._connection)

    def _read_only(self, conn: Connection, sql: str, params: dict[str, Value]) -> list[Any]:
        ms = max(1, int(self._timeout_s * 1000))
        if self.dialect == "postgres":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
            result = conn.exec_driver_sql(sql, params)
        else:
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
            # max_statement_time is in seconds (fractions allowed), for this statement only.
            prefix = f"SET STATEMENT max_statement_time = {ms / 1000:.3f} FOR "
            result = conn.exec_driver_sql(prefix + sql, params)
        return [tuple(r) for r in result.fetchall()]
