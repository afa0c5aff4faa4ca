"""Contract negotiation between two connectors: auto-approved, approval-gated, refused,
terminated, revoked; every agreement verifies offline."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, negotiation_pb2
from connector._proto.tds.v1 import negotiation_pb2_grpc as npb_grpc
from connector.audit.canonical import canonical_json
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_public_key
from connector.identity.names import Role
from connector.negotiation.agreement import (
    Agreement,
    countersign_agreement,
    sign_agreement,
    verify_agreement,
    verify_provider_signature,
)
from tests.integration.test_authentication import own_token, pem, raw_channel

FAR = 4_000_000_000_000_000_000


def product(pid: str, grade: str = "general") -> str:
    return json.dumps(
        {
            "id": pid,
            "title": pid,
            "grade": grade,
            "tags": ["stats"],
            "source": {"kind": "file", "path": f"{pid}.bin"},
            "offers": [
                {
                    "id": "o1",
                    "purposes": ["research"],
                    "valid_from_ns": 0,
                    "valid_until_ns": FAR,
                    "max_transfers": 3,
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("negotiation")
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        sp.start_connector("gov")
        sp.start_connector("a")
        gov = admin(sp, "gov")
        for pid, grade in (("open-stats", "general"), ("road-sensors", "important")):
            gov.AddProduct(
                admin_pb2.AddProductRequest(description=product(pid, grade), format="json"),
                timeout=10,
            )
        yield sp


def admin(space: LocalSpace, who: str) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(
        raw_channel(space, who, pem(space, who, "admin_key"), pem(space, who, "admin_cert"))
    )


def start(
    space: LocalSpace, product_id: str, purpose: str = "research", offer: str = "o1"
) -> admin_pb2.NegotiationInfo:
    return admin(space, "a").StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id=product_id, offer_id=offer, purpose=purpose
        ),
        timeout=10,
    )


def wait(
    space: LocalSpace, who: str, pid: str, state: str, timeout: float = 15
) -> admin_pb2.NegotiationInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = admin(space, who).GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
        if info.state == state or time.monotonic() > deadline:
            assert info.state == state, (info.state, list(info.reasons))
            return info
        time.sleep(0.1)


def keys(space: LocalSpace):  # type: ignore[no-untyped-def]
    def key_of(participant: str):  # type: ignore[no-untyped-def]
        me = space.manifest.participant(participant)
        return load_ed25519_public_key(space.pki_dir / me.signing_public_key)

    return key_of


def provider_side(
    space: LocalSpace, consumer_info: admin_pb2.NegotiationInfo
) -> admin_pb2.NegotiationInfo:
    return wait(space, "gov", consumer_info.counterparty_pid, consumer_info.state)


def answered(space: LocalSpace, mine: admin_pb2.NegotiationInfo) -> admin_pb2.NegotiationInfo:
    """The consumer's record once the provider's answer (its process id) arrived."""
    info, deadline = mine, time.monotonic() + 10
    while not info.counterparty_pid and time.monotonic() < deadline:
        time.sleep(0.1)
        info = admin(space, "a").GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
    assert info.counterparty_pid, "the provider never answered"
    return info


def test_auto_approved_negotiation_is_finalized_on_both_sides(space: LocalSpace) -> None:
    mine = start(space, "open-stats")
    assert mine.state == "REQUESTED" and mine.role == "consumer"
    done = wait(space, "a", mine.pid, "FINALIZED")
    theirs = provider_side(space, done)
    assert theirs.state == "FINALIZED" and theirs.counterparty_pid == mine.pid
    agreement = verify_agreement(done.agreement, keys(space))
    assert verify_agreement(theirs.agreement, keys(space)) == agreement
    assert (
        agreement.provider,
        agreement.consumer,
        agreement.product,
        agreement.purpose,
        agreement.max_transfers,
    ) == ("gov", "a", "open-stats", "research", 3)


def test_important_data_waits_for_approval(space: LocalSpace) -> None:
    mine = start(space, "road-sensors")
    wait(space, "a", mine.pid, "REQUESTED")
    info = answered(space, mine)
    pending = (
        admin(space, "gov")
        .ListNegotiations(admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=10)
        .negotiations
    )
    assert info.counterparty_pid in [p.pid for p in pending]
    admin(space, "gov").ApproveNegotiation(
        admin_pb2.NegotiationRef(pid=info.counterparty_pid), timeout=10
    )
    wait(space, "a", mine.pid, "FINALIZED")
    wait(space, "gov", info.counterparty_pid, "FINALIZED")
    with pytest.raises(grpc.RpcError) as err:  # approving twice is an invalid transition
        admin(space, "gov").ApproveNegotiation(
            admin_pb2.NegotiationRef(pid=info.counterparty_pid), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]


def test_rejected_negotiation_is_terminated_on_both_sides(space: LocalSpace) -> None:
    mine = start(space, "road-sensors")
    info = answered(space, mine)
    admin(space, "gov").RejectNegotiation(
        admin_pb2.NegotiationRef(pid=info.counterparty_pid, reason="not this year"), timeout=10
    )
    done = wait(space, "a", mine.pid, "TERMINATED")
    assert list(done.reasons) == ["not this year"]


def test_purpose_outside_the_offer_is_refused_with_the_reason(space: LocalSpace) -> None:
    mine = start(space, "open-stats", purpose="marketing")
    done = wait(space, "a", mine.pid, "TERMINATED")
    assert "purpose_not_offered" in list(done.reasons)


def test_unknown_product_ends_the_negotiation(space: LocalSpace) -> None:
    mine = start(space, "no-such-product")
    done = wait(space, "a", mine.pid, "TERMINATED")
    assert "not found" in " ".join(done.reasons)


def test_consumer_can_terminate_a_waiting_negotiation(space: LocalSpace) -> None:
    mine = start(space, "road-sensors")
    info = answered(space, mine)
    admin(space, "a").TerminateNegotiation(
        admin_pb2.NegotiationRef(pid=mine.pid, reason="changed our mind"), timeout=10
    )
    wait(space, "gov", info.counterparty_pid, "TERMINATED")


def test_revocation_reaches_the_consumer(space: LocalSpace) -> None:
    mine = start(space, "open-stats")
    done = wait(space, "a", mine.pid, "FINALIZED")
    admin(space, "gov").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(
            agreement_id=done.agreement_id, reason="licence withdrawn"
        ),
        timeout=10,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = admin(space, "a").GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
        if info.revocation:
            break
        time.sleep(0.1)
    assert info.revocation


def consumer_calls_provider(space: LocalSpace) -> npb_grpc.NegotiationServiceStub:
    """``gov``'s NegotiationService as the connector ``a`` calls it (its TLS and token)."""
    return npb_grpc.NegotiationServiceStub(
        raw_channel(
            space,
            "gov",
            pem(space, "a", "tls_key"),
            pem(space, "a", "tls_cert"),
            own_token(space, "a"),
        )
    )


def test_replays_and_duplicates_change_nothing(space: LocalSpace) -> None:
    stub = consumer_calls_provider(space)
    request = negotiation_pb2.ContractRequest(
        message_id="m-dup",
        consumer_pid="c-dup",
        product_id="road-sensors",
        offer_id="o1",
        purpose="research",
    )
    first = stub.RequestContract(request, timeout=10)
    again = stub.RequestContract(request, timeout=10)
    assert (first.pid, first.state) == (again.pid, again.state) == (first.pid, "REQUESTED")
    admin(space, "gov").RejectNegotiation(admin_pb2.NegotiationRef(pid=first.pid), timeout=10)
    # an agreement for the terminated negotiation is refused and changes nothing
    with pytest.raises(grpc.RpcError) as err:
        stub.VerifyAgreement(
            negotiation_pb2.AgreementMessage(
                message_id="m-replay", provider_pid=first.pid, consumer_pid="c-dup", agreement="{}"
            ),
            timeout=10,
        )
    assert err.value.code() in (
        grpc.StatusCode.FAILED_PRECONDITION,  # type: ignore[attr-defined]
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    info = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=first.pid), timeout=10)
    assert info.state == "TERMINATED"


def test_transitions_are_logged_on_both_sides(space: LocalSpace) -> None:
    for who in ("gov", "a"):
        log = space.nodes[who].log
        assert log is not None
        kinds = [json.loads(b)["kind"] for _, b in log.entries(0, log.size)]
        assert kinds.count("negotiation.transition") >= 4


def test_cli_negotiates_and_verifies_agreements_offline(
    space: LocalSpace, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from pathlib import Path

    from connector.cli.main import main

    assert isinstance(tmp_path, Path)
    a_cfg, gov_cfg = str(space.root / "a.toml"), str(space.root / "gov.toml")
    # Inside the space, whose root is gov's transfer.source_roots: the product's source
    # resolves against the description's directory.
    description = space.root / "cli-stats.json"
    description.write_text(product("cli-stats"))
    assert main(["product", "add", str(description), "--config", gov_cfg]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "negotiate",
                "--config",
                a_cfg,
                "--provider",
                "gov",
                "--product",
                "cli-stats",
                "--offer",
                "o1",
                "--purpose",
                "research",
                "--wait",
                "20",
                "--json",
            ]
        )
        == 0
    )
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["state"] == "FINALIZED"
    signed = tmp_path / "agreement.json"
    assert (
        main(
            ["agreements", "show", outcome["agreement_id"], "--config", a_cfg, "--out", str(signed)]
        )
        == 0
    )
    keys_file = tmp_path / "keys.json"
    assert (
        main(
            ["agreements", "verify", str(signed), "--config", a_cfg, "--save-keys", str(keys_file)]
        )
        == 0
    )
    assert main(["agreements", "verify", str(signed), "--keys", str(keys_file)]) == 0
    doc = json.loads(signed.read_text())
    doc["signatures"] = doc["signatures"][:1]
    signed.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["agreements", "verify", str(signed), "--keys", str(keys_file)]) == 1
    assert "signatures" in capsys.readouterr().err
    assert (
        main(
            [
                "negotiate",
                "--config",
                a_cfg,
                "--provider",
                "gov",
                "--product",
                "cli-stats",
                "--offer",
                "o1",
                "--purpose",
                "marketing",
                "--wait",
                "20",
            ]
        )
        == 1
    )
    assert "purpose_not_offered" in capsys.readouterr().out


def test_dsp_renderings_from_the_cli(space: LocalSpace, capsys: pytest.CaptureFixture[str]) -> None:
    from connector.cli.main import main

    a_cfg = str(space.root / "a.toml")
    assert main(["catalog", "list", "--provider", "gov", "--config", a_cfg, "--dsp"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert catalog["@type"] == "Catalog" and catalog["dataset"]
    # One participant identifier everywhere: the certificate's SAN URI.
    assert catalog["participantId"] == f"urn:tds:{space.space}:participant:gov"
    mine = start(space, "open-stats")
    done = wait(space, "a", mine.pid, "FINALIZED")
    capsys.readouterr()
    assert main(["negotiations", "show", mine.pid, "--config", a_cfg, "--dsp"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "FINALIZED"
    assert main(["agreements", "show", done.agreement_id, "--config", a_cfg, "--dsp"]) == 0
    message = json.loads(capsys.readouterr().out)
    assert message["@type"] == "ContractAgreementMessage"
    assert message["agreement"]["assignee"] == f"urn:tds:{space.space}:participant:a"
    assert message["agreement"]["assigner"] == f"urn:tds:{space.space}:participant:gov"


def test_provider_restart_resumes_and_nothing_is_doubled(space: LocalSpace) -> None:
    from connector.node import Node

    gov = space.nodes["gov"]
    gov.stop(grace=0)
    try:
        mine = start(space, "open-stats")  # queued: the provider is down
        time.sleep(1.5)  # a few failed attempts, with backoff
        info = admin(space, "a").GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
        assert info.state == "REQUESTED"
    finally:
        restarted = Node(space.configs["gov"])
        restarted.start()
        space.nodes["gov"] = restarted
        assert restarted.wait_ready(10)
    done = wait(space, "a", mine.pid, "FINALIZED", timeout=30)
    theirs = wait(space, "gov", done.counterparty_pid, "FINALIZED")
    assert verify_agreement(theirs.agreement, keys(space)).consumer_pid == mine.pid
    log = restarted.log
    assert log is not None
    bodies = [json.loads(b) for _, b in log.entries(0, log.size)]
    moves = [
        e["data"]["to"]
        for e in bodies
        if e["kind"] == "negotiation.transition" and e["data"].get("pid") == done.counterparty_pid
    ]
    assert moves == ["REQUESTED", "AGREED", "FINALIZED"]


def test_get_negotiation_can_wait_for_the_outcome(space: LocalSpace) -> None:
    mine = start(space, "open-stats")
    held = admin(space, "a").GetNegotiation(
        admin_pb2.NegotiationRef(pid=mine.pid, wait_ms=15_000), timeout=30
    )
    assert held.state == "FINALIZED", (held.state, list(held.reasons))


def test_a_wait_that_ends_first_answers_with_the_current_state(space: LocalSpace) -> None:
    mine = start(space, "road-sensors")  # important: waits for the provider's approval
    answered(space, mine)
    began = time.monotonic()
    held = admin(space, "a").GetNegotiation(
        admin_pb2.NegotiationRef(pid=mine.pid, wait_ms=400), timeout=30
    )
    assert held.state == "REQUESTED"
    assert 0.35 <= time.monotonic() - began < 10
    theirs = provider_side(space, held)
    admin(space, "gov").RejectNegotiation(
        admin_pb2.NegotiationRef(pid=theirs.pid, reason="test over"), timeout=10
    )
    ended = admin(space, "a").GetNegotiation(
        admin_pb2.NegotiationRef(pid=mine.pid, wait_ms=15_000), timeout=30
    )
    assert ended.state == "TERMINATED"


def start_waiting(
    space: LocalSpace, product_id: str, wait_ms: int, purpose: str = "research"
) -> admin_pb2.NegotiationInfo:
    return admin(space, "a").StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id=product_id, offer_id="o1", purpose=purpose,
            wait_ms=wait_ms,
        ),
        timeout=30,
    )  # fmt: skip


def outbox_rows(space: LocalSpace, who: str, pid: str) -> list[tuple[str, str]]:
    db = space.nodes[who].db
    assert db is not None
    with db.transaction() as tx:
        rows = tx.all(
            "SELECT method, status FROM outbox WHERE negotiation_pid = ? ORDER BY id", (pid,)
        )
    return [(str(m), str(s)) for m, s in rows]


def test_start_can_wait_for_the_outcome(space: LocalSpace) -> None:
    """One call: the answer is FINALIZED, both messages were delivered before it."""
    log = space.nodes["gov"].log
    assert log is not None
    before = log.size
    done = start_waiting(space, "open-stats", 15_000)
    assert done.state == "FINALIZED", (done.state, list(done.reasons))
    verify_agreement(done.agreement, keys(space))
    assert provider_side(space, done).state == "FINALIZED"
    # Each side's log names the agreement with the move that finalizes it.
    finals = [
        e["data"]
        for e in provider_entries_since(space, before)
        if e["kind"] == "negotiation.transition" and e["data"]["to"] == "FINALIZED"  # type: ignore[index]
    ]
    assert [f["agreement_id"] for f in finals] == [done.agreement_id]  # type: ignore[index]
    assert outbox_rows(space, "a", done.pid) == [
        ("RequestContract", "delivered"),
        ("VerifyAgreement", "delivered"),
    ]


def test_start_waiting_answers_a_refusal_with_its_reason(space: LocalSpace) -> None:
    done = start_waiting(space, "open-stats", 15_000, purpose="marketing")
    assert done.state == "TERMINATED" and "purpose_not_offered" in list(done.reasons)
    gone = start_waiting(space, "no-such-product", 15_000)
    assert gone.state == "TERMINATED" and "not found" in " ".join(gone.reasons)


def test_start_waiting_on_a_provider_that_is_not_in_the_directory_ends_it(
    space: LocalSpace,
) -> None:
    """The request sent on the caller's thread is refused for good (no such member): the
    negotiation ends with the reason, which the waiting answer carries."""
    done = admin(space, "a").StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="nobody", product_id="open-stats", offer_id="o1", purpose="research",
            wait_ms=15_000,
        ),
        timeout=30,
    )  # fmt: skip
    assert done.state == "TERMINATED", (done.state, list(done.reasons))
    assert "nobody" in " ".join(done.reasons)


def test_start_waiting_for_an_approval_answers_when_the_wait_ends(space: LocalSpace) -> None:
    began = time.monotonic()
    held = start_waiting(space, "road-sensors", 400)  # important: waits for approval
    assert held.state == "REQUESTED" and held.counterparty_pid
    assert 0.35 <= time.monotonic() - began < 10
    admin(space, "gov").ApproveNegotiation(
        admin_pb2.NegotiationRef(pid=held.counterparty_pid), timeout=10
    )
    # The agreement comes by the provider's call back, and goes on through the workers.
    ended = admin(space, "a").GetNegotiation(
        admin_pb2.NegotiationRef(pid=held.pid, wait_ms=15_000), timeout=30
    )
    assert ended.state == "FINALIZED"


def test_waiting_on_an_unknown_negotiation_is_not_found(space: LocalSpace) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin(space, "a").GetNegotiation(
            admin_pb2.NegotiationRef(pid="no-such-process", wait_ms=5_000), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def provider_entries_since(space: LocalSpace, size: int) -> list[dict[str, object]]:
    log = space.nodes["gov"].log
    assert log is not None
    return [json.loads(b) for _, b in log.entries(size, log.size)]


def test_every_decision_of_a_request_is_logged_with_what_it_led_to(space: LocalSpace) -> None:
    """Agreed at once: the contract decision (which also says the product is visible to
    the caller) and both transitions, in one contiguous write."""
    log = space.nodes["gov"].log
    assert log is not None
    before = log.size
    mine = start(space, "open-stats")
    wait(space, "a", mine.pid, "FINALIZED")
    entries = provider_entries_since(space, before)
    first = [
        (e["kind"], e["data"].get("action") or e["data"].get("to"))  # type: ignore[union-attr]
        for e in entries[:3]
    ]
    assert first == [
        ("policy.decision", "contract.request"),
        ("negotiation.transition", "REQUESTED"),
        ("negotiation.transition", "AGREED"),
    ]
    assert entries[0]["data"]["visible"] is True  # type: ignore[index]
    assert [e["index"] for e in entries[:3]] == list(range(before, before + 3))


@pytest.mark.parametrize(
    ("product_id", "offer", "outcome"),
    [("open-stats", "no-such-offer", "not found"), ("open-stats", "o1", "purpose_not_offered")],
)
def test_a_request_refused_is_still_logged_with_its_decisions(
    space: LocalSpace, product_id: str, offer: str, outcome: str
) -> None:
    log = space.nodes["gov"].log
    assert log is not None
    before = log.size
    mine = start(space, product_id, purpose="marketing", offer=offer)
    done = wait(space, "a", mine.pid, "TERMINATED")
    assert outcome in " ".join(done.reasons)
    actions = [
        e["data"]["action"]  # type: ignore[index]
        for e in provider_entries_since(space, before)
        if e["kind"] == "policy.decision"
    ]
    # An unknown offer ends the request before a contract decision: the access decision
    # (whether to say the product or the offer is not found) is logged all the same.
    expected = ["catalog.read"] if offer != "o1" else ["contract.request"]
    assert actions == expected


def open_stats_request(message_id: str, consumer_pid: str) -> negotiation_pb2.ContractRequest:
    """A request for the auto-approved offer, as the consumer's connector sends it."""
    return negotiation_pb2.ContractRequest(
        message_id=message_id, consumer_pid=consumer_pid, product_id="open-stats",
        offer_id="o1", purpose="research",
    )  # fmt: skip


def test_an_auto_approved_agreement_comes_back_in_the_answer(space: LocalSpace) -> None:
    """Two calls, not four: the agreement rides on the answer to the request, FINALIZED on
    the answer to the countersignature; a repeated request gets the same agreement."""
    stub = consumer_calls_provider(space)
    request = open_stats_request("m-ack", "c-ack")
    first = stub.RequestContract(request, timeout=10)
    again = stub.RequestContract(request, timeout=10)
    assert first.state == "AGREED" and first.agreement
    assert (again.pid, again.agreement) == (first.pid, first.agreement)
    agreement = verify_provider_signature(first.agreement, keys(space))
    assert (agreement.consumer_pid, agreement.provider_pid) == ("c-ack", first.pid)
    node = space.nodes["gov"]
    assert node.db is not None
    with node.db.transaction() as tx:
        queued = tx.all("SELECT method FROM outbox WHERE negotiation_pid = ?", (first.pid,))
    assert queued == []  # no SendAgreement, and (below) no Finalize, call back

    # A real consumer's negotiation ends FINALIZED on both sides without either call back.
    mine = start(space, "open-stats")
    done = wait(space, "a", mine.pid, "FINALIZED")
    with node.db.transaction() as tx:
        methods = tx.all(
            "SELECT method FROM outbox WHERE negotiation_pid = ?", (done.counterparty_pid,)
        )
    assert methods == []
    consumer = space.nodes["a"]
    assert consumer.db is not None
    with consumer.db.transaction() as tx:
        sent = tx.all(
            "SELECT method, status FROM outbox WHERE negotiation_pid = ? ORDER BY id", (mine.pid,)
        )
    assert sent == [("RequestContract", "delivered"), ("VerifyAgreement", "delivered")]


def test_a_forged_agreement_in_an_answer_ends_the_negotiation(space: LocalSpace) -> None:
    """What the consumer takes from an answer is checked as a SendAgreement call would be."""
    consumer = space.nodes["a"].negotiator
    assert consumer is not None
    mine = start(space, "road-sensors")  # waits for approval: no agreement yet
    info = answered(space, mine)
    genuine = Agreement(
        id="ag-forged", provider="gov", consumer="a", product="road-sensors", offer="o1",
        purpose="research", valid_from_ns=0, valid_until_ns=FAR, max_transfers=0,
        max_bytes=0, policy_revision="x", provider_pid=info.counterparty_pid,
        consumer_pid=mine.pid, issued_ms=1, obligations={}, permitted_fields=None, masks={},
        registration_code="",
    )  # fmt: skip
    mallory = ed25519.Ed25519PrivateKey.generate()

    def answer(signed: str) -> negotiation_pb2.NegotiationAck:
        return negotiation_pb2.NegotiationAck(
            pid=info.counterparty_pid, state="AGREED", agreement=signed
        )

    # From a connector that is not the provider: ignored.
    consumer.request_answered(mine.pid, "b", answer(sign_agreement(genuine, mallory)))
    assert consumer.get(mine.pid).state.value == "REQUESTED"
    # Signed by a key that is not the provider's: refused, the negotiation ends here and
    # the provider is told.
    consumer.request_answered(mine.pid, "gov", answer(sign_agreement(genuine, mallory)))
    ended = wait(space, "a", mine.pid, "TERMINATED")
    assert "the provider's agreement is refused" in ended.reasons[0]
    assert not ended.agreement
    wait(space, "gov", info.counterparty_pid, "TERMINATED")


def test_a_bad_countersignature_is_refused_and_changes_nothing(space: LocalSpace) -> None:
    """The provider takes back only the agreement it sent, countersigned by the consumer's
    own key: a countersignature by another key, or other terms, is refused, and the
    negotiation stays AGREED with nothing logged or remembered."""
    stub = consumer_calls_provider(space)
    request = open_stats_request("m-cs", "c-cs")
    ack = stub.RequestContract(request, timeout=10)
    assert ack.state == "AGREED"
    mallory = ed25519.Ed25519PrivateKey.generate()
    genuine_keys = keys(space)

    def with_mallory(participant: str) -> ed25519.Ed25519PublicKey:
        return mallory.public_key() if participant == "a" else genuine_keys(participant)

    by_mallory = countersign_agreement(ack.agreement, mallory, with_mallory)
    # The same signatures over other terms (a thousand transfers instead of three).
    altered = json.loads(by_mallory)
    terms = json.loads(base64.urlsafe_b64decode(altered["payload"] + "=="))
    terms["max_transfers"] = 1000
    altered["payload"] = base64.urlsafe_b64encode(canonical_json(terms)).rstrip(b"=").decode()
    other = json.dumps(altered)
    node = space.nodes["gov"]
    assert node.log is not None
    before = node.log.size
    for i, forged in enumerate((by_mallory, other, "{}")):
        with pytest.raises(grpc.RpcError) as err:
            stub.VerifyAgreement(
                negotiation_pb2.AgreementMessage(
                    message_id=f"m-cs-{i}", provider_pid=ack.pid, consumer_pid="c-cs",
                    agreement=forged,
                ),
                timeout=10,
            )  # fmt: skip
        assert err.value.code() in (  # type: ignore[attr-defined]
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "agreement" in (err.value.details() or "")  # type: ignore[attr-defined]
    theirs = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=ack.pid), timeout=10)
    assert theirs.state == "AGREED" and theirs.agreement == ack.agreement
    assert node.log.size == before
    assert node.negotiator is not None
    assert not any(node.negotiator._store.processed(f"m-cs-{i}") for i in range(3))
