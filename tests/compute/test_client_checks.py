"""The consumer believes a provider's answer only as far as its signed receipt, checked
against the agreement, the question asked and the bytes received: each way a hostile or
broken provider could bend one of them is refused."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import compute_pb2
from connector.audit.canonical import canonical_json
from connector.clock import FixedClock
from connector.compute.client import ComputeConsumer
from connector.compute.query import parse_query
from connector.compute.receipt import (
    ComputationReceipt,
    countersign_computation,
    sign_computation,
    verify_computation_receipt,
)
from connector.compute.rules import parse_rules
from connector.errors import VerificationError
from connector.negotiation.agreement import Agreement

KEYS = {p: ed25519.Ed25519PrivateKey.generate() for p in ("health", "lab", "mallory")}
RULES: dict[str, Any] = {
    "k": 10,
    "dimensions": {"district": {"type": "text"}},
    "measures": {"cost": {"aggregates": ["count", "avg"], "lower": 0, "upper": 1000}},
    "privacy": {"epsilon_per_query": 0.5, "epsilon_budget": 2.0, "delta": 1e-6},
}
AGREEMENT = Agreement(
    id="ag-1",
    provider="health",
    consumer="lab",
    product="admissions",
    offer="o1",
    purpose="research",
    valid_from_ns=0,
    valid_until_ns=4_000_000_000_000_000_000,
    max_transfers=0,
    max_bytes=0,
    policy_revision="ab" * 32,
    provider_pid="p-1",
    consumer_pid="c-1",
    issued_ms=1,
    delivery=("compute",),
    compute=parse_rules(RULES).to_dict(),
)
QUESTION = "SELECT district, count(*), avg(cost) FROM product GROUP BY district"
ANSWER = {
    "columns": ["district", "count", "avg_cost"],
    "rows": [["north", 41, 512.25], ["south", 38, 498.0]],
    "suppressed": 1,
    "epsilon": 0.5,
    "delta": 1e-6,
}


CP = "cp-" + "1" * 32


def public(p: str) -> ed25519.Ed25519PublicKey:
    return KEYS[p].public_key()


def honest(**changes: Any) -> ComputationReceipt:
    query = parse_query(QUESTION, parse_rules(RULES))
    answer = canonical_json(ANSWER)
    receipt = ComputationReceipt(
        agreement="ag-1",
        computation=CP,
        product="admissions",
        provider="health",
        consumer="lab",
        query=query.canonical_text(),
        query_sha256=query.sha256(),
        rules_sha256=parse_rules(RULES).sha256(),
        source_state="sha256:" + "0" * 64,
        answer_sha256=hashlib.sha256(answer).hexdigest(),
        rows=2,
        suppressed=1,
        epsilon_spent=0.5,
        epsilon_left=1.5,
        delta=1e-6,
        computed_ms=1,
    )
    return replace(receipt, **changes)


def consumer() -> ComputeConsumer:
    return ComputeConsumer(
        participant="lab",
        agreement_of=lambda _: AGREEMENT,
        store=None,  # type: ignore[arg-type]  # _check touches no store
        audit=None,  # type: ignore[arg-type]
        clock=FixedClock(1.0),
        signing_key=KEYS["lab"],
        keys=public,
        channel_to=lambda _: None,  # type: ignore[arg-type,return-value]
    )


def response(
    receipt: ComputationReceipt,
    answer: bytes | None = None,
    signer: str = "health",
    computation_id: str = "",
) -> compute_pb2.ComputeResponse:
    computation_id = computation_id or receipt.computation
    return compute_pb2.ComputeResponse(
        computation_id=computation_id,
        answer=canonical_json(ANSWER) if answer is None else answer,
        receipt=sign_computation(receipt, KEYS[signer]) if signer == "health" else _forged(receipt),
    )


def _forged(receipt: ComputationReceipt) -> str:
    from connector.audit import jws

    return jws.sign(receipt.payload(), KEYS["mallory"], signer="health", role="provider")


def test_an_honest_answer_is_accepted_and_countersigned() -> None:
    r = response(honest())
    checked, both = consumer()._check(AGREEMENT, QUESTION, r)
    assert checked == honest()
    assert verify_computation_receipt(both, public) == honest()
    # The same countersignature as countersigning on its own gives (Ed25519 is deterministic).
    assert both == countersign_computation(r.receipt, KEYS["lab"], public)


@pytest.mark.parametrize(
    ("r", "message"),
    [
        (response(honest(), signer="mallory"), "signature"),
        (response(honest(agreement="ag-2")), "another agreement"),
        (response(honest(computation="cp-" + "2" * 32), computation_id=CP), "another computation"),
        # A provider naming its computation as a path or a log line: refused before the id
        # becomes our record's key or reaches our log.
        (response(honest(computation="../../etc/cp")), "computation id"),
        (response(honest(computation="cp-1\nforged log line")), "computation id"),
        (response(honest(product="other")), "another product"),
        (response(honest(consumer="mallory")), "another consumer"),
        (response(honest(rules_sha256="0" * 64)), "rules"),
        (
            response(
                honest(
                    query="SELECT district, COUNT(*) FROM product GROUP BY district",
                )
            ),
            "another question",
        ),
        (
            response(
                honest(),
                answer=canonical_json(
                    {**ANSWER, "rows": [["north", 1, 1.0], ["south", 38, 498.0]]}
                ),
            ),
            "SHA-256",
        ),
        (response(honest(rows=3)), "rows"),
        (response(honest(suppressed=0)), "suppressed"),
        (response(honest(epsilon_spent=2.0)), "more ε"),
        (response(honest(), answer=b"not json"), "not JSON"),
    ],
)
def test_a_bent_answer_or_receipt_is_refused(r: compute_pb2.ComputeResponse, message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        consumer()._check(AGREEMENT, QUESTION, r)


def test_an_answer_not_in_canonical_form_is_refused() -> None:
    loose = (
        b'{"columns": ["district", "count", "avg_cost"], "delta": 1e-06, "epsilon": 0.5, '
        b'"rows": [["north", 41, 512.25], ["south", 38, 498.0]], "suppressed": 1}'
    )
    r = response(honest(answer_sha256=hashlib.sha256(loose).hexdigest()), answer=loose)
    with pytest.raises(VerificationError, match="canonical"):
        consumer()._check(AGREEMENT, QUESTION, r)
