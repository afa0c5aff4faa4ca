"""The console's charts and searches in a real browser (Debian chromium, Playwright): the log
explorer's search form and the log's growth with its checkpoints, transfers per day and the
streams' rate, the registry's catalog index, an individual's consent form. Screenshots go
to artifacts/console/.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.audit.auditor import fetch_and_witness
from connector.demo.space import LocalSpace
from tests.console.conftest import open_console, screenshot, signed_in
from tests.integration.test_negotiation import admin, product
from tests.support.exchange import agree, publish

pytestmark = pytest.mark.usefixtures("browser")


def test_an_auditor_searches_a_log_and_sees_its_growth(
    page: Any, space: LocalSpace, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    log = space.nodes["gov"].log
    assert log is not None
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    for i in range(40):
        log.record(
            "probe.reading" if i % 4 else "probe.alarm",
            parties=["a"] if i % 3 else ["alice"],
            data={"i": i, "note": hostile},
        )
        if i % 10 == 9:
            # A checkpoint the auditor cosigns every ten entries: the growth line's marks.
            fetch_and_witness(space.configs["aud"], "gov", tmp_path / f"export-{i}")
    bodies = [(i, json.loads(body)) for i, body in log.entries(0, log.size)]
    alarms_of_a = [i for i, b in bodies if b["kind"] == "probe.alarm" and "a" in b["parties"]]
    console = open_console(space, "aud")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/audit?connector=gov")
        # The growth over time, drawn by the server, its checkpoints on the line.
        chart = page.locator("svg#log-timeline")
        expect(chart).to_be_visible()
        assert chart.locator("polyline.growth").count() == 1
        assert chart.locator("circle.cosigned").count() >= 4
        form = page.locator("#log-search")
        form.locator('input[name="kind"]').fill("probe.alarm")
        form.locator('input[name="party"]').fill("a")
        form.get_by_role("button", name="查看 / show").click()
        rows = page.locator("#entries tr[data-index]")
        expect(page.locator("#search-summary")).to_contain_text("newest first")
        shown = [int(rows.nth(i).get_attribute("data-index")) for i in range(rows.count())]
        assert shown == sorted(alarms_of_a, reverse=True) and shown
        expect(rows.first).to_contain_text("probe.alarm")
        expect(rows.first).to_contain_text("<img src=x onerror=")  # text, never markup
        assert page.locator("#entries img").count() == 0 and page.title() != "pwned"
        screenshot(page, "audit-search")
        # A found entry verifies in the page like any other.
        rows.first.get_by_role("button", name="验证 / verify").click()
        expect(page.locator("#verdict")).to_have_attribute("data-state", "verified")
        # A time window after every entry finds none.
        page.goto(f"http://127.0.0.1:{console.port}/audit?connector=gov&since=2099-01-01T00:00")
        expect(page.locator("#search-summary")).to_contain_text("0 found")
    finally:
        console.stop()


def test_a_provider_sees_transfers_per_day(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    (space.root / "per-day.bin").write_bytes(b"bus,stop\n" * 500)
    described = json.loads(product("per-day"))
    described["source"] = {"kind": "file", "path": "per-day.bin"}
    publish(space, "gov", described, space.root)
    agreement = agree(space, "gov", "a", "per-day")
    for _ in range(2):
        [*progress] = admin(space, "a").Transfer(
            admin_pb2.TransferRequest(agreement_id=agreement), timeout=30
        )
        assert progress[-1].event == "completed"
    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/transfers")
        chart = page.locator("svg#transfers-per-day")
        expect(chart).to_be_visible()
        assert chart.locator("g.day").count() == 30
        today = time.strftime("%Y-%m-%d", time.gmtime())
        title = chart.locator("g.day title").last.text_content() or ""
        assert title.startswith(f"{today}: ") and "completed" in title
        assert int(title.split(": ")[1].split(" ")[0]) >= 2
        row = page.locator("#transfers tr", has_text="per-day").first
        expect(row).to_contain_text("4500 / 4500 B")  # progress: all of it arrived
        expect(page.locator("#streams")).to_be_visible()
        screenshot(page, "transfers-per-day")
    finally:
        console.stop()


def test_the_operator_searches_the_catalog_index(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    for pid, title in (("idx-air", "空气质量 / air quality <b>x</b>"), ("idx-bus", "公交 / bus")):
        described = json.loads(product(pid, "important" if pid == "idx-air" else "general"))
        described["title"] = title
        admin(space, "gov").AddProduct(
            admin_pb2.AddProductRequest(description=json.dumps(described), format="json"),
            timeout=10,
        )
        admin(space, "gov").RegisterProduct(
            admin_pb2.RegisterOwnProductRequest(product_id=pid, public=True), timeout=10
        )
    console = open_console(space, space.manifest.operator_id)
    try:
        signed_in(page, console)
        page.get_by_role("link", name="目录索引 / catalog index").click()
        expect(page.locator("#catalog")).to_contain_text("idx-bus")
        search = page.locator("#catalog-search")
        search.locator('input[name="q"]').fill("quality")
        search.get_by_role("button", name="搜索 / search").click()
        table = page.locator("#catalog")
        expect(table).to_contain_text("idx-air")
        expect(table).not_to_contain_text("idx-bus")
        expect(table).to_contain_text("重要数据 / important")
        expect(table).to_contain_text("<b>x</b>")  # text, never markup
        assert table.locator("b").count() == 0
        screenshot(page, "catalog")
    finally:
        console.stop()


def test_an_individual_gives_a_consent_with_the_form(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    console = open_console(space, "alice")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/consents")
        form = page.locator("#consent-form")
        form.locator('input[name="recipient"]').fill("a")
        form.locator('input[name="purposes"]').fill("research")
        form.locator('input[name="method"]').fill("统计分析 / aggregate statistics")
        form.locator('input[name="categories"]').fill("health")
        expires = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 90 * 86400))
        form.locator('input[name="expires"]').fill(expires)
        form.get_by_role("button", name="同意 / give consent").click()
        expect(page.locator("#notice")).to_contain_text("given to a")
        consent_id = (page.locator("#notice").text_content() or "").split(" ")[0]
        row = page.locator(f'tr[data-consent="{consent_id}"]')
        expect(row.locator("td.state")).to_have_text("in force")
        expect(row).to_contain_text("统计分析 / aggregate statistics")
        screenshot(page, "consent-given")
        [stored] = [
            c
            for c in admin(space, "alice")
            .ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
            .consents
            if c.id == consent_id
        ]
        assert stored.recipient == "a" and list(stored.categories) == ["health"]
        # The same form without its CSRF token changes nothing.
        form.locator('input[name="csrf"]').evaluate("e => e.remove()")
        form.locator('input[name="recipient"]').fill("a")
        form.locator('input[name="purposes"]').fill("research")
        form.locator('input[name="method"]').fill("m")
        form.locator('input[name="categories"]').fill("health")
        form.locator('input[name="expires"]').fill(expires)
        count = len(
            admin(space, "alice").ListConsents(admin_pb2.ListConsentsRequest(), timeout=10).consents
        )
        form.get_by_role("button", name="同意 / give consent").click()
        expect(page.locator("#refusal")).to_contain_text("CSRF")
        after = admin(space, "alice").ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
        assert len(after.consents) == count
    finally:
        console.stop()
