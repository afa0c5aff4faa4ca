"""Reports a provider reads in the browser: the disclosure report of public data released
to authorised operators (公共数据授权运营). A space of its own: the grant it needs must not
meet the grant revocations other browser tests make."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.demo.space import LocalSpace
from tests.console.conftest import open_console, screenshot, signed_in
from tests.integration.test_negotiation import admin
from tests.support.exchange import agree, offer, publish

pytestmark = pytest.mark.usefixtures("browser")


def test_a_provider_reads_its_disclosure_report(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    (space.root / "flows.bin").write_bytes(b"time,road\n08:00,Road-1\n" * 64)
    publish(
        space,
        "gov",
        {
            "id": "public-flows",
            "title": "Traffic flows",
            "grade": "general",
            "tags": ["traffic"],
            "source": {"kind": "file", "path": "flows.bin"},
            "offers": [offer(purposes=["traffic-analytics"])],
        },
        space.root,
    )
    admin(space, "gov").RegisterProduct(
        admin_pb2.RegisterOwnProductRequest(product_id="public-flows", public=True), timeout=10
    )
    now_ns = time.time_ns()
    body = "<b>市数据局</b> / City Data Bureau"  # shown as text, as every peer's field
    grant = space.grant(
        "a",
        scope=["traffic"],
        purposes=["traffic-analytics"],
        start_ns=now_ns - 86_400 * 10**9,
        end_ns=now_ns + 365 * 86_400 * 10**9,
        body=body,
    )
    space.refresh()
    agreement = agree(space, "gov", "a", "public-flows", purpose="traffic-analytics")
    [*progress] = admin(space, "a").Transfer(
        admin_pb2.TransferRequest(agreement_id=agreement), timeout=30
    )
    assert progress[-1].event == "completed", progress[-1]
    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/disclosure")
        section = page.locator('section.operator[data-operator="a"]')
        expect(section.locator(".grants")).to_contain_text(body)
        assert section.locator(".grants b").count() == 0
        expect(section.locator(".grants")).to_contain_text(grant.id[:12])
        released = section.locator(f'tr[data-agreement="{agreement}"]')
        expect(released).to_contain_text("public-flows")
        expect(released).to_contain_text("traffic-analytics")
        screenshot(page, "disclosure")
        # The receipt's entry in gov's own log is a link away.
        released.get_by_role("link").first.click()
        expect(page.locator("h1")).to_contain_text("审计日志")
        page.goto(f"http://127.0.0.1:{console.port}/disclosure?year=2001")
        expect(page.locator("#nothing-released")).to_be_visible()
        page.goto(f"http://127.0.0.1:{console.port}/disclosure?year=1")
        expect(page.locator(".banner.bad")).to_contain_text("year must be between")
    finally:
        console.stop()
