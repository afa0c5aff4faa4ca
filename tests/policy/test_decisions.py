"""Every decision fixture, on every engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from connector.policy.decision import UNDEFINED
from connector.policy.engine import PolicyEngine
from tests.policy.cases import CASES, OPT_IN_REASONS, UNDEFINED_CASES, Case

SCHEMA = Path(__file__).resolve().parents[2] / "policies" / "schema"


def library_reasons() -> set[str]:
    """Every denial reason the library can give, read from its source."""
    found: set[str] = set()
    for path in (SCHEMA.parent / "tds").glob("*.rego"):
        if path.name.endswith("_test.rego"):
            continue
        for line in path.read_text().splitlines():
            found |= set(re.findall(r'contains "(\w+)"', line))
            found |= set(re.findall(r'\{"(\w+)"\}', line))
            found |= set(re.findall(r'^\s*\["(\w+)", ', line))  # a reason beside its condition
            found |= set(re.findall(r'\{"(\w+)" \|', line))  # a comprehension of one reason
    return found


def test_fixtures_cover_every_denial_reason() -> None:
    assert len(CASES) >= 60
    covered = set().union(*(c.deny for c in CASES)) | OPT_IN_REASONS
    missing = library_reasons() - covered
    assert not missing, f"no fixture exercises {sorted(missing)}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fixture(engine: PolicyEngine, case: Case) -> None:
    decision = engine.decide(case.input)
    assert (decision.allow, set(decision.deny), decision.needs_approval) == (
        case.allow,
        set(case.deny),
        case.needs_approval,
    ), decision.detail
    if case.permitted_fields is not None:
        assert decision.permitted_fields == case.permitted_fields
    if case.masks is not None:
        assert decision.masks == case.masks
    for key, value in case.obligations.items():
        assert decision.obligations.get(key) == value
    assert decision.revision == engine.revision and len(decision.id) == 32
    assert len(decision.input_sha256) == 64


@pytest.mark.parametrize("name, document", UNDEFINED_CASES)
def test_undefined_is_a_deny(engine: PolicyEngine, name: str, document: dict[str, Any]) -> None:
    decision = engine.decide(document)
    assert not decision.allow and decision.deny == (UNDEFINED,)


def test_engines_agree_on_provenance(policy_set: Any, engine: PolicyEngine) -> None:
    one, two = engine.decide(CASES[0].input), engine.decide(CASES[0].input)
    assert one.input_sha256 == two.input_sha256 and one.id != two.id
    assert one.revision == policy_set.revision


def test_fixture_inputs_follow_the_input_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA / "input.schema.json").read_text())
    for case in CASES:
        if "invalid_input" in case.deny:
            continue
        jsonschema.validate(case.input, schema)


def test_decisions_follow_the_decision_schema(engine: PolicyEngine) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA / "decision.schema.json").read_text())
    for case in CASES[:10]:
        document = engine.decide(case.input).as_json()
        fields = ("allow", "deny", "needs_approval", "obligations", "permitted_fields", "masks")
        core = {k: document[k] for k in (*fields, "visible") if k in document}
        jsonschema.validate(core, schema)


CONTRACT_CASES = [c for c in CASES if c.input.get("action") == "contract.request"]


@pytest.mark.parametrize("case", CONTRACT_CASES, ids=[c.name for c in CONTRACT_CASES])
def test_a_contract_decision_says_what_the_access_decision_would(
    engine: PolicyEngine, case: Case
) -> None:
    """The connector takes the contract decision's ``visible`` instead of a second
    evaluation: for every contract fixture it must be the access policy's own answer for
    the same subject and resource, on every engine."""
    contract = engine.decide(case.input)
    if "invalid_input" in case.deny:
        assert contract.visible is None  # a refusal says nothing about visibility
        return
    access = engine.decide({**case.input, "action": "catalog.read"})
    assert contract.visible is access.allow, (contract.deny, access.deny)
    if not contract.visible:
        assert not contract.allow


def test_some_contract_fixtures_are_hidden_from_their_subject(engine: PolicyEngine) -> None:
    hidden = [c.name for c in CONTRACT_CASES if engine.decide(c.input).visible is False]
    assert hidden, "no contract fixture covers a product the subject may not see"


def test_input_digest_is_over_content_not_key_order(engine: PolicyEngine) -> None:
    import hashlib

    document = CASES[0].input
    reordered = dict(reversed(list(document.items())))
    one, two = engine.decide(document), engine.decide(reordered)
    assert one.input_sha256 == two.input_sha256
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert one.input_sha256 == hashlib.sha256(expected.encode()).hexdigest()
