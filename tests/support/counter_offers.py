"""Counter-offers between two connectors (DSP 2025-1 contract negotiation: REQUESTED →
OFFERED ⇄ REQUESTED, OFFERED → ACCEPTED → AGREED): one product with three offers, and the
negotiation the gRPC and the DSP tests both drive, through the admins' own calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.demo.space import LocalSpace
from tests.support.exchange import admin, entries, offer, publish

T = TypeVar("T")
PERMITS = "permits"
"""Grade important: every request waits for the provider's admin, who may offer instead."""


def publish_permits(space: LocalSpace, root: Path) -> None:
    (root / "data.bin").write_bytes(b"x" * 100)
    publish(
        space,
        "gov",
        {
            "id": PERMITS,
            "title": PERMITS,
            "grade": "important",
            "tags": ["permits"],
            "source": {"kind": "file", "path": "data.bin"},
            "offers": [
                offer(id="o1", purposes=["research"], max_transfers=5),
                offer(id="o2", purposes=["research", "planning"], max_transfers=2),
                offer(id="o3", purposes=["planning"], max_transfers=1),
            ],
        },
        root,
    )


def until(probe: Callable[[], T | None], what: str, timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def info(space: LocalSpace, who: str, pid: str) -> admin_pb2.NegotiationInfo:
    return admin(space, who).GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)


def reaches(
    space: LocalSpace, who: str, pid: str, state: str, terms: tuple[str, str] | None = None
) -> admin_pb2.NegotiationInfo:
    """``who``'s negotiation ``pid`` once in ``state`` (with ``terms``: offer, purpose)."""

    def probe() -> admin_pb2.NegotiationInfo | None:
        n = info(space, who, pid)
        if n.state == "TERMINATED" != state:
            raise AssertionError(f"{who}'s {pid} ended: {list(n.reasons)}")
        if n.state != state or (terms and (n.offer_id, n.purpose) != terms):
            return None
        return n

    return until(probe, f"{who}'s {pid} to be {state} {terms or ''}")


def start(space: LocalSpace, consumer: str, dsp_url: str = "") -> tuple[str, str]:
    """``consumer`` requests o1 for research; the pids on its side and on gov's (waiting)."""
    mine = admin(space, consumer).StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id=PERMITS, offer_id="o1", purpose="research", dsp_url=dsp_url
        ),
        timeout=10,
    )

    def waiting() -> str | None:
        found = admin(space, "gov").ListNegotiations(
            admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=10
        )
        pids = [n.pid for n in found.negotiations if n.counterparty_pid.endswith(mine.pid)]
        return pids[0] if pids else None

    return mine.pid, until(waiting, "gov to hold the request")


def terms(pid: str, offer_id: str, purpose: str) -> admin_pb2.NegotiationTerms:
    return admin_pb2.NegotiationTerms(pid=pid, offer_id=offer_id, purpose=purpose)


def refused(call: Callable[[], Any], code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert fragment in (err.value.details() or ""), err.value.details()


def counter_offers_to_finalized(
    space: LocalSpace, consumer: str, dsp_url: str = ""
) -> tuple[admin_pb2.NegotiationInfo, admin_pb2.NegotiationInfo]:
    """Request (o1, research) → gov offers (o2, research) → the consumer counters with
    (o2, planning) → gov's offer of (o1, planning) is refused by its own contract policy,
    nothing changed → gov offers (o3, planning) → the consumer accepts → FINALIZED. The
    consumer's and gov's negotiations, final."""
    gov, me = admin(space, "gov"), admin(space, consumer)
    mine, theirs = start(space, consumer, dsp_url)
    offered = gov.OfferNegotiation(terms(theirs, "o2", "research"), timeout=10)
    assert (offered.state, offered.offer_id, offered.purpose) == ("OFFERED", "o2", "research")
    reaches(space, consumer, mine, "OFFERED", ("o2", "research"))
    countered = me.CounterNegotiation(terms(mine, "o2", "planning"), timeout=10)
    assert (countered.state, countered.offer_id) == ("REQUESTED", "o2")
    # Grade important: the counter-request waits for gov's admin as a first request does.
    reaches(space, "gov", theirs, "REQUESTED", ("o2", "planning"))
    logged = len(entries(space, "gov", "negotiation.transition"))
    refused(
        lambda: gov.OfferNegotiation(terms(theirs, "o1", "planning"), timeout=10),
        grpc.StatusCode.FAILED_PRECONDITION,
        "denies these terms",
    )
    assert len(entries(space, "gov", "negotiation.transition")) == logged
    assert info(space, "gov", theirs).state == "REQUESTED"
    gov.OfferNegotiation(terms(theirs, "o3", "planning"), timeout=10)
    reaches(space, consumer, mine, "OFFERED", ("o3", "planning"))
    accepted = me.AcceptNegotiation(admin_pb2.NegotiationRef(pid=mine), timeout=10)
    assert accepted.state in ("ACCEPTED", "VERIFIED", "FINALIZED"), accepted
    final = me.GetNegotiation(admin_pb2.NegotiationRef(pid=mine, wait_ms=20_000), timeout=30)
    assert final.state == "FINALIZED", (final.state, list(final.reasons))
    return final, reaches(space, "gov", theirs, "FINALIZED")


def transitions(space: LocalSpace, who: str, pid: str) -> list[tuple[str, str]]:
    """``(from, to)`` of each transition of ``pid`` in ``who``'s audit log."""
    return [
        (m["data"]["from"], m["data"]["to"])
        for m in entries(space, who, "negotiation.transition")
        if m["data"]["pid"] == pid
    ]


def outbox_methods(space: LocalSpace, who: str, pid: str) -> list[str]:
    node = space.nodes[who]
    assert node.db is not None
    with node.db.transaction() as tx:
        rows = tx.all("SELECT method FROM outbox WHERE negotiation_pid = ? ORDER BY id", (pid,))
    return [r[0] for r in rows]
