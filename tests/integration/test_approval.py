"""An approval is a contract decision taken again: what changed while a negotiation waited
(the offer, the product, the requester's membership) can refuse it, and a refused approval
changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.negotiation.agreement import verify_agreement
from tests.integration.test_negotiation import admin, keys, product, wait


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("approval")
    participants = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("c", Role.ENTERPRISE)]
    with LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        for who in ("gov", "a", "c"):
            sp.start_connector(who)
        yield sp


def publish(space: LocalSpace, description: str, *, replace: bool = False) -> None:
    admin(space, "gov").AddProduct(
        admin_pb2.AddProductRequest(description=description, format="json", replace=replace),
        timeout=10,
    )


def waiting(space: LocalSpace, who: str, product_id: str) -> str:
    """``who`` asks for an important product; the provider's pid once it waits."""
    mine = admin(space, who).StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id=product_id, offer_id="o1", purpose="research"
        ),
        timeout=10,
    )
    deadline = time.monotonic() + 10
    while not mine.counterparty_pid and time.monotonic() < deadline:
        time.sleep(0.05)
        mine = admin(space, who).GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
    assert mine.state == "REQUESTED" and mine.counterparty_pid, (mine.state, mine.reasons)
    return mine.counterparty_pid


def refused_approval(
    space: LocalSpace, pid: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
) -> str:
    """Approve ``pid``, which must be refused without a change: the refusal's message."""
    before = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        admin(space, "gov").ApproveNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    assert err.value.code() == code  # type: ignore[attr-defined]
    after = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    assert after == before and after.state == "REQUESTED" and not after.agreement
    return err.value.details() or ""  # type: ignore[attr-defined]


def provider_entries_since(space: LocalSpace, size: int) -> list[dict[str, object]]:
    log = space.nodes["gov"].log
    assert log is not None
    return [json.loads(b) for _, b in log.entries(size, log.size)]


def test_an_approval_is_logged_with_the_decision_it_took(space: LocalSpace) -> None:
    publish(space, product("sensors-ok", "important"))
    pid = waiting(space, "a", "sensors-ok")
    log = space.nodes["gov"].log
    assert log is not None
    before = log.size
    admin(space, "gov").ApproveNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    done = wait(space, "gov", pid, "FINALIZED")
    assert verify_agreement(done.agreement, keys(space)).product == "sensors-ok"
    entries = provider_entries_since(space, before)
    first = [(e["kind"], e["data"].get("action") or e["data"].get("to")) for e in entries[:2]]  # type: ignore[union-attr]
    assert first == [
        ("policy.decision", "contract.request"),
        ("negotiation.transition", "AGREED"),
    ]
    assert "a" in entries[0]["parties"]  # type: ignore[operator]


def test_an_offer_changed_while_waiting_refuses_the_approval(space: LocalSpace) -> None:
    publish(space, product("sensors-moved", "important"))
    pid = waiting(space, "a", "sensors-moved")
    changed = json.loads(product("sensors-moved", "important"))
    changed["offers"][0]["purposes"] = ["planning"]  # research is no longer offered
    publish(space, json.dumps(changed), replace=True)
    log = space.nodes["gov"].log
    assert log is not None
    before = log.size
    message = refused_approval(space, pid)
    assert "purpose_not_offered" in message and "reject" in message
    # The refusing decision is evidence all the same.
    [entry] = provider_entries_since(space, before)
    assert entry["kind"] == "policy.decision"
    assert entry["data"]["allow"] is False  # type: ignore[index]
    # The admin then rejects it, and the consumer hears.
    admin(space, "gov").RejectNegotiation(
        admin_pb2.NegotiationRef(pid=pid, reason="offer withdrawn"), timeout=10
    )
    consumer_pid = (
        admin(space, "gov")
        .GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        .counterparty_pid
    )
    assert list(wait(space, "a", consumer_pid, "TERMINATED").reasons) == ["offer withdrawn"]


def test_a_product_removed_while_waiting_refuses_the_approval(space: LocalSpace) -> None:
    publish(space, product("sensors-gone", "important"))
    pid = waiting(space, "a", "sensors-gone")
    admin(space, "gov").RemoveProduct(
        admin_pb2.RemoveProductRequest(product_id="sensors-gone"), timeout=10
    )
    assert "no longer published" in refused_approval(space, pid)


def test_a_requester_revoked_while_waiting_refuses_the_approval(space: LocalSpace) -> None:
    publish(space, product("sensors-revoked", "important"))
    pid = waiting(space, "c", "sensors-revoked")
    space.revoke("c", "test: left the space")
    space.refresh()
    assert "revoked" in refused_approval(space, pid)
