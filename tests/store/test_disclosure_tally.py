"""The disclosure report counted on between calls (``DisclosureTally``) gives what a report
counted from the start of the log gives, as receipts arrive."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.log import TransparencyLog
from connector.audit.receipts import Receipt, countersign_receipt, sign_receipt
from connector.clock import SystemClock
from connector.negotiation.agreement import Agreement, countersign_agreement, sign_agreement
from connector.negotiation.states import State
from connector.negotiation.store import PROVIDER, NegotiationStore
from connector.store.database import Database
from connector.transfer import disclosure
from connector.transfer.disclosure import DisclosureTally, disclosure_report
from connector.transfer.disclosure_store import DisclosureStore
from connector.transfer.store import TransferStore

KEYS = {who: ed25519.Ed25519PrivateKey.generate() for who in ("gov", "opa", "opb", "ent")}


def public(who: str) -> ed25519.Ed25519PublicKey:
    return KEYS[who].public_key()


def agreed(store: NegotiationStore, consumer: str, code: str) -> Agreement:
    """A finalized negotiation with a signed agreement (public data if ``code``)."""
    pid, now_ms = uuid.uuid4().hex, int(time.time() * 1000)
    a = Agreement(
        id=f"ag-{pid}", provider="gov", consumer=consumer, product="flows", offer="o1",
        purpose="traffic-analytics", valid_from_ns=0, valid_until_ns=4 * 10**18,
        max_transfers=0, max_bytes=0, policy_revision="r", provider_pid=pid,
        consumer_pid=uuid.uuid4().hex, issued_ms=now_ms, registration_code=code,
        obligations={"operation_grant": "g-1"} if code else {},
    )  # fmt: skip
    signed = countersign_agreement(sign_agreement(a, KEYS["gov"]), KEYS[consumer], public)
    store.create(
        role=PROVIDER, counterparty=consumer, counterparty_pid=a.consumer_pid, product="flows",
        offer="o1", purpose=a.purpose, state=State.FINALIZED, now_ms=now_ms, pid=pid,
        agreement=signed, agreement_id=a.id,
    )  # fmt: skip
    return a


def receipt(log: TransparencyLog, a: Agreement, size: int) -> None:
    """A transfer under ``a`` completed: its dual-signed receipt in gov's log."""
    now_ms = int(time.time() * 1000)
    r = Receipt(
        agreement=a.id, transfer=f"tr-{uuid.uuid4().hex}", product=a.product, provider="gov",
        consumer=a.consumer, size=size, sha256="ab" * 32, started_ms=now_ms - 10,
        ended_ms=now_ms, provider_log_index=0, consumer_log_index=0,
    )  # fmt: skip
    signed = countersign_receipt(sign_receipt(r, KEYS[a.consumer]), KEYS["gov"], public)
    log.record(
        "transfer.receipt",
        parties=[a.consumer],
        data={"transfer": r.transfer, "agreement": a.id, "receipt": signed},
    )


def test_a_report_counted_on_is_the_report_counted_afresh(db: Database) -> None:
    log = TransparencyLog(
        db, origin="tds/city/gov", actor="gov", signing_key=KEYS["gov"], clock=SystemClock()
    )
    negotiations, transfers = NegotiationStore(db), TransferStore(db)
    year = time.gmtime().tm_year
    tally = DisclosureTally()

    def report(counted: DisclosureTally | None) -> dict[str, Any]:
        return disclosure_report(
            provider="gov", year=year, log=log, negotiations=negotiations,
            transfers=transfers, grants=list, tally=counted,
        )  # fmt: skip

    try:
        first, second = agreed(negotiations, "opa", "CITY-1"), agreed(negotiations, "opa", "CITY-2")
        private = agreed(negotiations, "ent", "")
        assert report(tally)["operators"] == []
        receipt(log, first, 100)
        receipt(log, private, 7)
        one = report(tally)
        assert one == report(None) and one["transfers"] == 1 and one["bytes"] == 100
        for a, size in ((first, 20), (second, 3), (private, 9), (second, 4)):
            receipt(log, a, size)
        log.record("other.kind", parties=[], data={})
        counted_on, afresh = report(tally), report(None)
        assert counted_on == afresh
        assert (afresh["transfers"], afresh["bytes"]) == (4, 127)
        [op] = afresh["operators"]
        assert {p["agreement"]: p["transfers"] for p in op["products"]} == {
            first.id: 2,
            second.id: 2,
        }
        # A report's lists are its own: changing one changes nothing counted.
        op["products"][0]["receipt_log_indices"].append(10**9)
        assert report(tally) == report(None)
        # Another year is counted apart.
        assert disclosure_report(
            provider="gov", year=2001, log=log, negotiations=negotiations,
            transfers=transfers, grants=list, tally=tally,
        )["operators"] == []  # fmt: skip
    finally:
        log.close()


def test_stored_counts_are_read_after_a_start_and_counted_on(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tally with a store saves its counts; a new one (the connector started again, or
    a replica) loads them and reads only receipts recorded since, with the same report,
    receipt indices included, as a report counted from the start of the log."""
    log = TransparencyLog(
        db, origin="tds/city/gov", actor="gov", signing_key=KEYS["gov"], clock=SystemClock()
    )
    negotiations, transfers = NegotiationStore(db), TransferStore(db)
    year = time.gmtime().tm_year

    def report(counted: DisclosureTally | None) -> dict[str, Any]:
        return disclosure_report(
            provider="gov", year=year, log=log, negotiations=negotiations,
            transfers=transfers, grants=list, tally=counted,
        )  # fmt: skip

    try:
        first, second = agreed(negotiations, "opa", "CITY-1"), agreed(negotiations, "opb", "CITY-2")
        private = agreed(negotiations, "ent", "")
        for a, size in ((first, 10), (private, 5), (second, 7), (first, 1)):
            receipt(log, a, size)
        before = report(DisclosureTally(DisclosureStore(db)))
        assert before == report(None) and before["transfers"] == 3
        assert DisclosureStore(db).scanned(year) == log.size
        # Started again: the stored counts are read, no receipt is parsed again.
        counted: list[str] = []
        real = disclosure.parse_receipt

        def parsing(text: str) -> Any:
            counted.append(text)
            return real(text)

        monkeypatch.setattr(disclosure, "parse_receipt", parsing)
        restarted = DisclosureTally(DisclosureStore(db))
        assert report(restarted) == before and counted == []
        # New receipts are counted on from the stored counts, and stored in turn.
        receipt(log, second, 2)
        receipt(log, private, 3)
        counted_on = report(restarted)
        assert len(counted) == 2  # the two new receipts only
        assert counted_on == report(None)
        counted.clear()
        third = DisclosureTally(DisclosureStore(db))
        after = report(third)
        assert counted == []
        assert after == report(None)
        [op_a, op_b] = sorted(after["operators"], key=lambda op: op["operator"])
        assert [p["receipt_log_indices"] for p in op_a["products"]] == [
            [i for i, body in log.entries(0, log.size) if first.id in body.decode()
             and b"transfer.receipt" in body]
        ]  # fmt: skip
        assert op_b["transfers"] == 2 and op_b["bytes"] == 9
    finally:
        log.close()


def test_a_replica_that_stored_first_wins_and_the_other_loads_its_counts(db: Database) -> None:
    """Two tallies on one database (two replicas): each saves only over the stored counts
    it knows; one that finds them moved on loads them and counts on, and both agree with
    a report counted afresh."""
    log = TransparencyLog(
        db, origin="tds/city/gov", actor="gov", signing_key=KEYS["gov"], clock=SystemClock()
    )
    negotiations, transfers = NegotiationStore(db), TransferStore(db)
    year = time.gmtime().tm_year

    def report(counted: DisclosureTally | None) -> dict[str, Any]:
        return disclosure_report(
            provider="gov", year=year, log=log, negotiations=negotiations,
            transfers=transfers, grants=list, tally=counted,
        )  # fmt: skip

    try:
        a = agreed(negotiations, "opa", "CITY-1")
        one, two = DisclosureTally(DisclosureStore(db)), DisclosureTally(DisclosureStore(db))
        receipt(log, a, 1)
        assert report(one) == report(two) == report(None)
        receipt(log, a, 2)
        assert report(one) == report(None)  # one stores up to here
        receipt(log, a, 4)
        assert report(two) == report(None)  # two loads one's counts and counts on
        assert report(one) == report(None)
        assert DisclosureStore(db).scanned(year) == log.size
        assert report(DisclosureTally(DisclosureStore(db)))["bytes"] == 7
    finally:
        log.close()
