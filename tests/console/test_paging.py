"""Paged admin lists (what the console reads): pages in order, tokens bound to their list
and filters, the whole list still for callers that do not page, the CLI following pages,
and the console's next/previous links walking them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.console.app import Console
from connector.demo.space import LocalSpace
from tests.console.conftest import open_console
from tests.console.test_access import login, request
from tests.integration.test_negotiation import admin, product

EXTRA = 130
"""Products added to gov's two: more than one default page (100)."""
STARTED = 12
"""Negotiations a starts for gov's general product."""


@pytest.fixture(scope="module")
def paged_space(space: LocalSpace) -> LocalSpace:
    batch = [
        admin_pb2.ProductDescription(description=product(f"p-{i:03d}"), format="json")
        for i in range(EXTRA)
    ]
    admin(space, "gov").AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=30)
    for _ in range(STARTED):
        admin(space, "a").StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider="gov", product_id="bus-stops", offer_id="o1", purpose="research"
            ),
            timeout=10,
        )
    return space


def pages(call: Callable[[str], Any], items: Callable[[Any], list[Any]]) -> Iterator[Any]:
    """Every page's items, following next_page_token."""
    token = ""
    while True:
        resp = call(token)
        yield items(resp)
        token = resp.next_page_token
        if not token:
            return


def test_own_products_come_in_pages_in_id_order(paged_space: LocalSpace) -> None:
    stub = admin(paged_space, "gov")
    whole = stub.ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert not whole.next_page_token and len(whole.products_json) == EXTRA + 2
    walked = list(
        pages(
            lambda t: stub.ListOwnProducts(
                admin_pb2.ListOwnProductsRequest(page_size=40, page_token=t), timeout=10
            ),
            lambda r: [json.loads(p)["id"] for p in r.products_json],
        )
    )
    assert [len(p) for p in walked] == [40, 40, 40, 12]
    ids = [i for page in walked for i in page]
    assert ids == sorted(ids) == sorted(json.loads(p)["id"] for p in whole.products_json)
    first = stub.ListOwnProducts(admin_pb2.ListOwnProductsRequest(page_size=0), timeout=10)
    assert len(first.products_json) == 100 and first.next_page_token
    assert first.max_page_size == 1000


def test_negotiations_come_in_pages_newest_first(paged_space: LocalSpace) -> None:
    stub = admin(paged_space, "a")
    whole = stub.ListNegotiations(admin_pb2.ListNegotiationsRequest(), timeout=10)
    walked = list(
        pages(
            lambda t: stub.ListNegotiations(
                admin_pb2.ListNegotiationsRequest(page_size=5, page_token=t), timeout=10
            ),
            lambda r: [n.pid for n in r.negotiations],
        )
    )
    assert len(walked) == -(-len(whole.negotiations) // 5) and len(whole.negotiations) >= STARTED
    assert [p for page in walked for p in page] == [n.pid for n in whole.negotiations]
    agreed = list(
        pages(
            lambda t: stub.ListNegotiations(
                admin_pb2.ListNegotiationsRequest(agreements=True, page_size=5, page_token=t),
                timeout=10,
            ),
            lambda r: [n.agreement_id for n in r.negotiations],
        )
    )
    assert all(a for page in agreed for a in page)


def test_a_token_works_only_for_its_list_and_filters(paged_space: LocalSpace) -> None:
    stub = admin(paged_space, "a")
    token = stub.ListNegotiations(
        admin_pb2.ListNegotiationsRequest(page_size=2), timeout=10
    ).next_page_token
    assert token
    refused: list[Callable[[], Any]] = [
        lambda: stub.ListNegotiations(
            admin_pb2.ListNegotiationsRequest(agreements=True, page_token=token), timeout=10
        ),
        lambda: stub.ListTransfers(admin_pb2.ListTransfersRequest(page_token=token), timeout=10),
        lambda: stub.ListNegotiations(
            admin_pb2.ListNegotiationsRequest(page_token=token[:-2] + "AA"), timeout=10
        ),
        # gov's connector: another key (and another caller's list)
        lambda: admin(paged_space, "gov").ListNegotiations(
            admin_pb2.ListNegotiationsRequest(page_token=token), timeout=10
        ),
        lambda: stub.ListNegotiations(admin_pb2.ListNegotiationsRequest(page_size=-1), timeout=10),
        lambda: stub.ListOwnProducts(admin_pb2.ListOwnProductsRequest(page_size=1001), timeout=10),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    # The token itself still works with its own list and filters: the page after the first.
    whole = stub.ListNegotiations(admin_pb2.ListNegotiationsRequest(), timeout=10).negotiations
    again = stub.ListNegotiations(admin_pb2.ListNegotiationsRequest(page_token=token), timeout=10)
    assert [n.pid for n in again.negotiations] == [n.pid for n in whole[2:102]]


def test_the_cli_follows_pages_to_the_end(paged_space: LocalSpace) -> None:
    config = str(paged_space.root / "gov.toml")
    result = subprocess.run(
        [sys.executable, "-m", "connector", "product", "list", "--json", "--config", config],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ids = [p["id"] for p in json.loads(result.stdout)]
    assert len(ids) == EXTRA + 2 == len(set(ids))


def test_the_console_walks_pages_with_next_and_previous(paged_space: LocalSpace) -> None:
    console: Console = open_console(paged_space, "gov")
    try:
        cookie, _ = login(console)

        def shown(path: str) -> tuple[list[str], dict[str, str]]:
            status, _, page = request(console, "GET", path, cookie=cookie)
            assert status == 200, page
            ids = re.findall(r"<tr>\s*<td><code>([^<]+)</code>", page)
            links = dict(re.findall(r'rel="(prev|next)" href="([^"]+)"', page))
            return ids, {k: v.replace("&amp;", "&") for k, v in links.items()}

        first, links = shown("/products")
        assert len(first) == 100 and "prev" not in links and "next" in links
        second, links2 = shown("/products" + links["next"])
        assert len(second) == EXTRA + 2 - 100 and "next" not in links2
        assert set(first).isdisjoint(second) and first + second == sorted(first + second)
        back, _ = shown("/products" + links2["prev"])
        assert back == first
        # A page id the session never gave (or forgot) starts again at the first page.
        again, _ = shown("/products?page=made-up")
        assert again == first
    finally:
        console.stop()
