"""DSP catalog protocol, HTTPS binding (DSP 2025-1 §6): what ``ListProducts`` and
``GetProduct`` answer over gRPC, as ``Catalog`` and ``Dataset`` messages.

The access policy filters every product for the verified caller exactly as on gRPC: the
same :meth:`Catalog.page` (one access decision per page, pages in product-id order) and
:meth:`Catalog.get_visible`; a hidden dataset is as missing as one that does not exist. The
next page is linked with ``Link: <…/catalog/request?continuationToken=…>; rel="next"``,
the token being the catalog's own page token (opaque, bound to the caller; see
connector.catalog.paging). Those tokens only go forward, so no ``rel="previous"`` link is
given: a client goes back by starting again. A page may be short, or hold no dataset, and
still link a next one.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from aiohttp import web

from connector.catalog.paging import Filters
from connector.catalog.products import Product
from connector.dsp.server import Exchange
from connector.errors import InvalidRequest
from connector.negotiation.dsp import catalog_message, dataset_message

__all__ = ["catalog_routes", "dataset_product_id"]

_DATASET_PREFIX = "urn:tds:dataset:"


def dataset_product_id(dataset_id: str) -> str:
    """The product a DSP dataset id names (``urn:tds:dataset:ID`` or the bare id)."""
    return dataset_id.removeprefix(_DATASET_PREFIX)


def catalog_routes(exchange: Exchange) -> list[web.RouteDef]:
    """``POST /catalog/request`` and ``GET /catalog/datasets/{id}``."""

    async def request_catalog(request: web.Request) -> web.Response:
        """DSP §6.3.1 catalog request endpoint."""
        caller = exchange.caller(request)  # before the body is read
        raw = await exchange.body(request)
        token = request.query.get("continuationToken", "")

        def work() -> tuple[list[Product], str]:  # in one hand-over to the worker threads
            message = exchange.read(raw, "CatalogRequestMessage")
            if message.get("filter"):
                # The specification: a filter an implementation does not support is a 400.
                raise InvalidRequest('this catalog takes no filter; send "filter": [] or none')
            return exchange.catalog.page(
                caller, Filters(), size=exchange.settings.page_size, token=token
            )

        chosen, following = await exchange.run(work)
        document: dict[str, Any] = catalog_message(
            exchange.participant, chosen, exchange.base_url(), space=exchange.space
        )
        response = exchange.answer("Catalog", document)
        if following:
            query = urllib.parse.urlencode({"continuationToken": following})
            response.headers["Link"] = (
                f'<{exchange.base_url()}/catalog/request?{query}>; rel="next"'
            )
        return response

    async def get_dataset(request: web.Request) -> web.Response:
        """DSP §6.3.2 dataset request endpoint."""
        product_id = dataset_product_id(request.match_info["id"])
        product = await exchange.run(
            exchange.catalog.get_visible, exchange.caller(request), product_id
        )
        document = dataset_message(exchange.participant, product, exchange.base_url())
        return exchange.answer("Dataset", document)

    return [
        web.post("/catalog/request", request_catalog),
        web.get("/catalog/datasets/{id}", get_dataset),
    ]
