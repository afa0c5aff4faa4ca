"""The record source of a published product: one place that turns ``product.source`` into
an adapter of :mod:`connector.sources.base`, whatever its kind."""

from __future__ import annotations

from connector.catalog.products import Product
from connector.errors import InvalidRequest, PreconditionFailed
from connector.sources.base import RecordSource
from connector.sources.file import SourceRoots, locate_source
from connector.sources.sql import SqlSources
from connector.sources.table import TableSource

__all__ = ["record_source"]


def record_source(product: Product, roots: SourceRoots, sql: SqlSources) -> RecordSource:
    """The records of ``product`` (a ``table`` or ``sql`` source), checked again as at
    publish: a path outside ``roots``, a connection no longer configured or a query no
    longer allowed is the provider's to fix (``PreconditionFailed``)."""
    source = product.source
    if source.kind == "table":
        return TableSource(locate_source(source, roots), source.format, product.fields, roots)
    if source.kind == "sql":
        try:
            return sql.source(source.connection, source.query, product.fields)
        except InvalidRequest as exc:
            raise PreconditionFailed(f"the product's source cannot be read: {exc}") from None
    raise InvalidRequest(f"a {source.kind} source is delivered as bytes, not records")
