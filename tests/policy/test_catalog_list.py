"""A page's one decision (catalog.list) shows exactly what one decision per product
(catalog.read) would: never a product a single read hides, never hides one it shows."""

from __future__ import annotations

import itertools
import random
from typing import Any

from connector.policy.decision import INVALID_INPUT
from connector.policy.engine import PolicyEngine

NOW = 1_800_000_000_000_000_000

SUBJECTS = [
    {"id": "gov", "role": "government", "attrs": {}, "grants": []},
    {"id": "a", "role": "enterprise", "attrs": {"org": "A"}, "grants": []},
    {"id": "b", "role": "enterprise", "attrs": {"org": "B", "sector": "health"}, "grants": []},
    {"id": "ind", "role": "individual", "attrs": {}, "grants": []},
]

ACCESS = [
    {"roles": [], "allow_list": [], "attrs": {}},
    {"roles": ["enterprise"], "allow_list": [], "attrs": {}},
    {"roles": [], "allow_list": ["b"], "attrs": {}},
    {"roles": [], "allow_list": [], "attrs": {"org": "A"}},
    {"roles": ["enterprise", "government"], "allow_list": ["a", "b"], "attrs": {"org": "B"}},
    {"roles": ["auditor"], "allow_list": [], "attrs": {}},
]


def resources(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        out.append(
            {
                "id": f"p{i:03d}",
                "owner": rng.choice(["gov", "gov", "a"]),
                "grade": rng.choice(["general", "general", "important", "core"]),
                "tags": rng.sample(["traffic", "health", "energy"], rng.randint(0, 2)),
                "domain": "city",
                "fields": ["time", "value"],
                "registration_code": rng.choice(["", "CITY-2026-X"]),
                "personal": rng.random() < 0.2,
                "access": rng.choice(ACCESS),
            }
        )
    return out


def test_a_page_decides_as_each_product_alone(engine: PolicyEngine) -> None:
    rng = random.Random(21)
    page = resources(rng, 30)  # 120 single decisions per engine: the OPA double is slow
    for subject in SUBJECTS:
        context = {"now_ns": NOW, "revoked_grants": []}
        batch = engine.decide(
            {"action": "catalog.list", "subject": subject, "resources": page, "context": context}
        )
        assert batch.allow, batch.detail
        alone = [
            r["id"]
            for r in page
            if engine.decide(
                {
                    "action": "catalog.read",
                    "subject": subject,
                    "resource": r,
                    "offer": {},
                    "contract": {},
                    "context": context,
                }
            ).allow
        ]
        assert list(batch.visible_ids or ()) == sorted(alone), subject["id"]
        assert 0 < len(alone) < len(page)  # the cases mix visible and hidden


def test_a_malformed_page_is_refused_and_shows_nothing(engine: PolicyEngine) -> None:
    rng = random.Random(7)
    good = resources(rng, 3)
    subject = SUBJECTS[1]
    context = {"now_ns": NOW, "revoked_grants": []}
    broken: list[Any] = [
        [*good, {**good[0], "grade": "secret"}],
        [*good, {k: v for k, v in good[0].items() if k != "owner"}],
        [*good, "p999"],
        "not a list",
    ]
    for page, missing in itertools.product(broken, [False, True]):
        document: dict[str, Any] = {
            "action": "catalog.list",
            "subject": subject,
            "resources": page,
            "context": context,
        }
        if missing:
            document.pop("context")
        decision = engine.decide(document)
        assert not decision.allow and decision.deny == (INVALID_INPUT,)
        assert decision.visible_ids is None
