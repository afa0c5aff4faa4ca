"""The log explorer's search (FindEntries), the charts' aggregates (TransferActivity), the
catalog index page and the consent form, over plain HTTP and gRPC against real connectors.

The browser side of the same pages is in ``test_browser_explore.py``.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import time
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, audit_pb2
from connector.audit import log as log_module
from connector.console.app import Console
from connector.console.backend import AdminBackend
from connector.demo.space import LocalSpace
from connector.transfer.activity import DAY_MS, RATE_WINDOW_MS
from tests.console.conftest import open_console
from tests.console.test_access import login, request
from tests.integration.test_negotiation import admin, product
from tests.support.exchange import agree, publish


def probes(space: LocalSpace) -> list[tuple[int, dict[str, Any]]]:
    """Three groups of probe entries in gov's log, a little apart in time: (index, body)
    of each, oldest first. Kinds and parties vary so each filter has something to drop."""
    log = space.nodes["gov"].log
    assert log is not None
    for group in range(3):
        for i in range(6):
            log.record(
                "probe.even" if i % 2 == 0 else "probe.odd",
                parties=["a"] if i % 3 == 0 else ["alice"],
                data={"group": group, "i": i},
            )
        time.sleep(0.05)
    found = [
        (i, json.loads(body))
        for i, body in log.entries(0, log.size)
        if json.loads(body)["kind"].startswith("probe.")
    ]
    return found


def auditor_log(space: LocalSpace) -> Any:
    """A stub on gov's AuditService as the auditor (who reads everything), and the backend
    holding its channel (closed with it)."""
    backend = AdminBackend(space.configs["aud"])
    stub, _ = backend._log("gov")
    return stub, backend


def find_all(stub: Any, **search: Any) -> tuple[list[int], int]:
    """Every index FindEntries finds, following searched_from to the end; and the calls."""
    found: list[int] = []
    before, calls = 0, 0
    while True:
        answer = stub.FindEntries(
            audit_pb2.FindEntriesRequest(before=before, limit=4, **search), timeout=10
        )
        calls += 1
        found.extend(e.index for e in answer.entries)
        if not answer.searched_from:
            return found, calls
        before = answer.searched_from


def test_find_entries_by_kind_party_and_time_newest_first(space: LocalSpace) -> None:
    written = probes(space)
    stub, backend = auditor_log(space)
    try:
        odd_a = [i for i, b in written if b["kind"] == "probe.odd" and "a" in b["parties"]]
        found, _ = find_all(stub, kind="probe.odd", party="a")
        assert found == sorted(odd_a, reverse=True) and found
        # A time window: the middle group only (its first and last stamps).
        middle = [(i, b) for i, b in written if b["data"]["group"] == 1]
        since, until = middle[0][1]["time_ms"], middle[-1][1]["time_ms"]
        in_window = [i for i, b in written if since <= b["time_ms"] <= until]
        found, _ = find_all(stub, kind="probe.even", since_ms=since, until_ms=until)
        assert found == sorted(
            (i for i in in_window if written[[w[0] for w in written].index(i)][1]["kind"]
             == "probe.even"),
            reverse=True,
        )  # fmt: skip
        assert all(i in in_window for i in found) and found
        # Nothing of a kind that is not there; and a party named nowhere.
        assert find_all(stub, kind="probe.none")[0] == []
        assert find_all(stub, party="nobody-here")[0] == []
    finally:
        backend.close()


def test_a_rare_match_is_searched_a_stretch_at_a_time_to_the_end(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = probes(space)
    # Three entries a query and no time to go on: each call searches one stretch, says where
    # it stopped, and the next goes on from there; together they find each match once.
    monkeypatch.setattr(log_module, "_FIND_STRETCH", 3)
    monkeypatch.setattr(log_module, "_FIND_BUDGET_S", 0.0)
    stub, backend = auditor_log(space)
    try:
        expected = [i for i, b in written if b["kind"] == "probe.odd" and "a" in b["parties"]]
        log = space.nodes["gov"].log
        assert log is not None
        found, calls = find_all(stub, kind="probe.odd", party="a")
        assert sorted(found) == sorted(expected) and len(set(found)) == len(found)
        assert calls >= log.size // 3  # one stretch of three a call, down to entry 0
    finally:
        backend.close()


def test_a_member_finds_only_entries_naming_it(space: LocalSpace) -> None:
    written = probes(space)
    backend = AdminBackend(space.configs["a"])
    stub, _ = backend._log("gov")
    try:
        # a asks for alice's entries: it may see none of them (they do not name a).
        assert find_all(stub, kind="probe.odd", party="alice")[0] == []
        mine, _ = find_all(stub, kind="probe.even")
        expected = [i for i, b in written if b["kind"] == "probe.even" and "a" in b["parties"]]
        assert set(expected) <= set(mine)
        log = space.nodes["gov"].log
        assert log is not None
        for index in mine:
            assert "a" in log.entry_parties(index)
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("search", "says"),
    [
        ({"limit": 0}, "limit must be 1 to 1000"),
        ({"limit": 1001}, "limit must be 1 to 1000"),
        ({"limit": 5, "before": -1}, "cannot be negative"),
        ({"limit": 5, "since_ms": 10, "until_ms": 5}, "since_ms is after until_ms"),
        ({"limit": 5, "kind": "k" * 65}, "kind is at most 64"),
    ],
)
def test_a_bad_search_is_refused_saying_why(
    space: LocalSpace, search: dict[str, Any], says: str
) -> None:
    stub, backend = auditor_log(space)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.FindEntries(audit_pb2.FindEntriesRequest(**search), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (refused.value.details() or "")
    finally:
        backend.close()


def test_the_explorer_page_searches_and_pages_on(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = probes(space)
    monkeypatch.setattr(log_module, "_FIND_STRETCH", 4)
    monkeypatch.setattr(log_module, "_FIND_BUDGET_S", 0.0)
    console = open_console(space, "aud")
    try:
        session, _ = login(console)
        expected = [i for i, b in written if b["kind"] == "probe.even"]
        seen: list[int] = []
        path = "/audit?connector=gov&kind=probe.even"
        while True:
            status, _, page = request(console, "GET", path, cookie=session)
            assert status == 200, page
            seen += [int(i) for i in re.findall(r'<tr data-index="(\d+)">', page)]
            older = re.search(r'id="older" href="([^"]+)"', page)
            if older is None:
                assert "nothing older" in page
                break
            path = html.unescape(older.group(1))
            assert "kind=probe.even" in path  # the search goes along
        assert sorted(seen) == sorted(expected)
        # The growth chart is drawn on the server: a line, and the checkpoints on it.
        status, _, page = request(console, "GET", "/audit?connector=gov", cookie=session)
        assert 'id="log-timeline"' in page and "<polyline" in page
    finally:
        console.stop()


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("since=2026-12-05&until=2026-12-04", "is after until"),
        ("since=yesterday", "expected a date like"),
        ("before=ten", "before must be a whole number"),
    ],
)
def test_a_bad_search_on_the_page_is_a_banner(space: LocalSpace, query: str, says: str) -> None:
    console = open_console(space, "aud")
    try:
        session, _ = login(console)
        status, _, page = request(console, "GET", f"/audit?connector=gov&{query}", cookie=session)
        assert status == 400 and 'class="banner bad"' in page and says in page
        assert "Traceback" not in page
    finally:
        console.stop()


def test_transfers_per_day_and_a_stream_s_rate_are_aggregated(space: LocalSpace) -> None:
    (space.root / "daily.bin").write_bytes(b"x" * 5000)
    described = json.loads(product("daily"))
    described["source"] = {"kind": "file", "path": "daily.bin"}
    publish(space, "gov", described, space.root)
    agreement = agree(space, "gov", "a", "daily")
    [*progress] = admin(space, "a").Transfer(
        admin_pb2.TransferRequest(agreement_id=agreement), timeout=30
    )
    assert progress[-1].event == "completed"
    # A provider's stream subscription with one window countersigned just now and one an
    # hour ago, written as the stream service keeps them: the rate counts the recent one.
    db = space.nodes["gov"].db
    assert db is not None
    now_ms = int(time.time() * 1000)
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO stream_subscription (agreement_id, role, counterparty, product, state,"
            " reason, acked_sequence, acked_head, next_window, messages, bytes, path,"
            " obligations, updated_ms, deleted_ms) VALUES (?, 'provider', 'a', 'ticks',"
            " 'STARTED', '', 30, '', 2, 30, 3000, '', '{}', ?, 0)",
            ("stream-agreement", now_ms),
        ).close()
        for window, created in ((0, now_ms - 3_600_000), (1, now_ms - 1000)):
            tx.execute(
                "INSERT INTO stream_window (agreement_id, role, window_index, first_sequence,"
                " last_sequence, count, bytes, start_head, head, receipt, created_ms)"
                " VALUES ('stream-agreement', 'provider', ?, ?, ?, 15, 1500, '', '', '{}', ?)",
                (window, window * 15 + 1, window * 15 + 15, created),
            ).close()
    answer = admin(space, "gov").TransferActivity(
        admin_pb2.TransferActivityRequest(days=7), timeout=10
    )
    assert len(answer.days) == 7 and answer.days[-1].day_ms == now_ms // DAY_MS * DAY_MS
    today = answer.days[-1]
    assert today.started >= 1 and today.completed >= 1 and today.completed_bytes >= 5000
    assert all(d.started == 0 for d in answer.days[:-1] if d.day_ms < now_ms - 2 * DAY_MS)
    [stream] = [s for s in answer.streams if s.agreement_id == "stream-agreement"]
    assert (stream.messages, stream.bytes, stream.windows) == (30, 3000, 2)
    assert (stream.recent_messages, stream.recent_bytes) == (15, 1500)
    assert answer.rate_window_ms == RATE_WINDOW_MS
    for days in (0, 367):
        with pytest.raises(grpc.RpcError) as refused:
            admin(space, "gov").TransferActivity(
                admin_pb2.TransferActivityRequest(days=days), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    console = open_console(space, "gov")
    try:
        session, _ = login(console)
        status, _, page = request(console, "GET", "/transfers", cookie=session)
        assert status == 200 and 'id="transfers-per-day"' in page
        assert f"{today.started} started, {today.completed} completed" in page
        assert "0.05 条/秒 msg/s · 5.0 B/s" in page  # 15 messages in five minutes
        assert 'data-refresh="10"' in page  # a stream runs: the page refreshes itself
    finally:
        console.stop()


def test_a_consent_given_with_the_form_needs_the_csrf_token(space: LocalSpace) -> None:
    def count() -> int:
        return len(
            admin(space, "alice")
            .ListConsents(admin_pb2.ListConsentsRequest(include_withdrawn=True), timeout=10)
            .consents
        )

    form = {
        "recipient": "a",
        "purposes": "research, statistics",
        "method": "<b>aggregate</b> only",
        "categories": "health",
        "expires": time.strftime("%Y-%m-%d", time.gmtime(time.time() + 30 * 86400)),
    }
    console = open_console(space, "alice")
    try:
        session, csrf = login(console)
        before = count()
        status, _, page = request(console, "POST", "/consents/grant", cookie=session, form=form)
        assert status == 403 and "CSRF" in page and count() == before
        for missing, says in (("recipient", "give the recipient"), ("expires", "expiry date")):
            bad = {**form, missing: "", "csrf": csrf}
            status, _, page = request(console, "POST", "/consents/grant", cookie=session, form=bad)
            assert status == 400 and says in page and count() == before
        bad = {**form, "expires": "next week", "csrf": csrf}
        status, _, page = request(console, "POST", "/consents/grant", cookie=session, form=bad)
        assert status == 400 and "expected a date like" in page and count() == before
        status, headers, _ = request(
            console, "POST", "/consents/grant", cookie=session, form={**form, "csrf": csrf}
        )
        assert status == 303 and "given%20to%20a" in headers["location"]
        assert count() == before + 1
        [given] = [
            c
            for c in admin(space, "alice")
            .ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
            .consents
            if c.method == "<b>aggregate</b> only"
        ]
        assert list(given.purposes) == ["research", "statistics"]
        status, _, page = request(console, "GET", "/consents", cookie=session)
        assert "&lt;b&gt;aggregate&lt;/b&gt; only" in page  # text, never markup
    finally:
        console.stop()


def test_the_catalog_index_searches_the_registry_in_pages(space: LocalSpace) -> None:
    for pid, title in (("cat-air", "空气 / air <script>x()</script>"), ("cat-bus", "公交 / bus")):
        described = json.loads(product(pid))
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
        session, _ = login(console)
        status, _, page = request(console, "GET", "/participants", cookie=session)
        assert 'href="/catalog"' in page  # on the operator's menu
        status, _, page = request(console, "GET", "/catalog?q=air", cookie=session)
        assert status == 200 and "cat-air" in page and "cat-bus" not in page
        assert "&lt;script&gt;x()&lt;/script&gt;" in page and "<script>x()" not in page
        status, _, page = request(console, "GET", "/catalog?grade=core", cookie=session)
        assert "cat-air" not in page and '<td colspan="7">' in page  # the empty row
    finally:
        console.stop()


def test_the_catalog_pages_keep_the_search(space: LocalSpace, monkeypatch: Any) -> None:
    from connector.console import backend

    for i in range(5):
        pid = f"paged-{i}"
        admin(space, "gov").AddProduct(
            admin_pb2.AddProductRequest(description=product(pid), format="json"), timeout=10
        )
        admin(space, "gov").RegisterProduct(
            admin_pb2.RegisterOwnProductRequest(product_id=pid, public=True), timeout=10
        )
    monkeypatch.setattr(backend, "ROWS", 2)
    console = open_console(space, "gov")
    try:
        session, _ = login(console)
        seen: list[str] = []
        path = "/catalog?q=paged"
        while path:
            status, _, page = request(console, "GET", path, cookie=session)
            assert status == 200, page
            seen += re.findall(r"<code>(paged-\d)</code>", page)
            following = re.search(r'rel="next" href="([^"]+)"', page)
            path = "/catalog" + html.unescape(following.group(1)) if following else ""
            assert not path or "q=paged" in path
        assert sorted(seen) == [f"paged-{i}" for i in range(5)]
    finally:
        console.stop()


def test_new_pages_show_an_unreachable_connector_or_registry_as_a_banner(
    space: LocalSpace,
) -> None:
    cfg = space.configs["gov"]
    gone = dataclasses.replace(
        cfg,
        server=dataclasses.replace(cfg.server, listen="127.0.0.1:9"),
        registry=dataclasses.replace(cfg.registry, address="127.0.0.1:9"),
    )
    console = Console(AdminBackend(gone))
    console.start()
    try:
        session, _ = login(console)
        for path in ("/transfers", "/consents", "/catalog?q=x", "/audit?kind=x"):
            status, _, page = request(console, "GET", path, cookie=session)
            assert status == 503, (path, status)
            assert 'class="banner bad"' in page and "Traceback" not in page
    finally:
        console.stop()


def test_contracts_show_their_signed_terms_and_both_signatures(space: LocalSpace) -> None:
    admin(space, "gov").AddProduct(
        admin_pb2.AddProductRequest(description=product("terms-shown"), format="json"),
        timeout=10,
    )
    agreement = agree(space, "gov", "a", "terms-shown")
    console = open_console(space, "gov")
    try:
        session, _ = login(console)
        status, _, page = request(console, "GET", "/agreements", cookie=session)
        assert status == 200
        row = re.search(rf'<tr data-agreement="{agreement}">(.*?)</tr>', page, re.S)
        assert row is not None
        terms = re.search(r'<td class="terms">(.*?)</td>', row.group(1), re.S)
        signers = re.search(r'<td class="signers">(.*?)</td>', row.group(1), re.S)
        assert terms is not None and signers is not None
        assert "at most 3 transfers" in terms.group(1) and "delivery: copy" in terms.group(1)
        names = re.findall(r"<div>(\w+) <small>\((.*?)\)</small></div>", signers.group(1))
        assert names == [("gov", "提供方 / provider"), ("a", "使用方 / consumer")]
    finally:
        console.stop()


def test_the_new_pages_need_a_session_and_do_nothing_without_one(space: LocalSpace) -> None:
    console = open_console(space, "alice")
    try:
        for path in ("/catalog?q=x", "/transfers", "/audit?connector=gov&kind=x"):
            status, _, page = request(console, "GET", path)
            assert status == 401 and "No session" in page
        before = admin(space, "alice").ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
        form = {"recipient": "a", "purposes": "p", "method": "m", "categories": "c"}
        status, _, _ = request(
            console, "POST", "/consents/grant", form={**form, "expires": "2030-01-01"}
        )
        assert status == 401
        after = admin(space, "alice").ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
        assert len(after.consents) == len(before.consents)
    finally:
        console.stop()


def test_list_checkpoints_answers_the_newest_oldest_first(space: LocalSpace) -> None:
    """The log page asks for the newest 200 checkpoints only: a log signs one a minute
    while it grows, so every one soon passes what a gRPC answer holds."""
    log = space.nodes["gov"].log
    assert log is not None
    for i in range(3):
        log.record("probe.checkpoint", parties=[], data={"i": i})
        log.checkpoint()
    stub, backend = auditor_log(space)
    try:
        every = list(
            stub.ListCheckpoints(audit_pb2.ListCheckpointsRequest(), timeout=10).checkpoints
        )
        newest = stub.ListCheckpoints(audit_pb2.ListCheckpointsRequest(newest=2), timeout=10)
        assert len(every) >= 3 and list(newest.checkpoints) == every[-2:]
        sizes = [int(note.split("\n")[1]) for note in every]
        assert sizes == sorted(sizes) and sizes[-1] == log.size
    finally:
        backend.close()
