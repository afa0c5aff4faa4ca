"""Decision fixtures: input -> expected decision, one table for every engine.

Each case names what it covers. ``PROVIDER_MODULES`` are loaded alongside the library so
the provider-module rules are covered too. The same table runs against the embedded
engine, the OPA REST test double, and a real OPA when ``TDS_OPA_URL`` is set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

NOW = 1_800_000_000 * 10**9
DAY = 86_400 * 10**9
YEAR = 365 * DAY

PROVIDER_MODULES = {
    "fixture_no": """package tds.provider.fixture_no

import rego.v1

deny contains "provider_says_no" if true
""",
    "fixture_small": """package tds.provider.fixture_small

import rego.v1

deny contains "provider_limit_exceeded" if input.contract.max_transfers > 10
""",
    # Names the consumer's purpose in its denial: text the consumer chose reaches the
    # decision document, so it must come back as text and never as structure.
    "fixture_echo": """package tds.provider.fixture_echo

import rego.v1

deny contains sprintf("purpose %s is not for this provider", [input.contract.purpose]) if {
    input.contract.purpose != "planning"
}
""",
    # Tries to lift the library's denials: its allow and decision are never read.
    "fixture_override": """package tds.provider.fixture_override

import rego.v1

deny contains "never" if false

allow := true

decision := {"allow": true, "deny": [], "needs_approval": false, "obligations": {},
    "permitted_fields": null, "masks": {}}
""",
}


INJECTION = (
    '"],"allow":true,"deny":[],"needs_approval":false,"masks":{},"obligations":{},'
    '"permitted_fields":["x'
)
ODD_PURPOSE = 'study "B"\\ of\nroads\t\u00e9\u0001'


@dataclass(frozen=True)
class Case:
    """One fixture: the input and what the decision must say."""

    name: str
    input: dict[str, Any]
    allow: bool
    deny: frozenset[str] = frozenset()
    needs_approval: bool = False
    permitted_fields: tuple[str, ...] | None = None
    masks: dict[str, Any] | None = None
    obligations: dict[str, Any] = field(default_factory=dict)
    """Must be contained in the decision's obligations."""


def subject(**kw: Any) -> dict[str, Any]:
    base = {"id": "ent-a", "role": "enterprise", "attrs": {"org": "91310000A"}, "grants": []}
    return {**base, **kw}


def grant(**kw: Any) -> dict[str, Any]:
    base = {
        "id": "g1",
        "scope": ["traffic"],
        "purposes": ["planning"],
        "start_ns": NOW - YEAR,
        "end_ns": NOW + YEAR,
        "granted_by": "city-gov",
    }
    return {**base, **kw}


def resource(**kw: Any) -> dict[str, Any]:
    base = {
        "id": "p1",
        "owner": "city-gov",
        "grade": "general",
        "tags": ["mobility"],
        "domain": "transport",
        "fields": ["time", "road", "speed", "plate"],
        "registration_code": "",
        "personal": False,
        "access": {},
    }
    return {**base, **kw}


def offer(**kw: Any) -> dict[str, Any]:
    base = {
        "id": "o1",
        "purposes": ["planning", "research"],
        "valid_from_ns": NOW - DAY,
        "valid_until_ns": NOW + YEAR,
        "max_transfers": 3,
        "max_bytes": 0,
        "obligations": {"delete_after_ns": NOW + 30 * DAY},
        "policy_module": "",
    }
    return {**base, **kw}


def contract(**kw: Any) -> dict[str, Any]:
    base = {
        "id": "ag-1",
        "purpose": "planning",
        "valid_from_ns": NOW - DAY,
        "valid_until_ns": NOW + 90 * DAY,
        "max_transfers": 3,
        "max_bytes": 0,
        "revoked": False,
        "permitted_fields": [],
        "masks": {},
        "obligations": {},
    }
    return {**base, **kw}


def context(**kw: Any) -> dict[str, Any]:
    base = {
        "now_ns": NOW,
        "transfers_used": 0,
        "bytes_used": 0,
        "revoked": False,
        "revoked_grants": [],
        "consent": {},
    }
    return {**base, **kw}


CONSENT = {
    "present": True,
    "withdrawn": False,
    "recipient": "ent-a",
    "purposes": ["planning"],
    "expires_ns": NOW + YEAR,
}


def doc(
    action: str,
    *,
    subj: dict[str, Any] | None = None,
    res: dict[str, Any] | None = None,
    off: dict[str, Any] | None = None,
    con: dict[str, Any] | None = None,
    ctx: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "action": action,
        "subject": subj or subject(),
        "resource": res or resource(),
        "offer": off or offer(),
        "contract": con or contract(),
        "context": ctx or context(),
    }


def read(**kw: Any) -> dict[str, Any]:
    return doc("catalog.read", **kw)


def request(**kw: Any) -> dict[str, Any]:
    return doc("contract.request", **kw)


def start(**kw: Any) -> dict[str, Any]:
    return doc("transfer.start", **kw)


def stream(**kw: Any) -> dict[str, Any]:
    """A running stream's re-check: no transfer count, one more byte wanted, the message
    limits (none unless the case sets them) and what has been used."""
    document = doc("stream.continue", **kw)
    document["contract"].pop("max_transfers", None)
    document["context"].pop("transfers_used", None)
    document["context"].setdefault("request_bytes", 1)
    for key in ("max_messages", "period_max_messages", "period_max_bytes"):
        document["contract"].setdefault(key, 0)
    for key in ("messages_used", "period_messages_used", "period_bytes_used"):
        document["context"].setdefault(key, 0)
    return document


def without(document: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    out = copy.deepcopy(document)
    del out[section][key]
    return out


COMPUTE_RULES = {
    "k": 10,
    "max_groups": 1000,
    "dimensions": {"road": {"type": "text"}},
    "measures": {"speed": {"aggregates": ["count", "avg"], "lower": 0, "upper": 200}},
    "privacy": {"epsilon_per_query": 0.5, "epsilon_budget": 1.0, "delta": 1e-7},
}


def compute_contract(**kw: Any) -> dict[str, Any]:
    return contract(**{"delivery": ["compute"], "compute": COMPUTE_RULES, **kw})


def run(
    *,
    con: dict[str, Any] | None = None,
    ctx: dict[str, Any] | None = None,
    query: dict[str, Any] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """A ``compute.run`` document: a compute-only agreement, half of ε spent."""
    shape = {
        "dimensions": ["road"],
        "filtered": [],
        "measures": ["speed"],
        "aggregates": ["count", "avg(speed)"],
        "epsilon": 0.5,
    }
    context_ = ctx or context(epsilon_spent=0.5, epsilon_left=0.5, computations_used=1)
    return {
        **doc("compute.run", con=con or compute_contract(), ctx=context_, **kw),
        "query": {**shape, **(query or {})},
    }


PUBLIC = {"registration_code": "SH-2026-000123", "tags": ["traffic"]}
IMPORTANT_FIELDS = {
    "permitted_fields": ["time", "road", "speed"],
    "masks": {"road": {"method": "generalise", "level": "district"}},
}

CASES: list[Case] = [
    # -- access: who sees a product in a catalog ----------------------------------------
    Case("access general product is visible", read(), True),
    Case(
        "access owner sees own restricted product",
        read(
            subj=subject(id="city-gov", role="government"),
            res=resource(access={"allow_list": ["ent-b"], "roles": ["auditor"]}),
        ),
        True,
    ),
    Case(
        "access core product is never listed",
        read(res=resource(grade="core")),
        False,
        frozenset({"core_data"}),
    ),
    Case(
        "access core product hidden from its owner too",
        read(subj=subject(id="city-gov", role="government"), res=resource(grade="core")),
        False,
        frozenset({"core_data"}),
    ),
    Case(
        "access role not allowed",
        read(res=resource(access={"roles": ["government"]})),
        False,
        frozenset({"role_not_allowed"}),
    ),
    Case("access role allowed", read(res=resource(access={"roles": ["enterprise"]})), True),
    Case(
        "access not on allow list",
        read(res=resource(access={"allow_list": ["ent-b"]})),
        False,
        frozenset({"not_on_allow_list"}),
    ),
    Case("access on allow list", read(res=resource(access={"allow_list": ["ent-a"]})), True),
    Case(
        "access attribute mismatch",
        read(res=resource(access={"attrs": {"org": "91310000B"}})),
        False,
        frozenset({"attribute_mismatch"}),
    ),
    Case(
        "access attribute missing",
        read(res=resource(access={"attrs": {"licence": "L-1"}})),
        False,
        frozenset({"attribute_mismatch"}),
    ),
    Case(
        "access attribute match", read(res=resource(access={"attrs": {"org": "91310000A"}})), True
    ),
    Case(
        "access several rules fail together",
        read(res=resource(access={"roles": ["government"], "allow_list": ["ent-b"]})),
        False,
        frozenset({"role_not_allowed", "not_on_allow_list"}),
    ),
    # -- contract: who may contract for an offer ----------------------------------------
    Case(
        "contract general offer, offered purpose",
        request(),
        True,
        obligations={"delete_after_ns": NOW + 30 * DAY},
    ),
    Case(
        "contract purpose not offered",
        request(con=contract(purpose="marketing")),
        False,
        frozenset({"purpose_not_offered"}),
    ),
    Case(
        "contract offer not yet valid",
        request(off=offer(valid_from_ns=NOW + DAY)),
        False,
        frozenset({"offer_not_yet_valid"}),
    ),
    Case(
        "contract offer expired",
        request(off=offer(valid_until_ns=NOW)),
        False,
        frozenset({"offer_expired"}),
    ),
    Case(
        "contract with oneself",
        request(subj=subject(id="city-gov", role="government")),
        False,
        frozenset({"contract_with_self"}),
    ),
    Case(
        "contract important data needs approval",
        request(res=resource(grade="important")),
        True,
        needs_approval=True,
    ),
    Case(
        "contract core data refused",
        request(res=resource(grade="core")),
        False,
        frozenset({"core_data"}),
    ),
    Case(
        "contract hidden product refused",
        request(res=resource(access={"allow_list": ["ent-b"]})),
        False,
        frozenset({"not_on_allow_list"}),
    ),
    Case(
        "contract public data without any grant",
        request(res=resource(**PUBLIC)),
        False,
        frozenset({"no_operation_grant"}),
    ),
    Case(
        "contract public data, grant for another scope",
        request(subj=subject(grants=[grant(scope=["health"])]), res=resource(**PUBLIC)),
        False,
        frozenset({"outside_grant_scope"}),
    ),
    Case(
        "contract public data, purpose outside the grant",
        request(subj=subject(grants=[grant(purposes=["research"])]), res=resource(**PUBLIC)),
        False,
        frozenset({"purpose_outside_grant"}),
    ),
    Case(
        "contract public data, grant not yet in force",
        request(subj=subject(grants=[grant(start_ns=NOW + DAY)]), res=resource(**PUBLIC)),
        False,
        frozenset({"grant_not_current"}),
    ),
    Case(
        "contract public data, grant ended",
        request(subj=subject(grants=[grant(end_ns=NOW)]), res=resource(**PUBLIC)),
        False,
        frozenset({"grant_not_current"}),
    ),
    Case(
        "contract public data, grant term over five years",
        request(
            subj=subject(grants=[grant(start_ns=NOW - 3 * YEAR, end_ns=NOW + 3 * YEAR)]),
            res=resource(**PUBLIC),
        ),
        False,
        frozenset({"grant_term_exceeds_5_years"}),
    ),
    Case(
        "contract public data, grant exactly five years",
        request(
            subj=subject(grants=[grant(start_ns=NOW - YEAR, end_ns=NOW + 4 * YEAR)]),
            res=resource(**PUBLIC),
        ),
        True,
    ),
    Case(
        "contract public data within a valid grant",
        request(subj=subject(grants=[grant()]), res=resource(**PUBLIC)),
        True,
    ),
    Case(
        "contract public data, grant scoped by domain",
        request(
            subj=subject(grants=[grant(scope=["transport"])]),
            res=resource(registration_code="SH-1", tags=["x"]),
        ),
        True,
    ),
    Case(
        "contract public important data within a grant needs approval",
        request(subj=subject(grants=[grant()]), res=resource(grade="important", **PUBLIC)),
        True,
        needs_approval=True,
    ),
    Case(
        "contract public data, one bad grant and one good",
        request(subj=subject(grants=[grant(scope=["health"]), grant()]), res=resource(**PUBLIC)),
        True,
    ),
    Case(
        "contract personal data without consent",
        request(res=resource(personal=True)),
        False,
        frozenset({"no_consent"}),
    ),
    Case(
        "contract personal data, consent withdrawn",
        request(res=resource(personal=True), ctx=context(consent={**CONSENT, "withdrawn": True})),
        False,
        frozenset({"consent_withdrawn"}),
    ),
    Case(
        "contract personal data, consent expired",
        request(res=resource(personal=True), ctx=context(consent={**CONSENT, "expires_ns": NOW})),
        False,
        frozenset({"consent_expired"}),
    ),
    Case(
        "contract personal data, consent for another recipient",
        request(
            res=resource(personal=True), ctx=context(consent={**CONSENT, "recipient": "hospital"})
        ),
        False,
        frozenset({"consent_recipient_mismatch"}),
    ),
    Case(
        "contract personal data, consent for another purpose",
        request(
            res=resource(personal=True), ctx=context(consent={**CONSENT, "purposes": ["treatment"]})
        ),
        False,
        frozenset({"consent_purpose_mismatch"}),
    ),
    Case(
        "contract personal data with consent",
        request(res=resource(personal=True), ctx=context(consent=CONSENT)),
        True,
        obligations={"delete_on_consent_withdrawal": True},
    ),
    Case(
        "contract provider module denies",
        request(off=offer(policy_module="fixture_no")),
        False,
        frozenset({"provider_says_no"}),
    ),
    Case(
        "contract provider module allows", request(off=offer(policy_module="fixture_small")), True
    ),
    Case(
        "contract provider module limit",
        request(off=offer(policy_module="fixture_small"), con=contract(max_transfers=50)),
        False,
        frozenset({"provider_limit_exceeded"}),
    ),
    Case(
        "contract provider module missing",
        request(off=offer(policy_module="not_uploaded")),
        False,
        frozenset({"provider_policy_missing"}),
    ),
    Case(
        "contract provider module echoes an ordinary purpose",
        request(off=offer(policy_module="fixture_echo"), con=contract(purpose="research")),
        False,
        frozenset({"purpose research is not for this provider"}),
    ),
    Case(
        # Written to turn the denial into an allow if the engine's result were read as
        # JSON with the purpose spliced in unescaped.
        "contract provider module echoing a purpose shaped like JSON still denies",
        request(off=offer(policy_module="fixture_echo"), con=contract(purpose=INJECTION)),
        False,
        frozenset({"purpose_not_offered", f"purpose {INJECTION} is not for this provider"}),
    ),
    Case(
        "contract purpose with quotes, backslash and newline matches itself",
        request(
            off=offer(purposes=[ODD_PURPOSE], policy_module="fixture_echo"),
            con=contract(purpose=ODD_PURPOSE),
        ),
        False,
        frozenset({f"purpose {ODD_PURPOSE} is not for this provider"}),
    ),
    Case(
        "contract provider module cannot lift a library denial",
        request(off=offer(policy_module="fixture_override"), res=resource(grade="core")),
        False,
        frozenset({"core_data"}),
    ),
    Case(
        "contract several denials together",
        request(off=offer(valid_until_ns=NOW), con=contract(purpose="marketing")),
        False,
        frozenset({"offer_expired", "purpose_not_offered"}),
    ),
    # -- usage: whether one transfer may start ------------------------------------------
    Case(
        "usage general transfer allowed",
        start(),
        True,
        obligations={"delete_after_ns": NOW + 90 * DAY},
    ),
    Case(
        "usage agreement revoked",
        start(con=contract(revoked=True)),
        False,
        frozenset({"agreement_revoked"}),
    ),
    Case(
        "usage revocation noticed by the connector",
        start(ctx=context(revoked=True)),
        False,
        frozenset({"agreement_revoked"}),
    ),
    Case(
        "usage agreement not yet valid",
        start(con=contract(valid_from_ns=NOW + 1)),
        False,
        frozenset({"agreement_not_yet_valid"}),
    ),
    Case(
        "usage agreement expired",
        start(con=contract(valid_until_ns=NOW)),
        False,
        frozenset({"agreement_expired"}),
    ),
    Case(
        "usage transfer limit reached",
        start(ctx=context(transfers_used=3)),
        False,
        frozenset({"transfer_limit_reached"}),
    ),
    Case("usage below the transfer limit", start(ctx=context(transfers_used=2)), True),
    # -- compute.run: answers only (可用不可见) ------------------------------------------------
    Case("compute within the rules and the budget", run(), True),
    Case(
        "compute spending more ε than is left",
        run(ctx=context(epsilon_spent=0.75, epsilon_left=0.25, computations_used=1)),
        False,
        frozenset({"privacy_budget_exhausted"}),
    ),
    Case(
        "compute on a copy-only agreement",
        run(con=compute_contract(delivery=["copy"])),
        False,
        frozenset({"compute_not_offered"}),
    ),
    Case(
        "copy of a compute-only agreement",
        start(con=compute_contract()),
        False,
        frozenset({"copy_not_offered"}),
    ),
    Case(
        "compute grouping by an undeclared dimension",
        run(query={"dimensions": ["plate"]}),
        False,
        frozenset({"dimension_not_declared"}),
    ),
    Case(
        "compute an undeclared aggregate",
        run(query={"aggregates": ["max(speed)"]}),
        False,
        frozenset({"aggregate_not_declared"}),
    ),
    Case(
        "compute an undeclared measure",
        run(query={"measures": ["plate"], "aggregates": ["count"]}),
        False,
        frozenset({"measure_not_declared"}),
    ),
    Case(
        "compute under an agreement without rules",
        run(con=contract(delivery=["compute"])),
        False,
        frozenset(
            {
                "compute_rules_missing",
                "dimension_not_declared",
                "measure_not_declared",
                "aggregate_not_declared",
            }
        ),
    ),
    Case(
        "compute on a revoked agreement",
        run(con=compute_contract(revoked=True)),
        False,
        frozenset({"agreement_revoked"}),
    ),
    Case(
        "compute on personal data without consent",
        run(res=resource(personal=True)),
        False,
        frozenset({"no_consent"}),
    ),
    Case(
        "compute on important data needs no field list",
        run(res=resource(grade="important")),
        True,
    ),
    Case(
        "compute input without the ε left",
        without(run(), "context", "epsilon_left"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "usage no transfer limit",
        start(con=contract(max_transfers=0), ctx=context(transfers_used=99)),
        True,
    ),
    Case(
        "usage byte limit reached",
        start(con=contract(max_bytes=1000), ctx=context(bytes_used=1001)),
        False,
        frozenset({"byte_limit_reached"}),
    ),
    Case(
        "usage request would pass the byte limit",
        start(con=contract(max_bytes=1000), ctx=context(bytes_used=600, request_bytes=500)),
        False,
        frozenset({"byte_limit_reached"}),
    ),
    Case(
        "usage request fits the byte limit",
        start(con=contract(max_bytes=1000), ctx=context(bytes_used=500, request_bytes=500)),
        True,
    ),
    Case(
        "usage core data never moves",
        start(res=resource(grade="core")),
        False,
        frozenset({"core_data"}),
    ),
    Case(
        "usage personal data with consent",
        start(res=resource(personal=True), ctx=context(consent=CONSENT)),
        True,
        obligations={"delete_on_consent_withdrawal": True},
    ),
    Case(
        "usage personal data after withdrawal",
        start(res=resource(personal=True), ctx=context(consent={**CONSENT, "withdrawn": True})),
        False,
        frozenset({"consent_withdrawn"}),
    ),
    Case(
        "usage personal data without consent",
        start(res=resource(personal=True)),
        False,
        frozenset({"no_consent"}),
    ),
    Case(
        "usage public data after the grant ended",
        start(subj=subject(grants=[grant(end_ns=NOW - 1)]), res=resource(**PUBLIC)),
        False,
        frozenset({"grant_not_current"}),
    ),
    Case(
        "usage public data within the grant",
        start(subj=subject(grants=[grant()]), res=resource(**PUBLIC)),
        True,
    ),
    Case(
        "usage public data under a grant the operator revoked (token still carries it)",
        start(
            subj=subject(grants=[grant()]),
            res=resource(**PUBLIC),
            ctx=context(revoked_grants=["g1"]),
        ),
        False,
        frozenset({"operation_grant_revoked"}),
    ),
    Case(
        "usage public data, another grant revoked, this one in force",
        start(
            subj=subject(grants=[grant(id="g2", scope=["health"]), grant()]),
            res=resource(**PUBLIC),
            ctx=context(revoked_grants=["g2"]),
        ),
        True,
    ),
    Case(
        "usage important data in permitted fields, masked",
        start(res=resource(grade="important"), con=contract(**IMPORTANT_FIELDS)),
        True,
        permitted_fields=("road", "speed", "time"),
        masks={"road": {"method": "generalise", "level": "district"}},
    ),
    Case(
        "usage important opaque file (no fields) needs no field policy",
        start(res=resource(grade="important", fields=[])),
        True,
    ),
    Case(
        "usage important data without a field policy",
        start(res=resource(grade="important")),
        False,
        frozenset({"no_field_policy"}),
    ),
    Case(
        "usage important data, field not in the product",
        start(res=resource(grade="important"), con=contract(permitted_fields=["time", "salary"])),
        False,
        frozenset({"field_not_in_product"}),
    ),
    Case(
        "usage delete-after capped by the agreement's end",
        start(con=contract(obligations={"delete_after_ns": NOW + YEAR})),
        True,
        obligations={"delete_after_ns": NOW + 90 * DAY},
    ),
    Case(
        "usage revoked agreement's data is deleted by default",
        start(),
        True,
        obligations={"delete_on_revocation": True},
    ),
    Case(
        "usage agreement may keep data after revocation",
        start(con=contract(obligations={"delete_on_revocation": False})),
        True,
        obligations={"delete_on_revocation": False},
    ),
    Case(
        "usage earlier delete-after kept",
        start(con=contract(obligations={"delete_after_ns": NOW + DAY})),
        True,
        obligations={"delete_after_ns": NOW + DAY},
    ),
    Case(
        "usage provider module denies",
        start(off=offer(policy_module="fixture_no")),
        False,
        frozenset({"provider_says_no"}),
    ),
    Case(
        "usage several denials together",
        start(con=contract(revoked=True, valid_until_ns=NOW), ctx=context(transfers_used=3)),
        False,
        frozenset({"agreement_revoked", "agreement_expired", "transfer_limit_reached"}),
    ),
    # -- inputs the connector should never build, which must still deny ------------------
    Case(
        "input without the agreement's limits",
        without(start(), "contract", "max_transfers"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input without the clock",
        without(read(), "context", "now_ns"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input with a time as a string",
        start(ctx=context(now_ns=str(NOW))),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input without the grade",
        without(request(), "resource", "grade"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input without an action",
        {k: v for k, v in read().items() if k != "action"},
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input with a flag given as a number",
        start(con=contract(revoked=0)),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input with a count given as a boolean",
        start(ctx=context(transfers_used=False)),
        False,
        frozenset({"invalid_input"}),
    ),
    # -- streams: decided at subscribe and re-checked while they run ---------------------
    Case("stream continues under a valid agreement", stream(), True),
    Case(
        "stream stops when the agreement is revoked",
        stream(con=contract(revoked=True)),
        False,
        frozenset({"agreement_revoked"}),
    ),
    Case(
        "stream stops past the agreement's end",
        stream(con=contract(valid_until_ns=NOW - 1)),
        False,
        frozenset({"agreement_expired"}),
    ),
    Case(
        "stream stops when its bytes are used",
        stream(con=contract(max_bytes=500), ctx=context(bytes_used=500)),
        False,
        frozenset({"byte_limit_reached"}),
    ),
    Case(
        "stream goes on below its byte limit",
        stream(con=contract(max_bytes=500), ctx=context(bytes_used=499)),
        True,
    ),
    Case(
        "stream of personal data stops when consent is withdrawn",
        stream(
            res=resource(personal=True),
            ctx=context(consent={**CONSENT, "withdrawn": True}),
        ),
        False,
        frozenset({"consent_withdrawn"}),
    ),
    Case(
        "stream stops when its messages are used",
        stream(con=contract(max_messages=100), ctx=context(messages_used=100)),
        False,
        frozenset({"message_limit_reached"}),
    ),
    Case(
        "stream goes on below its message limit",
        stream(con=contract(max_messages=100), ctx=context(messages_used=99)),
        True,
    ),
    Case(
        "stream stops for the period when the period's messages are used",
        stream(
            con=contract(max_messages=100, period_max_messages=10),
            ctx=context(messages_used=50, period_messages_used=10),
        ),
        False,
        frozenset({"period_message_limit_reached"}),
    ),
    Case(
        "stream goes on in a new period",
        stream(
            con=contract(period_max_messages=10, period_max_bytes=500),
            ctx=context(messages_used=50, bytes_used=5000, period_messages_used=0),
        ),
        True,
    ),
    Case(
        "stream stops for the period when the period's bytes are used",
        stream(con=contract(period_max_bytes=500), ctx=context(period_bytes_used=500)),
        False,
        frozenset({"period_byte_limit_reached"}),
    ),
    Case(
        "a transfer is not held to a stream's message limit",
        start(con=contract(max_messages=1), ctx=context(messages_used=5)),
        True,
    ),
    Case(
        "stream input without its message count",
        without(stream(), "context", "messages_used"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "stream input without its period limit",
        without(stream(), "contract", "period_max_messages"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "stream input without its byte count",
        without(stream(), "context", "bytes_used"),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input with an unknown grade",
        request(res=resource(grade="secret")),
        False,
        frozenset({"invalid_input"}),
    ),
    Case(
        "input without registration code",
        without(read(), "resource", "registration_code"),
        False,
        frozenset({"invalid_input"}),
    ),
]

OPT_IN_REASONS = frozenset({"important_data_requires_compute"})
"""Reasons only an operator's opt-in setting gives (policies/tds/settings.rego): covered by
tests/policy/test_settings.py with the setting turned on."""

UNDEFINED_CASES = [
    ("unknown action", {**read(), "action": "data.delete"}),
]
