"""Counter-offers between two tds connectors over gRPC (the shared state machine's
REQUESTED → OFFERED ⇄ REQUESTED, OFFERED → ACCEPTED → AGREED): the agreement is signed
over the terms last offered and accepted; the contract policy checks every offer and
counter-request; repeats change nothing, messages out of state order and another
participant's process are refused with nothing changed; either side may end it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, negotiation_pb2
from connector._proto.tds.v1 import negotiation_pb2_grpc as npb_grpc
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.negotiation.agreement import (
    Agreement,
    parse_agreement,
    sign_agreement,
    verify_agreement,
)
from connector.negotiation.states import State
from tests.integration.test_authentication import own_token, pem, raw_channel
from tests.support.counter_offers import (
    PERMITS,
    counter_offers_to_finalized,
    info,
    outbox_methods,
    reaches,
    refused,
    start,
    terms,
    transitions,
)
from tests.support.exchange import FAR, admin, entries

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    from tests.support.counter_offers import publish_permits

    root = tmp_path_factory.mktemp("counter")
    members = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    with LocalSpace.create(root, members) as sp:
        sp.start_registry()
        for member, _ in members:
            sp.start_connector(member)
        publish_permits(sp, root)
        yield sp


def peer(space: LocalSpace, caller: str, callee: str) -> npb_grpc.NegotiationServiceStub:
    """``callee``'s NegotiationService as the connector ``caller`` calls it."""
    return npb_grpc.NegotiationServiceStub(
        raw_channel(
            space,
            callee,
            pem(space, caller, "tls_key"),
            pem(space, caller, "tls_cert"),
            own_token(space, caller),
        )
    )


def logged(space: LocalSpace, who: str) -> int:
    return len(entries(space, who, "negotiation.transition"))


def test_counter_offers_end_in_one_dual_signed_agreement_over_the_accepted_terms(
    space: LocalSpace,
) -> None:
    mine, theirs = counter_offers_to_finalized(space, "a")
    # The same dual-signed agreement on both sides, over the terms accepted last (o3 for
    # planning, at most one transfer), never the ones first requested.
    a_copy = space.nodes["a"].negotiator.get(mine.pid).agreement  # type: ignore[union-attr]
    gov_copy = space.nodes["gov"].negotiator.get(theirs.pid).agreement  # type: ignore[union-attr]
    assert a_copy == gov_copy and a_copy
    agreement = verify_agreement(a_copy, space.nodes["a"]._signing_key_of)
    assert (agreement.offer, agreement.purpose, agreement.max_transfers) == ("o3", "planning", 1)
    assert (agreement.provider, agreement.consumer, agreement.product) == ("gov", "a", PERMITS)
    assert (mine.offer_id, mine.purpose) == (theirs.offer_id, theirs.purpose) == ("o3", "planning")
    # Each transition audited on each side, in order.
    assert transitions(space, "gov", theirs.pid) == [
        ("", "REQUESTED"),
        ("REQUESTED", "OFFERED"),
        ("OFFERED", "REQUESTED"),
        ("REQUESTED", "OFFERED"),
        ("OFFERED", "ACCEPTED"),
        ("ACCEPTED", "AGREED"),
        ("AGREED", "FINALIZED"),
    ]
    assert transitions(space, "a", mine.pid) == [
        ("", "REQUESTED"),
        ("REQUESTED", "OFFERED"),
        ("OFFERED", "REQUESTED"),
        ("REQUESTED", "OFFERED"),
        ("OFFERED", "ACCEPTED"),
        ("ACCEPTED", "VERIFIED"),
        ("VERIFIED", "FINALIZED"),
    ]
    # Each offer names its terms and the contract decision that allowed them.
    offers = [
        m["data"]
        for m in entries(space, "gov", "negotiation.transition")
        if m["data"]["pid"] == theirs.pid and m["data"]["to"] == "OFFERED"
    ]
    assert [(o["offer"], o["purpose"]) for o in offers] == [("o2", "research"), ("o3", "planning")]
    assert all(o["decision"] for o in offers)
    # Every message through the outboxes: the agreement came back in the answer to Accept.
    assert outbox_methods(space, "gov", theirs.pid) == ["SendOffer", "SendOffer"]
    assert outbox_methods(space, "a", mine.pid) == [
        "RequestContract",
        "RequestContract",
        "Accept",
        "VerifyAgreement",
    ]


def test_a_counter_request_is_decided_by_the_contract_policy_like_a_first_request(
    space: LocalSpace,
) -> None:
    # o1 allows research only: a counter-request for marketing is refused by the policy,
    # which ends the negotiation on both sides with its reasons.
    mine, theirs = start(space, "a")
    admin(space, "gov").OfferNegotiation(terms(theirs, "o2", "research"), timeout=10)
    reaches(space, "a", mine, "OFFERED")
    admin(space, "a").CounterNegotiation(terms(mine, "o1", "marketing"), timeout=10)
    ended = reaches(space, "a", mine, "TERMINATED")
    assert ended.reasons, "the policy's reasons reach the consumer"
    provider = reaches(space, "gov", theirs, "TERMINATED")
    assert list(provider.reasons) == list(ended.reasons)
    assert transitions(space, "gov", theirs)[-2:] == [
        ("OFFERED", "REQUESTED"),
        ("REQUESTED", "TERMINATED"),
    ]
    # The refused terms are the ones on record (what was asked and refused).
    assert (provider.offer_id, provider.purpose) == ("o1", "marketing")


@pytest.mark.parametrize("who", ["consumer", "provider"])
def test_either_side_ends_a_negotiation_mid_way(space: LocalSpace, who: str) -> None:
    mine, theirs = start(space, "a")
    admin(space, "gov").OfferNegotiation(terms(theirs, "o2", "research"), timeout=10)
    reaches(space, "a", mine, "OFFERED")
    if who == "consumer":
        admin(space, "a").TerminateNegotiation(
            admin_pb2.NegotiationRef(pid=mine, reason="found it elsewhere"), timeout=10
        )
        ended = reaches(space, "gov", theirs, "TERMINATED")
    else:
        admin(space, "gov").TerminateNegotiation(
            admin_pb2.NegotiationRef(pid=theirs, reason="found it elsewhere"), timeout=10
        )
        ended = reaches(space, "a", mine, "TERMINATED")
    assert list(ended.reasons) == ["found it elsewhere"]
    # Nothing more can be offered, accepted or countered on it.
    refused(
        lambda: admin(space, "a").AcceptNegotiation(admin_pb2.NegotiationRef(pid=mine), timeout=10),
        PRECONDITION,
        "only an OFFERED negotiation",
    )
    refused(
        lambda: admin(space, "gov").OfferNegotiation(terms(theirs, "o3", "planning"), timeout=10),
        PRECONDITION,
        "not waiting",
    )


def test_the_admins_terms_are_checked_before_anything_changes(space: LocalSpace) -> None:
    mine, theirs = start(space, "a")
    gov, a = admin(space, "gov"), admin(space, "a")
    before = (logged(space, "gov"), logged(space, "a"))
    for call, code, fragment in (
        (lambda: gov.OfferNegotiation(terms(theirs, "o9", "research"), timeout=10), PRECONDITION,
         "not published"),
        (lambda: gov.OfferNegotiation(terms(theirs, "o1", "research"), timeout=10),
         grpc.StatusCode.INVALID_ARGUMENT, "approve the negotiation instead"),
        (lambda: gov.OfferNegotiation(terms(theirs, "O2/..", "research"), timeout=10),
         grpc.StatusCode.INVALID_ARGUMENT, "id"),
        (lambda: gov.OfferNegotiation(terms(mine, "o2", "research"), timeout=10),
         grpc.StatusCode.NOT_FOUND, ""),
        (lambda: a.OfferNegotiation(terms(mine, "o2", "research"), timeout=10), PRECONDITION,
         "the consumer"),
        (lambda: a.AcceptNegotiation(admin_pb2.NegotiationRef(pid=mine), timeout=10), PRECONDITION,
         "only an OFFERED negotiation"),
        (lambda: a.CounterNegotiation(terms(mine, "o2", "planning"), timeout=10), PRECONDITION,
         "only an OFFERED negotiation"),
        (lambda: gov.AcceptNegotiation(admin_pb2.NegotiationRef(pid=theirs), timeout=10),
         PRECONDITION, "the provider"),
    ):  # fmt: skip
        refused(call, code, fragment)
    assert (logged(space, "gov"), logged(space, "a")) == before
    assert info(space, "gov", theirs).state == "REQUESTED"
    gov.OfferNegotiation(terms(theirs, "o2", "research"), timeout=10)
    reaches(space, "a", mine, "OFFERED")
    refused(
        lambda: a.CounterNegotiation(terms(mine, "o2", "research"), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "accept it instead",
    )
    gov.TerminateNegotiation(admin_pb2.NegotiationRef(pid=theirs, reason="test"), timeout=10)


def test_repeated_out_of_order_and_anothers_messages_change_nothing(space: LocalSpace) -> None:
    mine, theirs = start(space, "a")
    provider_pid = info(space, "a", mine).counterparty_pid or theirs
    gov_to_a, a_to_gov, b_to_gov = (
        peer(space, "gov", "a"),
        peer(space, "a", "gov"),
        peer(space, "b", "gov"),
    )
    # Accepting with no offer outstanding is out of state order.
    before = (logged(space, "gov"), logged(space, "a"))
    accept = negotiation_pb2.NegotiationEvent(
        message_id="accept-early", provider_pid=theirs, consumer_pid=mine, state="ACCEPTED"
    )
    refused(lambda: a_to_gov.Accept(accept, timeout=10), PRECONDITION, "cannot move to ACCEPTED")
    # A counter-request with no offer outstanding is too.
    counter = negotiation_pb2.ContractRequest(
        message_id="counter-early",
        consumer_pid=mine,
        provider_pid=theirs,
        product_id=PERMITS,
        offer_id="o2",
        purpose="planning",
    )
    refused(
        lambda: a_to_gov.RequestContract(counter, timeout=10),
        PRECONDITION,
        "cannot move to REQUESTED",
    )
    assert (logged(space, "gov"), logged(space, "a")) == before
    # gov's offer, sent once by its outbox; sent again by hand with the same message id it
    # changes nothing; another offer while one is outstanding is out of state order.
    admin(space, "gov").OfferNegotiation(terms(theirs, "o2", "research"), timeout=10)
    reaches(space, "a", mine, "OFFERED")
    before = (logged(space, "gov"), logged(space, "a"))
    offer = negotiation_pb2.ContractOffer(
        message_id="offer-1",
        provider_pid=provider_pid,
        consumer_pid=mine,
        product_id=PERMITS,
        offer_id="o3",
        purpose="planning",
    )
    refused(lambda: gov_to_a.SendOffer(offer, timeout=10), PRECONDITION, "cannot move to OFFERED")
    # b names a's processes: as missing as processes that do not exist.
    b_to_a = peer(space, "b", "a")
    refused(lambda: b_to_a.SendOffer(offer, timeout=10), grpc.StatusCode.NOT_FOUND, "no such")
    counter.message_id = "counter-by-b"
    refused(
        lambda: b_to_gov.RequestContract(counter, timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "no such",
    )
    accept.message_id = "accept-by-b"
    refused(lambda: b_to_gov.Accept(accept, timeout=10), grpc.StatusCode.NOT_FOUND, "no such")
    # An offer for another product is refused.
    offer.message_id, offer.product_id = "offer-2", "other"
    refused(
        lambda: gov_to_a.SendOffer(offer, timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "product"
    )
    assert (logged(space, "gov"), logged(space, "a")) == before
    # a's counter-request as its outbox sent it, delivered again (a retry): one transition.
    admin(space, "a").CounterNegotiation(terms(mine, "o2", "planning"), timeout=10)
    reaches(space, "gov", theirs, "REQUESTED", ("o2", "planning"))
    after = logged(space, "gov")
    sent = negotiation_pb2.ContractRequest.FromString(
        last_sent(space, "a", mine, "RequestContract")
    )
    for _ in range(2):
        again = a_to_gov.RequestContract(sent, timeout=10)
        assert (again.pid, again.state) == (theirs, "REQUESTED")
    assert logged(space, "gov") == after
    # gov offers again; a accepts; its Accept delivered again: agreed once, nothing more.
    admin(space, "gov").OfferNegotiation(terms(theirs, "o3", "planning"), timeout=10)
    reaches(space, "a", mine, "OFFERED", ("o3", "planning"))
    admin(space, "a").AcceptNegotiation(admin_pb2.NegotiationRef(pid=mine), timeout=10)
    reaches(space, "a", mine, "FINALIZED")
    after = logged(space, "gov")
    sent_accept = negotiation_pb2.NegotiationEvent.FromString(last_sent(space, "a", mine, "Accept"))
    repeated = a_to_gov.Accept(sent_accept, timeout=10)
    assert (repeated.pid, repeated.state) == (theirs, "FINALIZED")
    assert logged(space, "gov") == after
    assert [t for t in transitions(space, "gov", theirs) if t[1] == "AGREED"] == [
        ("ACCEPTED", "AGREED")
    ]
    agreement = info(space, "gov", theirs).agreement
    assert (parse_agreement(agreement).offer, parse_agreement(agreement).purpose) == (
        "o3",
        "planning",
    )


def last_sent(space: LocalSpace, who: str, pid: str, method: str) -> bytes:
    node = space.nodes[who]
    assert node.db is not None
    with node.db.transaction() as tx:
        row = tx.one(
            "SELECT payload FROM outbox WHERE negotiation_pid = ? AND method = ?"
            " ORDER BY id DESC LIMIT 1",
            (pid, method),
        )
    assert row is not None
    return bytes(row[0])


def test_cli_offers_accepts_and_counters(
    space: LocalSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    from connector.cli.main import main

    a_cfg, gov_cfg = str(space.root / "a.toml"), str(space.root / "gov.toml")
    assert Path(a_cfg).is_file() and Path(gov_cfg).is_file()
    mine, theirs = start(space, "a")
    capsys.readouterr()
    args = ["--offer", "o2", "--purpose", "research", "--config", gov_cfg, "--json"]
    assert main(["negotiations", "offer", theirs, *args]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["offer"], shown["purpose"]) == ("OFFERED", "o2", "research")
    reaches(space, "a", mine, "OFFERED")
    # A refusal is a clear error, no traceback, exit status 2 or more.
    code = main(["negotiations", "counter", mine, "--offer", "o2", "--purpose", "research",
                 "--config", a_cfg])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "accept it instead" in err and "Traceback" not in err
    assert main(["negotiations", "accept", mine, "--config", a_cfg, "--wait", "20", "--json"]) == 0
    final = json.loads(capsys.readouterr().out)
    assert (final["state"], final["offer"], final["purpose"]) == ("FINALIZED", "o2", "research")
    assert reaches(space, "gov", theirs, "FINALIZED").agreement_id == final["agreement_id"]


def test_the_consumer_takes_an_agreement_only_over_the_terms_it_accepted(
    space: LocalSpace,
) -> None:
    # A provider that signs the terms first requested after the consumer accepted others
    # is refused: the agreement must be over the offer accepted, never the original one.
    mine, theirs = start(space, "a")
    admin(space, "gov").OfferNegotiation(terms(theirs, "o3", "planning"), timeout=10)
    reaches(space, "a", mine, "OFFERED", ("o3", "planning"))
    consumer, provider = space.nodes["a"].negotiator, space.nodes["gov"].negotiator
    assert consumer is not None and provider is not None
    # a accepts here without telling gov (so gov cannot answer first with its agreement).
    consumer._store.transition(mine, State.ACCEPTED, now_ms=int(time.time() * 1000))

    def signed(offer: str, purpose: str) -> str:
        agreement = Agreement(
            id=f"ag-{offer}-{purpose}", provider="gov", consumer="a", product=PERMITS,
            offer=offer, purpose=purpose, valid_from_ns=0, valid_until_ns=FAR,
            max_transfers=1, max_bytes=0, policy_revision="x", provider_pid=theirs,
            consumer_pid=mine, issued_ms=1, obligations={}, permitted_fields=None, masks={},
            registration_code="",
        )  # fmt: skip
        return sign_agreement(agreement, provider._key)  # gov's own signing key

    gov_to_a = peer(space, "gov", "a")
    before = logged(space, "a")
    for n, (offer, purpose) in enumerate((("o1", "research"), ("o3", "research"))):
        message = negotiation_pb2.AgreementMessage(
            message_id=f"original-{n}",
            provider_pid=theirs,
            consumer_pid=mine,
            agreement=signed(offer, purpose),
        )
        refused(
            lambda m=message: gov_to_a.SendAgreement(m, timeout=10),  # type: ignore[misc]
            grpc.StatusCode.INVALID_ARGUMENT,
            "not what was requested",
        )
    assert logged(space, "a") == before
    assert info(space, "a", mine).state == "ACCEPTED"
    accepted = negotiation_pb2.AgreementMessage(
        message_id="accepted",
        provider_pid=theirs,
        consumer_pid=mine,
        agreement=signed("o3", "planning"),
    )
    assert gov_to_a.SendAgreement(accepted, timeout=10).state == "VERIFIED"
    admin(space, "gov").TerminateNegotiation(
        admin_pb2.NegotiationRef(pid=theirs, reason="test over"), timeout=10
    )
