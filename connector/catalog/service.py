"""``CatalogService``: a provider's catalog as members see it."""

from __future__ import annotations

import json
from typing import Any

from connector._proto.tds.v1 import catalog_pb2, catalog_pb2_grpc
from connector.catalog.catalog import Catalog
from connector.catalog.paging import Filters
from connector.catalog.products import Product
from connector.identity.names import Role
from connector.rpc.auth import Access, current_caller
from connector.rpc.server import Service

__all__ = ["CatalogServicer", "catalog_service", "summary"]


def summary(product: Product) -> catalog_pb2.ProductSummary:
    """What a member may know of a product (never the source or the access rules)."""
    return catalog_pb2.ProductSummary(
        id=product.id,
        title=product.title,
        description=product.description,
        owner=product.owner,
        grade=product.grade,
        tags=list(product.tags),
        domain=product.domain,
        fields=list(product.fields),
        registration_code=product.registration_code,
        personal=product.personal,
        offers=[
            catalog_pb2.OfferTerms(
                id=o.id,
                purposes=list(o.purposes),
                valid_from_ns=o.valid_from_ns,
                valid_until_ns=o.valid_until_ns,
                max_transfers=o.max_transfers,
                max_bytes=o.max_bytes,
                obligations_json=json.dumps(o.obligations, sort_keys=True, separators=(",", ":")),
                has_policy_module=bool(o.policy_module),
                delivery=list(o.delivery),
                compute_json=(
                    json.dumps(o.compute.to_dict(), sort_keys=True, separators=(",", ":"))
                    if o.compute is not None
                    else ""
                ),
                max_messages=o.max_messages,
                per_period=(
                    catalog_pb2.PeriodLimits(
                        period=o.per_period.period,
                        max_messages=o.per_period.max_messages,
                        max_bytes=o.per_period.max_bytes,
                    )
                    if o.per_period is not None
                    else None
                ),
            )
            for o in product.offers
        ],
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    """Lists and shows products, each filtered by the access policy for the caller."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        """A page of the products the caller may see (one access decision for the page)."""
        filters = Filters(
            tag=request.tag, domain=request.domain, grade=request.grade, text=request.text
        )
        products, following = self._catalog.page(
            current_caller(),
            filters,
            size=request.page_size if request.HasField("page_size") else None,
            token=request.page_token,
            all_pages=request.all_pages,
        )
        return catalog_pb2.ListProductsResponse(
            products=[summary(p) for p in products],
            next_page_token=following,
            max_page_size=self._catalog.max_page_size,
        )

    def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: Any
    ) -> catalog_pb2.GetProductResponse:
        """One product, NOT_FOUND when hidden or absent.

        The operator also gets, whatever the access rules, a product this connector is
        registering with it right now: that is how the index confirms a listing with the
        provider's connector (and the operator holds the listing anyway).
        """
        caller = current_caller()
        if caller.role == Role.OPERATOR.value and self._catalog.registering(request.product_id):
            product = self._catalog.own(request.product_id)
        else:
            product = self._catalog.get_visible(caller, request.product_id)
        return catalog_pb2.GetProductResponse(product=summary(product))


def catalog_service(servicer: CatalogServicer) -> Service:
    """``CatalogService`` with its access table."""
    return Service(
        "tds.v1.CatalogService",
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
        servicer,
        {"ListProducts": Access.MEMBER, "GetProduct": Access.MEMBER},
    )
