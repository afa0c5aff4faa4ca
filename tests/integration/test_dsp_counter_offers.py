"""Counter-offers over the DSP 2025-1 HTTPS binding (contract negotiation: the provider's
``ContractOfferMessage`` to ``/negotiations/{consumerPid}/offers``, the consumer's
counter-request to ``/negotiations/{providerPid}/request``, its ``ACCEPTED`` event), on the
shared state machine the gRPC tests drive. Each test is named after the specification
anchor it checks; every answer is validated against ``../shared/vectors/dsp-2025-1/``, and
every message a tds connector sends is checked against its schema before it leaves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connector._proto.tds.v1 import admin_pb2
from connector.config import DspConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role, participant_dns_name
from connector.negotiation.agreement import parse_agreement, verify_agreement
from tests.integration.test_authentication import ca_pem, own_token, pem
from tests.integration.test_dsp_binding import client, conforms, event_of, refused
from tests.support.counter_offers import (
    PERMITS,
    counter_offers_to_finalized,
    info,
    outbox_methods,
    publish_permits,
    reaches,
    start,
    terms,
    transitions,
)
from tests.support.dsp_client import DspClient
from tests.support.exchange import admin, entries
from tests.unit.negotiation.test_dsp import VECTORS

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")

CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]
NEGOTIATION = "negotiation/contract-negotiation-schema.json"
ERROR = "ContractNegotiationError"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("dsp-counter")
    members = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    with LocalSpace.create(root, members) as sp:
        sp.start_registry()
        for member, _ in members:
            sp.start_connector(member, dsp=DspConfig(listen="127.0.0.1:0"))
        publish_permits(sp, root)
        yield sp


def gov_url(space: LocalSpace) -> str:
    binding = space.nodes["gov"].dsp
    assert binding is not None
    return binding.base_url


def offered(offer: str, purpose: str, product: str = PERMITS) -> dict[str, Any]:
    return {
        "@type": "Offer",
        "@id": f"urn:tds:offer:{product}/{offer}",
        "target": f"urn:tds:dataset:{product}",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": purpose}
                ],
            }
        ],
    }


def first_request(consumer_pid: str) -> dict[str, Any]:
    return {
        "@context": CONTEXT,
        "@type": "ContractRequestMessage",
        "consumerPid": consumer_pid,
        "offer": offered("o1", "research"),
        # Every member of a LocalSpace is registered on 127.0.0.1; nobody listens there.
        "callbackAddress": "https://127.0.0.1:9/callback",
    }


def counter_request(
    provider_pid: str, consumer_pid: str, offer: str, purpose: str, **extra: Any
) -> dict[str, Any]:
    return {
        "@context": CONTEXT,
        "@type": "ContractRequestMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "offer": offered(offer, purpose),
        **extra,
    }


def offer_message(
    provider_pid: str, consumer_pid: str, offer: str, purpose: str, **extra: Any
) -> dict[str, Any]:
    return {
        "@context": CONTEXT,
        "@type": "ContractOfferMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "offer": offered(offer, purpose),
        **extra,
    }


def logged(space: LocalSpace, who: str) -> int:
    return len(entries(space, who, "negotiation.transition"))


def test_negotiations_consumerpid_offers_post_two_tds_connectors_counter_offer_to_finalized(
    space: LocalSpace,
) -> None:
    mine, theirs = counter_offers_to_finalized(space, "a", dsp_url=gov_url(space))
    a_copy = space.nodes["a"].negotiator.get(mine.pid).agreement  # type: ignore[union-attr]
    gov_copy = space.nodes["gov"].negotiator.get(theirs.pid).agreement  # type: ignore[union-attr]
    assert a_copy == gov_copy and a_copy
    agreement = verify_agreement(a_copy, space.nodes["a"]._signing_key_of)
    assert (agreement.offer, agreement.purpose, agreement.max_transfers) == ("o3", "planning", 1)
    # Every message went over DSP, through each side's outbox, checked against its schema.
    assert outbox_methods(space, "gov", theirs.pid) == [
        "dsp:SendOffer",
        "dsp:SendOffer",
        "dsp:SendAgreement",
        "dsp:Finalize",
    ]
    assert outbox_methods(space, "a", mine.pid) == [
        "dsp:RequestContract",
        "dsp:RequestContract",
        "dsp:Accept",
        "dsp:VerifyAgreement",
    ]
    # The same audit entries as the same negotiation over gRPC.
    assert [to for _, to in transitions(space, "gov", theirs.pid)] == [
        "REQUESTED",
        "OFFERED",
        "REQUESTED",
        "OFFERED",
        "ACCEPTED",
        "AGREED",
        "FINALIZED",
    ]
    assert [to for _, to in transitions(space, "a", mine.pid)] == [
        "REQUESTED",
        "OFFERED",
        "REQUESTED",
        "OFFERED",
        "ACCEPTED",
        "VERIFIED",
        "FINALIZED",
    ]


def test_negotiations_providerpid_termination_post_mid_counter_offer(space: LocalSpace) -> None:
    mine, theirs = start(space, "a", gov_url(space))
    admin(space, "gov").OfferNegotiation(terms(theirs, "o2", "research"), timeout=10)
    reaches(space, "a", mine, "OFFERED")
    admin(space, "a").TerminateNegotiation(
        admin_pb2.NegotiationRef(pid=mine, reason="found it elsewhere"), timeout=10
    )
    ended = reaches(space, "gov", theirs, "TERMINATED")
    assert list(ended.reasons) == ["found it elsewhere"]
    assert outbox_methods(space, "a", mine)[-1] == "dsp:Terminate"


def test_negotiations_providerpid_request_post_counter_request_then_accepted_event(
    space: LocalSpace,
) -> None:
    b = client(space, "b")
    started = b.call("POST", "/negotiations/request", first_request("urn:uuid:cr-1"))
    assert started.status == 201 and started.body["state"] == "REQUESTED", started.body
    provider_pid = started.body["providerPid"]
    pid = provider_pid.removeprefix("urn:tds:process:")
    path = f"/negotiations/{provider_pid}/request"
    counter = counter_request(provider_pid, "urn:uuid:cr-1", "o2", "planning")
    before = logged(space, "gov")
    # No offer outstanding: a counter-request and an acceptance are out of state order.
    refused(b.call("POST", path, counter), 400, ERROR, "cannot move to REQUESTED")
    accepted = event_of(provider_pid, "urn:uuid:cr-1", "ACCEPTED")
    events = f"/negotiations/{provider_pid}/events"
    refused(b.call("POST", events, accepted), 400, ERROR, "cannot move to ACCEPTED")
    assert logged(space, "gov") == before
    admin(space, "gov").OfferNegotiation(terms(pid, "o2", "research"), timeout=10)
    shown = b.call("GET", f"/negotiations/{provider_pid}")
    assert conforms(shown, NEGOTIATION)["state"] == "OFFERED"
    before = logged(space, "gov")
    for message, status, fragment in (
        # The specification allows a callbackAddress or a providerPid, not both.
        ({**counter, "callbackAddress": "https://127.0.0.1:9/cb"}, 400, "schema"),
        ({k: v for k, v in counter.items() if k != "providerPid"}, 400, "schema"),
        # A first request posted to a process's path: it names no process of the provider.
        ({**first_request("urn:uuid:cr-1"), "consumerPid": "urn:uuid:cr-1"}, 400, "providerPid"),
        ({**counter, "consumerPid": "urn:uuid:someone-else"}, 404, "no such"),
        ({**counter, "offer": offered("o1", "research", "other")}, 400, "product"),
        ({**counter, "@type": "ContractOfferMessage"}, 400, "@type"),
    ):
        refused(b.call("POST", path, message), status, ERROR, fragment)
    # Another participant's process is as missing as one that does not exist.
    refused(client(space, "a").call("POST", path, counter), 404, ERROR, "no such")
    assert logged(space, "gov") == before
    answer = b.call("POST", path, counter)
    assert answer.status == 200, answer.body
    assert conforms(answer, NEGOTIATION)["state"] == "REQUESTED"  # grade important: waits
    repeated = b.call("POST", path, counter)
    assert (repeated.status, repeated.body["state"]) == (200, "REQUESTED")
    assert logged(space, "gov") == before + 1
    n = info(space, "gov", pid)
    assert (n.offer_id, n.purpose) == ("o2", "planning")
    admin(space, "gov").OfferNegotiation(terms(pid, "o3", "planning"), timeout=10)
    refused(client(space, "a").call("POST", events, accepted), 404, ERROR, "no such")
    agreed = b.call("POST", events, accepted)
    assert agreed.status == 200, agreed.body
    assert conforms(agreed, NEGOTIATION)["state"] == "AGREED"
    after = logged(space, "gov")
    again = b.call("POST", events, accepted)
    assert (again.status, again.body["state"]) == (200, "AGREED")
    assert logged(space, "gov") == after
    assert transitions(space, "gov", pid)[-2:] == [("OFFERED", "ACCEPTED"), ("ACCEPTED", "AGREED")]
    signed = space.nodes["gov"].negotiator.get(pid).agreement  # type: ignore[union-attr]
    assert signed is not None
    agreement = parse_agreement(signed)
    assert (agreement.offer, agreement.purpose) == ("o3", "planning")
    b.call("POST", f"/negotiations/{provider_pid}/termination", termination(provider_pid))


def termination(provider_pid: str, consumer_pid: str = "urn:uuid:cr-1") -> dict[str, Any]:
    return {
        "@context": CONTEXT,
        "@type": "ContractNegotiationTerminationMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "reason": ["test over"],
    }


def test_negotiations_providerpid_request_post_refused_by_the_contract_policy(
    space: LocalSpace,
) -> None:
    b = client(space, "b")
    started = b.call("POST", "/negotiations/request", first_request("urn:uuid:cr-2"))
    provider_pid = started.body["providerPid"]
    pid = provider_pid.removeprefix("urn:tds:process:")
    admin(space, "gov").OfferNegotiation(terms(pid, "o2", "research"), timeout=10)
    # o1 names research only: the contract policy refuses marketing, as for a first request.
    counter = counter_request(provider_pid, "urn:uuid:cr-2", "o1", "marketing")
    answer = b.call("POST", f"/negotiations/{provider_pid}/request", counter)
    assert answer.status == 200, answer.body
    assert conforms(answer, NEGOTIATION)["state"] == "TERMINATED"
    assert info(space, "gov", pid).reasons


def consumer_binding_as(space: LocalSpace, sender: str) -> DspClient:
    """a's binding (its callback address) as ``sender``'s connector calls it."""
    binding = space.nodes["a"].dsp
    assert binding is not None
    return DspClient(
        base=binding.base_url,
        server_name=participant_dns_name("city", "a"),
        ca_pem=ca_pem(space),
        cert_pem=pem(space, sender, "tls_cert"),
        key_pem=pem(space, sender, "tls_key"),
        authorization=lambda: f"Bearer {own_token(space, sender)}",
    )


def test_negotiations_consumerpid_offers_post_refusals_repeats_and_order(
    space: LocalSpace,
) -> None:
    mine, theirs = start(space, "a", gov_url(space))
    consumer_pid, provider_pid = f"urn:tds:process:{mine}", f"urn:tds:process:{theirs}"
    path = f"/negotiations/{consumer_pid}/offers"
    gov, b = consumer_binding_as(space, "gov"), consumer_binding_as(space, "b")
    message = offer_message(provider_pid, consumer_pid, "o2", "research")
    initial = {k: v for k, v in message.items() if k != "consumerPid"}
    before = logged(space, "a")
    for sender, body, status, fragment in (
        (b, message, 404, "no such"),  # b names a's negotiation with gov
        (gov, {**message, "providerPid": "urn:tds:process:other"}, 404, "no such"),
        (gov, {**message, "offer": offered("o1", "research", "other")}, 400, "product"),
        (gov, {**message, "offer": offered("o2", "")}, 400, "purpose"),
        (gov, {**message, "callbackAddress": "https://127.0.0.1:9/cb"}, 400, "schema"),
        (gov, {k: v for k, v in message.items() if k != "consumerPid"}, 400, "schema"),
        # An initial offer posted to a process's path: it names no process of the consumer.
        (gov, {**initial, "callbackAddress": "https://127.0.0.1:9/cb"}, 400, "consumerPid"),
        (gov, {**message, "@type": "ContractRequestMessage"}, 400, "@type"),
    ):
        refused(sender.call("POST", path, body), status, ERROR, fragment)
    # A provider-initiated offer (no negotiation yet): tds has no such route.
    assert gov.call("POST", "/negotiations/offers", initial).status == 405
    assert logged(space, "a") == before and info(space, "a", mine).state == "REQUESTED"
    answer = gov.call("POST", path, message)
    assert answer.status == 200, answer.body
    assert conforms(answer, NEGOTIATION)["state"] == "OFFERED"
    again = gov.call("POST", path, message)
    assert (again.status, again.body["state"]) == (200, "OFFERED")
    assert logged(space, "a") == before + 1
    n = info(space, "a", mine)
    assert (n.state, n.offer_id, n.purpose) == ("OFFERED", "o2", "research")
    # Another offer while one is outstanding is out of state order.
    other = offer_message(provider_pid, consumer_pid, "o3", "planning")
    refused(gov.call("POST", path, other), 400, ERROR, "cannot move to OFFERED")
    assert logged(space, "a") == before + 1
    admin(space, "a").TerminateNegotiation(
        admin_pb2.NegotiationRef(pid=mine, reason="test over"), timeout=10
    )
