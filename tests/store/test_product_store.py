"""The product store: a product read back is the one last stored, parsed or not; on
SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from connector.catalog.products import parse_description
from connector.catalog.store import ProductStore
from connector.errors import NotFound
from connector.store.database import Database

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "products" / "traffic-flow.toml"


def test_a_read_gives_the_product_last_stored(db: Database) -> None:
    store = ProductStore(db)
    product = parse_description(EXAMPLE.read_text(), owner="gov", fmt="toml")
    store.put(product, replace=False, now_ms=1)
    first = store.get(product.id)
    assert first == product
    assert store.get(product.id) is first  # the stored text did not change: parsed once
    # Another writer (a replica, or the admin) replaces it: the next read sees the change.
    other = ProductStore(db)
    renamed = dataclasses.replace(product, title="Traffic flow, 2027")
    other.put(renamed, replace=True, now_ms=2)
    assert store.get(product.id).title == "Traffic flow, 2027"
    other.remove(product.id)
    with pytest.raises(NotFound):
        store.get(product.id)
