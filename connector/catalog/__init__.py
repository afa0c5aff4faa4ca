"""Data products and catalogs: publishing, and discovery filtered by the access policy.

``Catalog`` is imported on first use: product descriptions (``products``) are read by
the CLI and the Dataspace Protocol rendering without the database stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector import lazy
from connector.catalog.products import Offer, Product, parse_description

if TYPE_CHECKING:
    from connector.catalog.catalog import Catalog

__all__ = ["Catalog", "Offer", "Product", "parse_description"]


__getattr__ = lazy.exports(__name__, {"Catalog": "catalog"})
