"""The disclosure report counted on between calls (``DisclosureTally``) gives what a report
counted from the start of the log gives, as receipts arrive."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.log import TransparencyLog
from connector.audit.receipts import Receipt, countersign_receipt, sign_receipt
from connector.clock import SystemClock
from connector.negotiation.agreement import Agreement, countersign_agreement, sign_agreement
from connector.negotiation.states import State
from connector.negotiation.store import PROVIDER, NegotiationStore
from connector.store.database import Database
from connector.transfer.disclosure import DisclosureTally, disclosure_report
from connector.transfer.store import TransferStore

KEYS = {who: ed25519.Ed25519PrivateKey.generate() for who in ("gov", "opa", "ent")}


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
