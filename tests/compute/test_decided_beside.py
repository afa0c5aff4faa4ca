"""The usage decision runs beside the engine: an answer computed for a question the policy
then refuses never leaves, nothing is spent or recorded, and the refusal is what the
consumer hears, logged after the decision, as when the engine waited for the decision.

Between two connectors started as a user would (the compute integration tests' space)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from connector.compute.store import ComputationStore
from connector.demo.space import LocalSpace
from tests.integration.test_compute import DP_RULES, FIELDS, ask, space, spent
from tests.support.exchange import agree, entries, offer, publish

__all__ = ["space"]  # the fixture, imported for this module

VALID_FOR_S = 8.0


def test_an_answer_computed_while_the_policy_refuses_never_leaves(space: LocalSpace) -> None:
    # An agreement the policy refuses once it has expired: nothing refuses it before the
    # decision (the question is allowed by the rules, the agreement not revoked, the
    # budget not spent), so the engine computes beside the decision.
    until_ns = time.time_ns() + int(VALID_FOR_S * 1e9)
    publish(
        space,
        "health",
        {
            "id": "admissions-brief",
            "title": "admissions for a short while",
            "grade": "important",
            "fields": FIELDS,
            "source": {"kind": "table", "format": "csv", "path": "admissions.csv"},
            "offers": [
                offer(valid_until_ns=until_ns, delivery=["compute"], compute=DP_RULES),
            ],
        },
        space.data,  # type: ignore[attr-defined]
    )
    agreement = agree(space, "health", "lab", "admissions-brief", approve=True)
    question = "SELECT district, count(*), avg(cost) FROM product GROUP BY district"
    answered = ask(space, agreement, question)  # while valid: answered
    time.sleep(max(0.0, (until_ns - time.time_ns()) / 1e9) + 0.2)
    before = entries(space, "health")
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, agreement, question)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "agreement_expired" in (caught.value.details() or "")
    assert spent(space, agreement) == (1, 1_000_000)  # the first answer's only
    db = space.nodes["health"].db
    assert db is not None
    held = ComputationStore(db).list(role="provider", agreement_id=agreement)
    assert [c.id for c in held] == [answered.computation_id]
    new = [(e["kind"], e["data"]) for e in entries(space, "health")[len(before) :]]
    kinds = [kind for kind, _ in new if kind.startswith(("policy.", "compute."))]
    assert kinds == ["policy.decision", "compute.refused"], kinds
    decision = next(data for kind, data in new if kind == "policy.decision")
    assert decision["allow"] is False and "agreement_expired" in decision["deny"]


def test_a_stopped_connector_leaves_no_decision_threads(space: LocalSpace) -> None:
    # Last in this module: it stops the provider (taken out of the space so its teardown
    # does not stop it twice). The threads beside the engine existed while it answered.
    assert any(t.name.startswith("tds-compute-decide") for t in threading.enumerate())
    node = space.nodes.pop("health")
    node.stop(grace=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not any(t.name.startswith("tds-compute-decide") for t in threading.enumerate()):
            break
        time.sleep(0.05)
    left = [t.name for t in threading.enumerate() if t.name.startswith("tds-compute-decide")]
    assert left == [], f"decision threads still alive after stop: {left}"
