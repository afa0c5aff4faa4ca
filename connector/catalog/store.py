"""The products a connector publishes, in its database."""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from connector.catalog.products import Product
from connector.errors import ConflictError, NotFound
from connector.store.database import Database
from connector.store.models import ProductRow

__all__ = ["ProductStore"]

_PARSED_KEPT = 256


class ProductStore:
    """Products on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Parsed products by their stored text: every contract and transfer step reads its
        # product, and parsing it again was a few percent of a negotiation. Keyed by the
        # text, so a product changed by a replica is parsed afresh. Products are frozen.
        self._parsed: dict[str, Product] = {}

    def put(self, product: Product, *, replace: bool, now_ms: int) -> Product:
        """Store a validated product; ``ConflictError`` if it exists and not ``replace``."""
        self.put_many([product], replace=replace, now_ms=now_ms)
        return product

    def put_many(self, products: Sequence[Product], *, replace: bool, now_ms: int) -> None:
        """Store validated products in one transaction: all of them, or none (a
        ``ConflictError`` naming the first that exists when not ``replace``)."""
        try:
            with self._db.session() as s:
                for product in products:
                    row = s.get(ProductRow, product.id, with_for_update=True)
                    if row is not None and not replace:
                        raise ConflictError(
                            f"product {product.id!r} exists; pass --replace to update it"
                        )
                    if row is None:
                        row = ProductRow(
                            id=product.id,
                            grade=product.grade,
                            body=product.to_json(),
                            created_ms=now_ms,
                            updated_ms=now_ms,
                        )
                    else:
                        row.grade, row.body = product.grade, product.to_json()
                        row.updated_ms = now_ms
                    s.add(row)
        except IntegrityError:
            ids = ", ".join(repr(p.id) for p in products)
            raise ConflictError(f"product {ids} exists (published meanwhile)") from None

    def find(self, product_ids: Sequence[str]) -> dict[str, Product]:
        """The stored products among ``product_ids``, by id (absent ones left out)."""
        found: dict[str, Product] = {}
        for product_id in product_ids:
            with contextlib.suppress(NotFound):
                found[product_id] = self.get(product_id)
        return found

    def get(self, product_id: str) -> Product:
        """One product, or ``NotFound`` (read on every catalog, contract and transfer step)."""
        with self._db.transaction() as tx:
            row = tx.one("SELECT body FROM product WHERE id = ?", (product_id,))
        if row is None:
            raise NotFound(f"product {product_id!r} not found")
        return self.parsed(str(row[0]))

    def list(self) -> list[Product]:
        """Every product, by id."""
        with self._db.session() as s:
            rows = s.exec(select(ProductRow).order_by(ProductRow.id)).all()
            return [Product.from_stored(r.body) for r in rows]

    def rows_after(
        self, after: str, limit: int, patterns: Sequence[str] = ()
    ) -> builtins.list[tuple[str, str]]:
        """Up to ``limit`` (id, stored JSON) after id ``after``, by id, whose stored JSON
        matches every ``LIKE`` pattern (escape ``\\``, any case): a page's candidates."""
        like = "ILIKE" if self._db.postgres else "LIKE"  # SQLite's LIKE ignores ASCII case
        where = "".join(f" AND body {like} ? ESCAPE '\\'" for _ in patterns)
        with self._db.transaction() as tx:
            rows = tx.all(
                f"SELECT id, body FROM product WHERE id > ?{where} ORDER BY id LIMIT ?",  # noqa: S608
                (after, *patterns, limit),
            )
        return [(str(r[0]), str(r[1])) for r in rows]

    def products_using_module(self, module_id: str) -> builtins.list[str]:
        """Ids of the stored products an offer of which carries provider module
        ``module_id`` (the database narrows by the module's JSON text, parsing decides)."""
        pattern = '%"policy_module":' + json.dumps(module_id).replace("_", "\\_") + "%"
        with self._db.transaction() as tx:
            rows = tx.all("SELECT id, body FROM product WHERE body LIKE ? ESCAPE '\\'", (pattern,))
        return [
            str(i)
            for i, body in rows
            if any(o.policy_module == module_id for o in self.parsed(str(body)).offers)
        ]

    def parsed(self, body: str) -> Product:
        """A stored product's JSON as a product (parsed once while it stays the same)."""
        product = self._parsed.get(body)
        if product is None:
            product = Product.from_stored(body)
            if len(self._parsed) >= _PARSED_KEPT:
                self._parsed.clear()
            self._parsed[body] = product
        return product

    def remove(self, product_id: str) -> None:
        """Delete a product, or ``NotFound``."""
        with self._db.session() as s:
            row = s.get(ProductRow, product_id, with_for_update=True)
            if row is None:
                raise NotFound(f"product {product_id!r} not found")
            s.delete(row)
