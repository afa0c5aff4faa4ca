"""Data products and catalogs: publishing, and discovery filtered by the access policy."""

from connector.catalog.catalog import Catalog
from connector.catalog.products import Offer, Product, parse_description

__all__ = ["Catalog", "Offer", "Product", "parse_description"]
