"""DSP catalog protocol, HTTPS binding (DSP 2025-1 §6): what ``ListProducts`` and
``GetProduct`` answer over gRPC, as ``Catalog`` and ``Dataset`` messages.

The access policy filters every product for the verified caller exactly as on gRPC (the
same :meth:`Catalog.visible_to` and :meth:`Catalog.get_visible`); a hidden dataset is as
missing as one that does not exist. Pages are cut in product-id order and linked with
``Link`` headers (``rel="next"`` / ``rel="previous"``) whose continuation token is the id
the page ends (or starts) at, so a product added meanwhile shifts nothing already seen.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from connector.catalog.products import Product
from connector.dsp.server import Exchange
from connector.errors import InvalidRequest
from connector.negotiation.dsp import catalog_message, dataset_message

__all__ = ["catalog_routes", "dataset_product_id"]

_DATASET_PREFIX = "urn:tds:dataset:"


def dataset_product_id(dataset_id: str) -> str:
    """The product a DSP dataset id names (``urn:tds:dataset:ID`` or the bare id)."""
    return dataset_id.removeprefix(_DATASET_PREFIX)


def _token(direction: str, product_id: str) -> str:
    raw = json.dumps([direction, product_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_token(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        direction, product_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidRequest(
            "continuationToken is not one this catalog issued; follow the Link header"
        ) from None
    if direction not in ("after", "before") or not isinstance(product_id, str):
        raise InvalidRequest(
            "continuationToken is not one this catalog issued; follow the Link header"
        )
    return direction, product_id


def page(
    products: list[Product], size: int, token: str
) -> tuple[list[Product], str | None, str | None]:
    """One page of ``products`` (sorted by id) and the tokens of the next and previous."""
    ordered = sorted(products, key=lambda p: p.id)
    if not token:
        chosen = ordered[:size]
    else:
        direction, mark = _read_token(token)
        if direction == "after":
            chosen = [p for p in ordered if p.id > mark][:size]
        else:
            chosen = [p for p in ordered if p.id < mark][-size:]
    if not chosen:
        return [], None, None
    first, last = chosen[0].id, chosen[-1].id
    following = _token("after", last) if any(p.id > last for p in ordered) else None
    preceding = _token("before", first) if any(p.id < first for p in ordered) else None
    return chosen, following, preceding


def catalog_routes(exchange: Exchange) -> list[web.RouteDef]:
    """``POST /catalog/request`` and ``GET /catalog/datasets/{id}``."""

    async def request_catalog(request: web.Request) -> web.Response:
        """DSP §6.3.1 catalog request endpoint."""
        caller = await exchange.caller(request)
        message = await exchange.message(request, "CatalogRequestMessage")
        if message.get("filter"):
            # The specification: a filter an implementation does not support is a 400.
            raise InvalidRequest('this catalog takes no filter; send "filter": [] or none')
        token = request.query.get("continuationToken", "")
        visible = await exchange.run(exchange.catalog.visible_to, caller)
        chosen, following, preceding = page(visible, exchange.settings.page_size, token)
        document: dict[str, Any] = catalog_message(
            exchange.participant, chosen, exchange.base_url(), space=exchange.space
        )
        response = exchange.answer("Catalog", document)
        here = f"{exchange.base_url()}/catalog/request?continuationToken="
        links = []
        if preceding:
            links.append(f'<{here}{preceding}>; rel="previous"')
        if following:
            links.append(f'<{here}{following}>; rel="next"')
        if links:
            response.headers["Link"] = ", ".join(links)
        return response

    async def get_dataset(request: web.Request) -> web.Response:
        """DSP §6.3.2 dataset request endpoint."""
        caller = await exchange.caller(request)
        product_id = dataset_product_id(request.match_info["id"])
        product = await exchange.run(exchange.catalog.get_visible, caller, product_id)
        document = dataset_message(exchange.participant, product, exchange.base_url())
        return exchange.answer("Dataset", document)

    return [
        web.post("/catalog/request", request_catalog),
        web.get("/catalog/datasets/{id}", get_dataset),
    ]
