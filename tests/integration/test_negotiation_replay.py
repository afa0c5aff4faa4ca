"""Issue 18 finding 11: a ContractRequest replayed by another member is refused without
a word about the member whose request it was, or the negotiation it started."""

from __future__ import annotations

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, negotiation_pb2, negotiation_pb2_grpc
from connector.demo.space import LocalSpace
from tests.support.exchange import admin, offer, publish


def _provider_as(space: LocalSpace, who: str) -> negotiation_pb2_grpc.NegotiationServiceStub:
    return negotiation_pb2_grpc.NegotiationServiceStub(space.nodes[who]._member_channel("c"))


def test_a_request_replayed_by_another_member_does_not_reveal_the_first(
    space: LocalSpace,
) -> None:
    data = space.root / "replay-data"
    data.mkdir()
    (data / "stats.bin").write_bytes(b"s" * 1024)
    product = {
        "id": "replayed",
        "title": "replayed",
        "grade": "general",
        "source": {"kind": "file", "path": "stats.bin"},
        "offers": [offer()],
    }
    publish(space, "c", product, data)
    request = negotiation_pb2.ContractRequest(
        message_id="replayed-message",
        consumer_pid="replayed-pid",
        product_id="replayed",
        offer_id="o1",
        purpose="research",
    )
    first = _provider_as(space, "a").RequestContract(request, timeout=10)
    # a's own repeat gets the same answer; b's copy of it is refused, neutrally.
    assert _provider_as(space, "a").RequestContract(request, timeout=10).pid == first.pid
    with pytest.raises(grpc.RpcError) as err:
        _provider_as(space, "b").RequestContract(request, timeout=10)
    details = err.value.details() or ""
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS, details
    assert "new random message_id" in details
    for leaked in ("negotiation", "replayed-pid", first.pid, "a already"):
        assert leaked not in details, (leaked, details)
    # Nothing was started for b.
    listed = admin(space, "c").ListNegotiations(admin_pb2.ListNegotiationsRequest(), timeout=10)
    mine = [n for n in listed.negotiations if n.product_id == "replayed"]
    assert [n.counterparty for n in mine] == ["a"]
