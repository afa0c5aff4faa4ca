"""The demo's clicks: what ``tds demo --keep-running`` prints, run as a person would.

A space with the demo's participants and city-gov's important traffic-flow (ent-a holds a
grant for it, as in the demo's public-data scenario). The commands the demo prints are run
as they are printed: ent-a's request and alice's consent by the CLI, then one ``tds
console`` per participant, each signed into by the URL it prints. In the browser, city-gov's
data officer approves the request and watches it reach FINALIZED, then revokes the
contract; alice withdraws her consent; the auditor verifies the revocation's entry in
city-gov's log in the page; the operator grants ent-a a second authorised operation with
the form and revokes it.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.demo.consoles import console_commands, guide, setup_commands
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import registry_client
from tests.console.conftest import screenshot
from tests.integration.test_negotiation import FAR, admin

YEAR = time.gmtime().tm_year
TDS = [sys.executable, "-m", "connector"]


def as_run(command: str) -> list[str]:
    """A printed ``tds …`` line as this interpreter runs it."""
    argv = shlex.split(command)
    assert argv[0] == "tds", command
    return [*TDS, *argv[1:]]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("demo-console")
    participants = [
        ("city-gov", Role.GOVERNMENT),
        ("ent-a", Role.ENTERPRISE),
        ("alice", Role.INDIVIDUAL),
        ("hospital", Role.ENTERPRISE),
        ("auditor", Role.AUDITOR),
    ]
    with LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        for who in ("city-gov", "ent-a", "alice", "hospital"):
            sp.start_connector(who)
        sp.enrol("auditor", "")
        sp.write_config("auditor", "", sp.registry_address)
        traffic = {
            "id": "traffic-flow",
            "title": "道路交通流量 / road traffic flow",
            "grade": "important",
            "domain": "transport",
            "tags": ["traffic"],
            "source": {"kind": "file", "path": "traffic-flow.csv"},
            "offers": [
                {
                    "id": "standard",
                    "purposes": ["traffic-analytics"],
                    "valid_from_ns": 0,
                    "valid_until_ns": FAR,
                    "max_transfers": 10,
                }
            ],
        }
        admin(sp, "city-gov").AddProduct(
            admin_pb2.AddProductRequest(description=json.dumps(traffic), format="json"),
            timeout=10,
        )
        now = time.time_ns()
        sp.grant(
            "ent-a",
            scope=["traffic"],
            purposes=["traffic-analytics"],
            start_ns=now - 86400 * 10**9,
            end_ns=now + 3 * 365 * 86400 * 10**9,
            body="City Big Data Bureau",
        )
        sp.refresh()  # ent-a's next membership token carries the grant
        yield sp


class Consoles:
    """``tds console`` processes, one per participant, started from the demo's lines."""

    def __init__(self, space: LocalSpace) -> None:
        self.commands = {
            who: command
            for who, _, command in console_commands(space.root, space.manifest.operator_id)
        }
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.urls: dict[str, str] = {}

    def url(self, who: str) -> str:
        """The URL ``who``'s console printed (started on first use)."""
        if who not in self.urls:
            proc = subprocess.Popen(
                as_run(self.commands[who]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            self.procs[who] = proc
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert "/?token=" in line, (line, proc.stderr.read() if proc.poll() else "")
            self.urls[who] = line
        return self.urls[who]

    def base(self, who: str) -> str:
        return self.url(who).split("/?token=")[0]

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            _, err = proc.communicate(timeout=20)
            assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def consoles(demo: LocalSpace) -> Iterator[Consoles]:
    started = Consoles(demo)
    yield started
    started.stop()


def test_the_demo_prints_a_console_for_each_role(demo: LocalSpace) -> None:
    printed = guide(demo.root, demo.manifest.operator_id, YEAR)
    for who in (demo.manifest.operator_id, "city-gov", "alice", "auditor", "ent-a"):
        assert f"tds console --config {demo.root / f'{who}.toml'}" in printed
    for command in setup_commands(demo.root, YEAR):
        assert command in printed


def test_approve_revoke_withdraw_and_audit_by_clicking(
    page: Any, demo: LocalSpace, consoles: Consoles
) -> None:
    from playwright.sync_api import expect

    for command in setup_commands(demo.root, YEAR):  # something to click on
        done = subprocess.run(as_run(command), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    # city-gov's data officer approves ent-a's request; it reaches FINALIZED.
    page.goto(consoles.url("city-gov"))
    city = consoles.base("city-gov")
    page.goto(f"{city}/requests")
    row = page.locator("#waiting tr", has_text="traffic-flow").filter(has_text="ent-a")
    expect(row).to_have_count(1, timeout=20_000)
    pid = row.get_attribute("data-pid")
    row.locator('input[name="reason"]').fill("在授权范围内 / within the grant")
    screenshot(page, "demo-requests")
    row.get_by_role("button", name="批准 / approve").click()
    expect(page.locator(f'tr[data-pid="{pid}"] td.state')).to_have_text("FINALIZED", timeout=30_000)
    info = admin(demo, "city-gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    assert info.state == "FINALIZED" and info.agreement_id

    # ... and revokes the contract.
    page.goto(f"{city}/agreements")
    row = page.locator(f'tr[data-agreement="{info.agreement_id}"]')
    row.locator('input[name="reason"]').fill("演示撤销 / revoked in the demo")
    row.get_by_role("button", name="撤销 / revoke").click()
    expect(page.locator(f'tr[data-agreement="{info.agreement_id}"]')).to_contain_text("REVOKED")
    screenshot(page, "demo-agreements")
    after = admin(demo, "city-gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    assert after.revocation

    # alice withdraws the consent the printed command gave.
    [consent] = [
        c
        for c in admin(demo, "alice")
        .ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
        .consents
        if c.recipient == "hospital"
    ]
    page.goto(consoles.url("alice"))
    page.goto(f"{consoles.base('alice')}/consents")
    row = page.locator(f'tr[data-consent="{consent.id}"]')
    expect(row.locator("td.state")).to_have_text("in force")
    row.locator('input[name="reason"]').fill("我改主意了 / I changed my mind")
    row.get_by_role("button", name="撤回 / withdraw").click()
    expect(page.locator(f'tr[data-consent="{consent.id}"] td.state')).to_contain_text("withdrawn")
    [withdrawn] = [
        c
        for c in admin(demo, "alice")
        .ListConsents(admin_pb2.ListConsentsRequest(include_withdrawn=True), timeout=10)
        .consents
        if c.id == consent.id
    ]
    assert withdrawn.withdrawn

    # The auditor verifies, in the browser, city-gov's log entry of that revocation.
    page.goto(consoles.url("auditor"))
    page.goto(f"{consoles.base('auditor')}/audit?connector=city-gov")
    revoked = page.locator("#entries tr", has_text=info.agreement_id).filter(
        has_text="agreement.revoked"
    )
    expect(revoked.first).to_be_visible()
    index = revoked.first.get_attribute("data-index")
    page.locator(f'button.verify[data-index="{index}"]').click()
    verdict = page.locator("#verdict")
    expect(verdict).to_have_attribute("data-state", "verified", timeout=20_000)
    expect(verdict).to_contain_text("verified in your browser")
    screenshot(page, "demo-audit")


def test_the_operator_grants_and_revokes_with_the_form(
    page: Any, demo: LocalSpace, consoles: Consoles
) -> None:
    from playwright.sync_api import expect

    operator = demo.manifest.operator_id
    page.goto(consoles.url(operator))
    page.goto(f"{consoles.base(operator)}/grants")
    form = page.locator("#grant-form")
    # Only enterprises and government bodies may operate public data: alice is not offered.
    options = form.locator('select[name="participant"] option')
    assert sorted(options.all_inner_texts()) == [
        "city-gov (government)",
        "ent-a (enterprise)",
        "hospital (enterprise)",
    ]
    form.locator('select[name="participant"]').select_option("ent-a")
    form.locator('input[name="scope"]').fill("parking\uff0ctransport")  # a full-width comma
    form.locator('input[name="purposes"]').fill("parking-analytics")
    form.locator('input[name="end"]').fill(f"{YEAR + 2}-06-30")
    body = "<b>市停车办</b> / Parking Office"
    form.locator('input[name="body"]').fill(body)
    form.get_by_role("button", name="授权 / grant").click()
    expect(page.locator("#notice")).to_contain_text("granted to ent-a")
    client = registry_client(demo.configs["city-gov"])
    try:
        [made] = [g for g in client.list_grants("ent-a") if g.body == body]
    finally:
        client.close()
    assert list(made.scope) == ["parking", "transport"]
    assert list(made.purposes) == ["parking-analytics"]
    assert time.strftime("%Y-%m-%d", time.gmtime(made.end_ns / 1e9)) == f"{YEAR + 2}-06-30"
    row = page.locator(f'tr[data-grant="{made.id}"]')
    expect(row).to_contain_text(body)  # the body is text, never markup
    assert row.locator("b", has_text="市停车办").count() == 0
    screenshot(page, "demo-grants")
    row.locator('input[name="reason"]').fill("试用结束 / trial over")
    row.get_by_role("button", name="撤销 / revoke").click()
    expect(page.locator(f'tr[data-grant="{made.id}"] td.state')).to_contain_text("REVOKED")

    # A term the registry refuses (past five years) is a banner, and no grant is made.
    client = registry_client(demo.configs["city-gov"])
    try:
        before = len(client.list_grants(include_revoked=True))
        page.goto(f"{consoles.base(operator)}/grants")
        form.locator('select[name="participant"]').select_option("city-gov")
        form.locator('input[name="scope"]').fill("traffic")
        form.locator('input[name="purposes"]').fill("traffic-analytics")
        form.locator('input[name="end"]').fill(f"{YEAR + 9}-01-01")
        form.locator('input[name="body"]').fill("City Big Data Bureau")
        form.get_by_role("button", name="授权 / grant").click()
        expect(page.locator(".banner.bad")).to_contain_text("at most 5 years")
        assert len(client.list_grants(include_revoked=True)) == before
    finally:
        client.close()
