"""The console in a real browser (Debian chromium driven by Playwright).

A provider signs in with the printed token, approves a waiting request and watches it
reach FINALIZED, revokes the agreement; an auditor verifies an entry of the provider's log
in the page, and sees a tampered entry refused. Screenshots go to artifacts/console/.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.audit.auditor import fetch_and_witness
from connector.console.app import Console
from connector.demo.space import LocalSpace
from connector.node.clients import registry_client
from tests.console.conftest import open_console, screenshot, signed_in
from tests.integration.test_approval import waiting
from tests.integration.test_negotiation import admin, product, wait
from tests.support.exchange import agree, entries, offer, publish

pytestmark = pytest.mark.usefixtures("browser")


def test_the_token_signs_in_once_and_a_wrong_one_is_refused(
    page: Any, provider_console: Console
) -> None:
    from playwright.sync_api import expect

    page.goto(f"http://127.0.0.1:{provider_console.port}/products")
    expect(page.locator("#refusal")).to_contain_text("No session")
    page.goto(f"http://127.0.0.1:{provider_console.port}/?token=wrong")
    expect(page.locator("#refusal")).to_contain_text("wrong or was already used")
    screenshot(page, "refused-token")
    signed_in(page, provider_console)
    assert page.url.endswith("/products")
    expect(page.locator("#products")).to_contain_text("air-quality")
    expect(page.locator("#products")).to_contain_text("重要数据 / important")
    # The cookie is not readable by scripts in the page.
    assert page.evaluate("document.cookie") == ""
    screenshot(page, "products")
    for path, name in (("/transfers", "transfers"), ("/metering", "metering")):
        page.goto(f"http://127.0.0.1:{provider_console.port}{path}")
        expect(page.locator(f"#{name}")).to_be_visible()
        screenshot(page, name)


def test_a_form_posted_without_the_csrf_token_is_refused(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        pid = waiting(space, "a", "air-quality")
        page.goto(f"http://127.0.0.1:{console.port}/requests")
        row = page.locator(f'tr[data-pid="{pid}"]')
        row.locator('input[name="csrf"]').evaluate("e => e.remove()")
        row.get_by_role("button", name="批准 / approve").click()
        expect(page.locator("#refusal")).to_contain_text("CSRF")
        info = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        assert info.state == "REQUESTED"  # nothing was done
        admin(space, "gov").RejectNegotiation(
            admin_pb2.NegotiationRef(pid=pid, reason="test cleanup"), timeout=10
        )
    finally:
        console.stop()


def test_approve_a_waiting_request_then_revoke_the_contract(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        pid = waiting(space, "a", "air-quality")
        page.goto(f"http://127.0.0.1:{console.port}/requests")
        row = page.locator(f'tr[data-pid="{pid}"]')
        expect(row).to_contain_text("research")
        screenshot(page, "requests")
        row.locator('input[name="reason"]').fill("用途符合授权 / purpose fits the grant")
        row.get_by_role("button", name="批准 / approve").click()
        # The negotiations page refreshes itself until the contract is final.
        done = page.locator(f'tr[data-pid="{pid}"] td.state')
        expect(done).to_have_text("FINALIZED", timeout=20_000)
        screenshot(page, "negotiations")
        info = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        assert info.state == "FINALIZED" and info.agreement_id

        page.goto(f"http://127.0.0.1:{console.port}/agreements")
        row = page.locator(f'tr[data-agreement="{info.agreement_id}"]')
        row.locator('input[name="reason"]').fill("数据主体撤回同意 / consent withdrawn")
        row.get_by_role("button", name="撤销 / revoke").click()
        expect(page.locator(f'tr[data-agreement="{info.agreement_id}"]')).to_contain_text("REVOKED")
        screenshot(page, "agreements")
        after = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        payload = json.loads(after.revocation)["payload"]
        signed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert signed["reason"] == "数据主体撤回同意 / consent withdrawn"  # the typed reason
    finally:
        console.stop()


def test_reject_with_a_reason_the_consumer_hears(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        pid = waiting(space, "a", "air-quality")
        page.goto(f"http://127.0.0.1:{console.port}/requests")
        row = page.locator(f'tr[data-pid="{pid}"]')
        reason = "<b>用途不符</b> / purpose does not fit"
        row.locator('input[name="reason"]').fill(reason)
        row.get_by_role("button", name="拒绝 / reject").click()
        state = page.locator(f'tr[data-pid="{pid}"] td.state')
        expect(state).to_contain_text("TERMINATED")
        expect(state).to_contain_text(reason)  # a reason is text, never markup
        assert page.locator(f'tr[data-pid="{pid}"] td.state b').count() == 0
        decided = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        assert decided.state == "TERMINATED" and list(decided.reasons) == [reason]
        heard = wait(space, "a", decided.counterparty_pid, "TERMINATED")
        assert list(heard.reasons) == [reason]
    finally:
        console.stop()


def test_an_individual_withdraws_a_consent(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    granted = admin(space, "alice").GrantConsent(
        admin_pb2.GrantConsentRequest(
            recipient="a",
            purposes=["research"],
            method="aggregate statistics only",
            categories=["health"],
            expires_ns=time.time_ns() + 86400 * 10**9,
        ),
        timeout=10,
    )
    console = open_console(space, "alice")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/consents")
        row = page.locator(f'tr[data-consent="{granted.id}"]')
        expect(row.locator("td.state")).to_have_text("in force")
        screenshot(page, "consents")
        row.locator('input[name="reason"]').fill("不再参与研究 / no longer taking part")
        row.get_by_role("button", name="撤回 / withdraw").click()
        expect(page.locator("#notice")).to_contain_text(f"{granted.id} withdrawn")
        expect(page.locator(f'tr[data-consent="{granted.id}"] td.state')).to_contain_text(
            "withdrawn"
        )
        [after] = [
            c
            for c in admin(space, "alice")
            .ListConsents(admin_pb2.ListConsentsRequest(include_withdrawn=True), timeout=10)
            .consents
            if c.id == granted.id
        ]
        assert after.withdrawn and after.withdrawal
    finally:
        console.stop()


def test_the_operator_sees_participants_and_revokes_a_grant(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    now = time.time_ns()
    grant = space.grant(
        "a",
        scope=["traffic"],
        purposes=["traffic-analytics"],
        start_ns=now,
        end_ns=now + 365 * 86400 * 10**9,
        body="市数据局 / City Data Bureau",
    )
    console = open_console(space, space.manifest.operator_id)
    try:
        signed_in(page, console)
        assert page.url.endswith("/participants")  # the operator's console starts here
        for who in ("gov", "a", "alice", "aud"):
            expect(page.locator(f'tr[data-participant="{who}"]')).to_contain_text("active")
        screenshot(page, "participants")
        page.goto(f"http://127.0.0.1:{console.port}/grants")
        row = page.locator(f'tr[data-grant="{grant.id}"]')
        expect(row).to_contain_text("City Data Bureau")
        row.locator('input[name="reason"]').fill("授权期内违规 / broke the grant's terms")
        row.get_by_role("button", name="撤销 / revoke").click()
        expect(page.locator(f'tr[data-grant="{grant.id}"] td.state')).to_contain_text("REVOKED")
        screenshot(page, "grants")
        client = registry_client(space.configs["gov"])
        try:
            [after] = [g for g in client.list_grants(include_revoked=True) if g.id == grant.id]
        finally:
            client.close()
        assert after.revoked and after.revoked_reason == "授权期内违规 / broke the grant's terms"
    finally:
        console.stop()


def test_a_transfer_shows_with_its_receipt_and_metering(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    (space.root / "counts.bin").write_bytes(b"stop,boardings\n" * 4096)
    described = json.loads(product("counts"))
    described["source"] = {"kind": "file", "path": "counts.bin"}
    publish(space, "gov", described, space.root)
    agreement = agree(space, "gov", "a", "counts")
    events = [
        p.event
        for p in admin(space, "a").Transfer(
            admin_pb2.TransferRequest(agreement_id=agreement), timeout=60
        )
    ]
    assert events[-1] == "completed", events
    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/transfers")
        row = page.locator("#transfers tr", has_text="counts")
        expect(row).to_contain_text("completed")
        expect(row).to_contain_text("双签 / dual-signed")
        screenshot(page, "transfers")
        page.goto(f"http://127.0.0.1:{console.port}/metering")
        row = page.locator("#metering tr", has_text=agreement)
        expect(row).to_contain_text("1 / 3")  # one transfer of the offer's three
        screenshot(page, "metering")
    finally:
        console.stop()


def test_peer_controlled_text_is_shown_never_run(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    hostile = (
        '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
    )
    described = json.loads(product("hostile-title"))
    described["title"] = hostile
    admin(space, "gov").AddProduct(
        admin_pb2.AddProductRequest(description=json.dumps(described), format="json"), timeout=10
    )
    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        expect(page.locator("#products")).to_contain_text(hostile)
        assert page.title() != "pwned"
        assert page.locator("#products img").count() == 0
    finally:
        console.stop()


def test_an_entry_verifies_in_the_browser_and_a_tampered_one_fails(
    page: Any, space: LocalSpace, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    log = space.nodes["gov"].log
    assert log is not None
    while log.size < 5:  # run alone, the log holds only the two products' entries
        log.record("test.entry", parties=["a"], data={"note": "<i>not markup</i>"})
    index = log.size // 2  # an entry with a non-trivial proof
    # The auditor witnesses gov's log first, as 'tds audit fetch' does: its cosignature
    # then shows beside the log's own signature.
    fetch_and_witness(space.configs["aud"], "gov", tmp_path / "export")
    console = open_console(space, "aud", insecure_test_hooks=True)
    try:
        signed_in(page, console)
        assert page.url.endswith("/audit")  # an auditor runs no connector
        page.goto(f"http://127.0.0.1:{console.port}/audit?connector=gov&start=0")
        expect(page.locator("#checkpoints")).to_contain_text("tds/city/aud, tds/city/gov")
        # The log's growth is drawn: one bar a checkpoint, the cosigned ones marked so.
        assert page.locator("#log-growth rect.cosigned").count() >= 1
        page.locator(f'button.verify[data-index="{index}"]').click()
        verdict = page.locator("#verdict")
        expect(verdict).to_have_attribute("data-state", "verified")
        expect(verdict).to_contain_text("verified in your browser")
        screenshot(page, "audit-verified")

        page.goto(f"http://127.0.0.1:{console.port}/audit?connector=gov&start=0&tamper=1")
        page.locator(f'button.verify[data-index="{index}"]').click()
        expect(verdict).to_have_attribute("data-state", "failed")
        expect(verdict).to_contain_text("does not lead to the checkpoint's root")
        expect(verdict).not_to_contain_text("verified in your browser")
        screenshot(page, "audit-tampered")
    finally:
        console.stop()


def test_the_tamper_hook_is_off_unless_asked(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    console = open_console(space, "aud")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/audit?connector=gov&start=0&tamper=1")
        page.locator('button.verify[data-index="0"]').click()
        expect(page.locator("#verdict")).to_have_attribute("data-state", "verified")
    finally:
        console.stop()


def test_a_consumer_sees_its_holdings_obligations_and_receipts(
    page: Any, space: LocalSpace
) -> None:
    from playwright.sync_api import expect

    (space.root / "kept-counts.csv").write_text("hour,count\n08,12\n")
    three_days_ns = time.time_ns() + 3 * 86400 * 10**9
    obligations = {"delete_after_ns": three_days_ns, "delete_on_revocation": True}
    publish(
        space,
        "gov",
        {
            "id": "kept-counts",
            "title": "计数 / counts",
            "grade": "general",
            "source": {"kind": "file", "path": "kept-counts.csv"},
            "offers": [offer(obligations=obligations)],
        },
        space.root,
    )
    agreement = agree(space, "gov", "a", "kept-counts")
    [*progress] = admin(space, "a").Transfer(
        admin_pb2.TransferRequest(agreement_id=agreement), timeout=30
    )
    final = progress[-1]
    assert final.event == "completed", final
    console = open_console(space, "a")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/holdings")
        row = page.locator(f'tr[data-transfer="{final.transfer_id}"]')
        expect(row).to_contain_text(agreement)
        # The countdown: just under three days left, ticking in the page.
        expect(row.locator(".countdown")).to_contain_text("2 d 23 h left")
        expect(row).to_contain_text("delete_on_revocation")
        receipt = row.locator(".receipt")
        expect(receipt).to_have_attribute("data-receipt", final.receipt_id)
        expect(receipt).to_contain_text("双签 / dual-signed")
        expect(receipt).to_contain_text("provider gov")
        screenshot(page, "holdings")
        page.goto(f"http://127.0.0.1:{console.port}/receipts")
        row = page.locator(f'tr[data-transfer="{final.transfer_id}"]')
        expect(row.locator(".receipt")).to_have_attribute("data-receipt", final.receipt_id)
        screenshot(page, "receipts")
        # The provider's log entry the receipt names opens on the audit page.
        row.get_by_role("link", name="gov #").click()
        expect(page.locator("h1")).to_contain_text("审计日志")
    finally:
        console.stop()


def test_a_negotiation_s_transitions_are_drawn_as_a_timeline(page: Any, space: LocalSpace) -> None:
    from playwright.sync_api import expect

    agreement = agree(space, "gov", "a", "bus-stops")
    [mine] = [
        n
        for n in admin(space, "gov")
        .ListNegotiations(admin_pb2.ListNegotiationsRequest(agreements=True), timeout=10)
        .negotiations
        if n.agreement_id == agreement
    ]
    logged = [
        (e["data"]["to"], e["index"])
        for e in entries(space, "gov", "negotiation.transition")
        if e["data"]["pid"] == mine.pid
    ]
    assert logged[0][0] == "REQUESTED" and logged[-1][0] == "FINALIZED"
    console = open_console(space, "gov")
    try:
        signed_in(page, console)
        page.goto(f"http://127.0.0.1:{console.port}/negotiations")
        page.locator(f'tr[data-pid="{mine.pid}"] a').click()
        svg = page.locator("svg#timeline")
        expect(svg).to_be_visible()
        steps = svg.locator("g.step")
        drawn = [
            (steps.nth(i).get_attribute("data-state"), steps.nth(i).get_attribute("data-log-index"))
            for i in range(steps.count())
        ]
        assert drawn == [(state, str(index)) for state, index in logged]
        assert svg.locator("circle").count() == len(logged)
        assert svg.locator("text.gap").count() == len(logged) - 1  # the time between steps
        screenshot(page, "timeline")
        # No script drew it: the page's answer already holds the SVG.
        html = page.request.get(page.url).text()
        assert 'id="timeline"' in html and html.count("<circle") == len(logged)
        # A made-up id, markup included, is a banner with the id as text.
        page.goto(f"http://127.0.0.1:{console.port}/negotiations/%3Cb%3Ex%3C%2Fb%3E")
        expect(page.locator(".banner.bad")).to_contain_text("<b>x</b>")
        assert page.locator(".banner.bad b").count() == 0
    finally:
        console.stop()


def test_an_auditor_reconciles_two_parties_receipts(
    page: Any, space: LocalSpace, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    from connector.audit.receipts import Receipt, countersign_receipt, sign_receipt
    from connector.audit.verify import reconcile
    from tests.integration.test_audit import signing_key

    (space.root / "reconciled.csv").write_text("hour,count\n08,12\n")
    publish(
        space,
        "gov",
        {
            "id": "reconciled",
            "title": "对账 / reconciled",
            "grade": "general",
            "source": {"kind": "file", "path": "reconciled.csv"},
            "offers": [offer()],
        },
        space.root,
    )
    agreement = agree(space, "gov", "a", "reconciled")
    [*progress] = admin(space, "a").Transfer(
        admin_pb2.TransferRequest(agreement_id=agreement), timeout=30
    )
    assert progress[-1].event == "completed", progress[-1]
    # A receipt both parties signed that only gov's log holds (a lost entry on a's side):
    # the transfer id is markup, to be shown as text.
    gov_log = space.nodes["gov"].log
    assert gov_log is not None
    forged = Receipt(
        agreement=agreement,
        transfer="<b>t-lost</b>",
        product="reconciled",
        provider="gov",
        consumer="a",
        size=18,
        sha256="ab" * 32,
        started_ms=1_800_000_000_000,
        ended_ms=1_800_000_001_000,
        provider_log_index=gov_log.size,
        consumer_log_index=0,
    )
    keys = {p: signing_key(space, p).public_key() for p in ("gov", "a")}
    signed = countersign_receipt(
        sign_receipt(forged, signing_key(space, "a")), signing_key(space, "gov"), keys.__getitem__
    )
    gov_log.record("transfer.receipt", parties=["a"], data={"receipt": signed})
    # What 'tds audit fetch' then 'tds audit reconcile' say of the same two logs.
    for who in ("gov", "a"):
        fetch_and_witness(space.configs["aud"], who, tmp_path / who, cosign=False)
    expected = reconcile(tmp_path / "gov", tmp_path / "a")
    assert expected["only_in_a"] == [[agreement, "<b>t-lost</b>"]] and expected["matched"] >= 1

    console = open_console(space, "aud")
    try:
        signed_in(page, console)
        page.get_by_role("link", name="回执对账 / reconcile receipts").click()
        form = page.locator("#reconcile-form")
        form.locator('input[name="a"]').fill("gov")
        form.locator('input[name="b"]').fill("a")
        form.get_by_role("button", name="对账 / reconcile").click()
        verdict = page.locator("#reconciled")
        expect(verdict).to_have_attribute("data-state", "failed", timeout=30_000)
        expect(verdict).to_contain_text(f"{expected['matched']} 张相符 / match, 1 张不符")
        lost = page.locator('#mismatches tr[data-problem="only_in_a"]')
        expect(lost).to_have_count(1)
        expect(lost).to_contain_text("<b>t-lost</b>")  # text, never markup
        expect(lost).to_contain_text("only in gov's log")
        assert lost.locator("b").count() == 0
        screenshot(page, "reconcile")
        # The same question from the other side: a's receipts against gov's.
        page.goto(f"http://127.0.0.1:{console.port}/reconcile?a=a&b=gov")
        expect(page.locator('#mismatches tr[data-problem="only_in_b"]')).to_have_count(1)
        # One party named twice is refused, saying why.
        page.goto(f"http://127.0.0.1:{console.port}/reconcile?a=gov&b=gov")
        expect(page.locator(".banner.bad")).to_contain_text("two different parties")
        # Only directory ids: an address would send the auditor's token anywhere, and the
        # name is a folder of the scratch directory.
        for bad in ("gov@127.0.0.1:1", "../gov"):
            page.goto(f"http://127.0.0.1:{console.port}/reconcile?a={bad}&b=a")
            expect(page.locator(".banner.bad")).to_contain_text("participant id")
    finally:
        console.stop()
