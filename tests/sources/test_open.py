"""The one factory of record sources, and the file rules every disk source is opened by."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.catalog.products import Offer, Product, Source
from connector.errors import InvalidRequest, PreconditionFailed
from connector.sources.file import SourceRoots
from connector.sources.open import record_source
from connector.sources.sql import SqlConnection, SqlSource, SqlSources
from connector.sources.table import TableSource

OFFER = Offer(id="o1", purposes=("research",), valid_from_ns=0, valid_until_ns=1)


def _product(source: Source, fields: tuple[str, ...] = ("id", "city")) -> Product:
    return Product(
        id="p", title="p", owner="gov", grade="general", source=source, offers=(OFFER,),
        fields=fields,
    )  # fmt: skip


def test_a_table_product_reads_its_file_inside_the_roots(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("id,city\n1,Xian\n")
    source = record_source(
        _product(Source("table", "t.csv", "csv")), SourceRoots(tmp_path), SqlSources({})
    )
    assert isinstance(source, TableSource)
    with source.open_snapshot() as snapshot:
        assert [tuple(r) for r in snapshot] == [("1", "Xian")]


def test_a_table_outside_the_roots_is_the_providers_to_fix(tmp_path: Path) -> None:
    inside = tmp_path / "data"
    inside.mkdir()
    (tmp_path / "secret.csv").write_text("id,city\n1,x\n")
    with pytest.raises(PreconditionFailed, match="outside the data directory"):
        record_source(
            _product(Source("table", "../secret.csv", "csv")), SourceRoots(inside), SqlSources({})
        )


def test_a_directory_is_not_read_as_a_table(tmp_path: Path) -> None:
    (tmp_path / "t.csv").mkdir()
    source = record_source(
        _product(Source("table", "t.csv", "csv")), SourceRoots(tmp_path), SqlSources({})
    )
    with pytest.raises(PreconditionFailed, match="not a regular file"), source.open_snapshot():
        pass


def test_an_sql_product_gets_its_checked_query_on_its_connection(tmp_path: Path) -> None:
    sql = SqlSources({"shop": SqlConnection("shop", "postgresql://u:pw@127.0.0.1:1/db")})
    product = _product(
        Source("sql", format="csv", connection="shop", query="SELECT id, city FROM t")
    )
    source = record_source(product, SourceRoots(tmp_path), sql)
    assert isinstance(source, SqlSource)
    assert source.fields() == ("id", "city") and source.query.text == "SELECT id, city FROM t"
    sql.close()


@pytest.mark.parametrize(
    "connection, query, message",
    [
        ("crm", "SELECT id, city FROM t", r"add \[sources\.crm\]"),
        ("shop", "SELECT id, city FROM t FOR UPDATE", "locking clause"),
        ("shop", "SELECT id FROM t", "fields must equal the query's output columns"),
    ],
)
def test_an_sql_product_no_longer_allowed_is_the_providers_to_fix(
    tmp_path: Path, connection: str, query: str, message: str
) -> None:
    """Checked at publish and again here: a configuration or a stored product changed since."""
    sql = SqlSources({"shop": SqlConnection("shop", "postgresql://u:pw@127.0.0.1:1/db")})
    product = _product(Source("sql", format="csv", connection=connection, query=query))
    with pytest.raises(PreconditionFailed, match=message):
        record_source(product, SourceRoots(tmp_path), sql)


def test_a_file_is_not_a_record_source(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="delivered as bytes"):
        record_source(_product(Source("file", "x.bin")), SourceRoots(tmp_path), SqlSources({}))
