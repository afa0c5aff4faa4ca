"""The city's exchanges, as ``tds demo`` runs them: public traffic data under authorised
operation, personal health data under consent, an enterprise sale, hospital admissions
used but not seen (compute-to-data), and core data."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from connector._proto.tds.v1 import admin_pb2
from connector.demo.steps import FAR_NS, Check, Steps, named
from connector.negotiation.agreement import parse_agreement, verify_agreement

__all__ = [
    "core_data",
    "enterprise_exchange",
    "health_commission",
    "personal_health",
    "public_traffic",
    "write_data",
]

DAY_NS = 86_400 * 10**9
YEAR_NS = 365 * DAY_NS


def write_data(directory: Path, seed: int = 7) -> None:
    """The participants' source data: traffic flows, health records, a logistics index."""
    directory.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    with (directory / "traffic-flow.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["time", "sensor", "road", "speed_kmh", "plate"])
        for i in range(2000):
            w.writerow(
                [
                    f"2026-11-21T{7 + i // 240:02d}:{(i // 4) % 60:02d}:00",
                    f"S-{i % 40:03d}",
                    rnd.choice(["Century Ave", "Nanjing Rd", "Yan'an Elevated", "Inner Ring"]),
                    rnd.randint(8, 95),
                    f"沪{rnd.choice('ABCDE')}{rnd.randint(10000, 99999)}",
                ]
            )
    with (directory / "health-records.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["date", "kind", "result", "note"])
        for i in range(24):
            w.writerow(
                [
                    f"2026-{1 + i // 2:02d}-{1 + (i % 2) * 14:02d}",
                    "blood-pressure",
                    f"{rnd.randint(110, 140)}/{rnd.randint(70, 90)}",
                    "routine check",
                ]
            )
    rows = (
        json.dumps({"week": w, "port": p, "teu": rnd.randint(1000, 9000)}, sort_keys=True)
        for w in range(1, 53)
        for p in ("Yangshan", "Waigaoqiao")
    )
    (directory / "logistics-index.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_admissions(directory / "admissions.csv", rnd)


DISTRICTS = ("Huangpu", "Xuhui", "Jing'an", "Pudong")
AGE_BANDS = ("0-17", "18-44", "45-64", "65-89")


def write_admissions(path: Path, rnd: random.Random) -> None:
    """Hospital admissions: 15 per district and age band in four districts, 4 in Chongming
    (a group too small to show) and one patient aged 90+ in Huangpu (one person)."""
    people = [(d, a) for d in DISTRICTS for a in AGE_BANDS for _ in range(15)]
    people += [("Chongming", "65-89")] * 4 + [("Huangpu", "90+")]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "district", "age_band", "year", "cost"])
        for n, (district, band) in enumerate(people):
            w.writerow([f"P{100000 + n}", district, band, 2026, rnd.randint(800, 40000)])


def _reasons(info: admin_pb2.NegotiationInfo) -> str:
    return f"{info.state}: {', '.join(sorted(info.reasons))}" if info.reasons else info.state


def public_traffic(
    steps: Steps, data: Path, check: Check, narrate: Callable[[str], None]
) -> dict[str, str]:
    """Important public data only to an authorised operator, within scope, approved, masked."""
    s, space = "public traffic data", steps.space
    narrate("\nPublic traffic data (公共数据授权运营)")
    published = steps.publish(
        "city-gov",
        {
            "id": "traffic-flow",
            "title": "Road traffic flow, 5-minute sensor readings",
            "grade": "important",
            "domain": "transport",
            "tags": ["traffic", "mobility"],
            "source": {"kind": "table", "path": "traffic-flow.csv", "format": "csv"},
            "fields": ["time", "sensor", "road", "speed_kmh", "plate"],
            "offers": [
                {
                    "id": "standard",
                    "purposes": ["traffic-analytics", "advertising"],
                    "valid_from_ns": 0,
                    "valid_until_ns": FAR_NS,
                    "max_transfers": 10,
                    "permitted_fields": ["time", "sensor", "road", "speed_kmh", "plate"],
                    "masks": {
                        "plate": "hash",
                        "speed_kmh": {"method": "generalise", "step": 10},
                    },
                }
            ],
        },
        str(data),
    )
    code = steps.register_public("city-gov", "traffic-flow") if published == "published" else ""
    check(
        s,
        "city-gov publishes important-grade traffic-flow with a registration code",
        "published, code issued",
        f"{published}, {'code issued' if code else 'no code'}",
    )
    narrate(f"    registration code {code}")
    now = time.time_ns()
    grant = space.grant(
        "ent-a",
        scope=["traffic"],
        purposes=["traffic-analytics"],
        start_ns=now - DAY_NS,
        end_ns=now + 3 * YEAR_NS,
        body="City Big Data Bureau",
    )
    space.refresh()  # ent-a's next membership token carries the grant
    narrate(
        f"    the operator grants ent-a authorised operation {grant.id}: scope traffic, "
        "purpose traffic-analytics, 3 years, by the City Big Data Bureau"
    )
    check(
        s,
        "ent-b (no grant) asks for traffic-flow",
        "TERMINATED: no_operation_grant",
        _reasons(steps.request("ent-b", "city-gov", "traffic-flow", "traffic-analytics")),
    )
    check(
        s,
        "ent-a asks for it for advertising, outside its grant",
        "TERMINATED: purpose_outside_grant",
        _reasons(steps.request("ent-a", "city-gov", "traffic-flow", "advertising")),
    )
    asked = steps.request("ent-a", "city-gov", "traffic-flow", "traffic-analytics")
    waiting = steps.waiting_for("city-gov", "ent-a")
    check(
        s,
        "ent-a asks within its grant; the request waits for city-gov's approval",
        "REQUESTED, 1 waiting",
        f"{asked.state}, {len(waiting)} waiting",
    )
    for pid in waiting:
        steps.admin("city-gov").ApproveNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    done = steps.follow("ent-a", asked.pid, ("FINALIZED", "TERMINATED"))
    basis = parse_agreement(done.agreement).obligations.get("operation_grant", "")
    check(
        s,
        "city-gov approves; the agreement names ent-a's grant",
        f"FINALIZED under {grant.id}",
        f"{done.state} under {basis or 'no grant'}",
    )
    pulled = steps.pull("ent-a", done.agreement_id)
    held = steps.holding("ent-a", pulled.transfer_id) if pulled.state == "completed" else b""
    rows = list(csv.DictReader(held.decode("utf-8").splitlines()))
    masked = bool(rows) and all(
        len(r["plate"]) == 64 and int(r["speed_kmh"]) % 10 == 0 for r in rows
    )
    check(
        s,
        "ent-a pulls the table: plates pseudonymised, speeds generalised, hash verified",
        "completed, masked, sha256 verified",
        f"{pulled.state}, {'masked' if masked else 'NOT masked'}, "
        + (
            "sha256 verified"
            if held and hashlib.sha256(held).hexdigest() == pulled.sha256
            else "sha256 mismatch"
        ),
    )
    narrate(f"    {len(rows)} rows, {pulled.size} bytes, receipt {pulled.receipt_id[:16]}…")
    year = dt.datetime.now(dt.UTC).year
    report = json.loads(
        steps.admin("city-gov")
        .DisclosureReport(admin_pb2.DisclosureReportRequest(period=year), timeout=30)
        .report_json
    )
    listed = [
        f"{op['operator']} {p['product']} under {p['grant']}: {p['transfers']} transfer"
        for op in report["operators"]
        for p in op["products"]
    ]
    check(
        s,
        f"city-gov's disclosure report for {year} lists the operation",
        f"ent-a traffic-flow under {grant.id}: 1 transfer",
        "; ".join(listed) or "empty",
    )
    return {"grant": grant.id, "agreement": done.agreement_id}


def personal_health(steps: Steps, data: Path, check: Check, narrate: Callable[[str], None]) -> None:
    """Personal data only with alice's consent; withdrawal refuses and deletes."""
    s = "personal health data"
    narrate("\nPersonal health data (个人信息单独同意)")
    published = steps.publish(
        "alice",
        {
            "id": "health-records",
            "title": "Alice's blood-pressure readings",
            "grade": "general",
            "personal": True,
            "tags": ["health"],
            "source": {"kind": "table", "path": "health-records.csv", "format": "csv"},
            "fields": ["date", "kind", "result", "note"],
            "offers": [
                {
                    "id": "standard",
                    "purposes": ["treatment", "research"],
                    "valid_from_ns": 0,
                    "valid_until_ns": FAR_NS,
                }
            ],
        },
        str(data),
    )
    check(s, "alice publishes her health records as personal data", "published", published)
    check(
        s,
        "the hospital asks for them without consent",
        "TERMINATED: no_consent",
        _reasons(steps.request("hospital", "alice", "health-records", "treatment")),
    )
    consent = steps.admin("alice").GrantConsent(
        admin_pb2.GrantConsentRequest(
            recipient="hospital",
            purposes=["treatment"],
            method="review by the treating physician; no onward transfer",
            categories=["health"],
            expires_ns=time.time_ns() + YEAR_NS,
        ),
        timeout=10,
    )
    narrate(f"    alice signs consent {consent.id}: hospital, treatment, health records, 1 year")
    done = steps.request("hospital", "alice", "health-records", "treatment")
    basis = parse_agreement(done.agreement).obligations.get("consent", "") if done.agreement else ""
    check(
        s,
        "with alice's consent the hospital's contract is finalized",
        f"FINALIZED under {consent.id}",
        f"{done.state} under {basis or 'no consent'}",
    )
    pulled = steps.pull("hospital", done.agreement_id)
    check(s, "the hospital pulls the records", "completed", pulled.state)
    withdrawn = steps.admin("alice").WithdrawConsent(
        admin_pb2.WithdrawConsentRequest(consent_id=consent.id, reason="I changed my mind"),
        timeout=30,
    )
    check(
        s,
        "alice withdraws; the agreement resting on it is revoked",
        "withdrawn, 1 agreement revoked",
        f"{'withdrawn' if withdrawn.withdrawn else 'in force'}, "
        f"{len(withdrawn.revoked_agreements)} agreement revoked",
    )
    again = steps.pull("hospital", done.agreement_id)
    check(
        s,
        "the hospital's next pull is refused",
        "PERMISSION_DENIED",
        again.state,
    )
    narrate(f"    {again.detail}")
    reason = steps.sweep_until_deleted("hospital", pulled.transfer_id)
    check(
        s,
        "the hospital's copy is deleted and the deletion is in its log",
        "deleted: consent_withdrawn",
        f"deleted: {reason}" if reason != "kept" else "kept",
    )


def enterprise_exchange(
    steps: Steps, data: Path, check: Check, narrate: Callable[[str], None]
) -> None:
    """A sale between enterprises: a validity window, three transfers, then revocation."""
    s = "enterprise exchange"
    narrate("\nEnterprise exchange (企业数据交易)")
    now = time.time_ns()
    steps.publish(
        "ent-a",
        {
            "id": "logistics-index",
            "title": "Weekly container throughput by port",
            "grade": "general",
            "tags": ["logistics"],
            "source": {"kind": "file", "path": "logistics-index.jsonl"},
            "offers": [
                {
                    "id": "standard",
                    "purposes": ["logistics-planning"],
                    "valid_from_ns": now - DAY_NS,
                    "valid_until_ns": now + 30 * DAY_NS,
                    "max_transfers": 3,
                }
            ],
        },
        str(data),
    )
    done = steps.request("ent-b", "ent-a", "logistics-index", "logistics-planning")
    keys = steps.space.nodes["ent-a"]._signing_key_of
    try:
        agreement = verify_agreement(done.agreement, keys)
        terms = f"{agreement.max_transfers} transfers, 30 days"
    except Exception as exc:
        terms = f"not verified: {exc}"
    check(
        s,
        "ent-b buys logistics-index from ent-a: both signatures verify",
        "FINALIZED, 3 transfers, 30 days",
        f"{done.state}, {terms}",
    )
    states = [steps.pull("ent-b", done.agreement_id) for _ in range(3)]
    check(
        s,
        "ent-b pulls three times",
        "completed, completed, completed",
        ", ".join(p.state for p in states),
    )
    fourth = steps.pull("ent-b", done.agreement_id)
    check(
        s,
        "the fourth pull is refused",
        "PERMISSION_DENIED: transfer_limit_reached",
        f"{fourth.state}: {named(fourth.detail, 'transfer_limit_reached')}",
    )
    steps.admin("ent-a").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(
            agreement_id=done.agreement_id, reason="contract ended early by ent-a"
        ),
        timeout=10,
    )
    held = steps.follow("ent-b", done.pid, ("FINALIZED",))
    deadline = time.monotonic() + 10
    while not held.revocation and time.monotonic() < deadline:
        time.sleep(0.05)
        held = steps.follow("ent-b", done.pid, ("FINALIZED",))
    reasons = {steps.sweep_until_deleted("ent-b", p.transfer_id) for p in states}
    check(
        s,
        "ent-a revokes the agreement; ent-b holds the signed revocation and deletes its copies",
        "revoked, deleted: agreement_revoked",
        f"{'revoked' if held.revocation else 'not revoked'}, deleted: {', '.join(sorted(reasons))}",
    )


ADMISSION_RULES = {
    "k": 10,
    "dimensions": {
        "district": {"type": "text"},
        "age_band": {"type": "text"},
        "year": {"type": "integer"},
    },
    "measures": {"cost": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 50000}},
}
PER_DISTRICT = (
    "SELECT district, age_band, count(*), avg(cost) FROM product "
    "WHERE year = 2026 GROUP BY district, age_band"
)


def _approved(steps: Steps, consumer: str, provider: str, product: str, offer: str) -> str:
    """Ask, have the provider approve (important data), follow to FINALIZED: the agreement."""
    asked = steps.request(consumer, provider, product, "health-research", offer=offer)
    for pid in steps.waiting_for(provider, consumer):
        steps.admin(provider).ApproveNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    return steps.follow(consumer, asked.pid, ("FINALIZED", "TERMINATED")).agreement_id


def health_commission(
    steps: Steps, data: Path, check: Check, narrate: Callable[[str], None]
) -> int:
    """Hospital admissions used where they live (可用不可见): answers under k and ε, never
    rows; a question by patient, a small group, differencing and a spent budget refused.
    Returns the computation receipts the commission and the institute share."""
    s = "health commission"
    narrate("\nHospital admissions, used but not seen (可用不可见)")
    offers = [
        {
            "id": "aggregate",
            "purposes": ["health-research"],
            "valid_from_ns": 0,
            "valid_until_ns": FAR_NS,
            "delivery": ["compute"],
            "compute": ADMISSION_RULES,
        },
        {
            "id": "private",
            "purposes": ["health-research"],
            "valid_from_ns": 0,
            "valid_until_ns": FAR_NS,
            "delivery": ["compute"],
            "compute": {
                **ADMISSION_RULES,
                "privacy": {"epsilon_per_query": 3.0, "epsilon_budget": 6.0, "delta": 1e-6},
            },
        },
    ]
    published = steps.publish(
        "health-commission",
        {
            "id": "admissions",
            "title": "Hospital admissions, 2026",
            "grade": "important",
            "domain": "health",
            "tags": ["health"],
            "source": {"kind": "table", "path": "admissions.csv", "format": "csv"},
            "fields": ["patient_id", "district", "age_band", "year", "cost"],
            "offers": offers,
        },
        str(data),
    )
    check(
        s,
        "the health commission offers admissions as compute-only important data",
        "published",
        published,
    )
    exact = _approved(steps, "institute", "health-commission", "admissions", "aggregate")
    copy = steps.pull("institute", exact)
    check(
        s,
        "the institute, approved, asks for a copy",
        "PERMISSION_DENIED: copy_not_offered",
        f"{copy.state}: {named(copy.detail, 'copy_not_offered')}",
    )
    grouped = steps.ask("institute", exact, PER_DISTRICT)
    shown = grouped.answer.get("rows", [])
    check(
        s,
        "counts and mean cost per district and age band (k = 10)",
        "answered: 16 groups, 2 suppressed",
        f"{grouped.state}: {len(shown)} groups, {grouped.answer.get('suppressed')} suppressed"
        if grouped.state == "answered"
        else f"{grouped.state}: {grouped.detail}",
    )
    for row in shown[:3]:
        narrate(f"    {row[0]:<8} {row[1]:<6} {row[2]:>3} admissions, mean cost {row[3]:.0f}")
    narrate("    … Chongming (4 admissions) and the one patient aged 90+ are not shown")
    by_patient = steps.ask(
        "institute", exact, "SELECT patient_id, count(*) FROM product GROUP BY patient_id"
    )
    check(
        s,
        "a question grouping by patient id",
        "INVALID_ARGUMENT: not a declared dimension",
        f"{by_patient.state}: {named(by_patient.detail, 'not a declared dimension')}",
    )
    whole = steps.ask("institute", exact, "SELECT count(*), sum(cost) FROM product")
    without = steps.ask(
        "institute", exact, "SELECT count(*), sum(cost) FROM product WHERE age_band <> '90+'"
    )
    check(
        s,
        "the total, then the total without the one patient aged 90+ (differencing)",
        "answered, then PERMISSION_DENIED: fewer than 10 rows",
        f"{whole.state}, then {without.state}: {named(without.detail, 'fewer than 10 rows')}",
    )
    narrate(f"    {without.detail}")
    private = _approved(steps, "institute", "health-commission", "admissions", "private")
    # Under differential privacy a group shows only when its noisy count clears a threshold
    # above k (14 here, for this ε and δ): the districts' 60 admissions do, and a group of
    # about 15 only sometimes (the threshold is on a noisy count).
    by_district = "SELECT district, count(*), avg(cost) FROM product GROUP BY district"
    spent = [steps.ask("institute", private, by_district) for _ in range(2)]
    check(
        s,
        "with differential privacy (ε 3 a question, budget 6): two noisy answers by district",
        "4 districts, ε left 3; 4 districts, ε left 0",
        "; ".join(
            f"{len(a.answer['rows'])} districts, ε left {a.receipt['epsilon_left']:g}"
            if a.state == "answered"
            else f"{a.state}: {a.detail}"
            for a in spent
        ),
    )
    third = steps.ask("institute", private, by_district)
    check(
        s,
        "the question after the budget is spent",
        "PERMISSION_DENIED: privacy_budget_exhausted",
        f"{third.state}: {named(third.detail, 'privacy_budget_exhausted')}",
    )
    narrate(f"    {third.detail}")
    return sum(a.state == "answered" for a in (grouped, whole, *spent))


def core_data(steps: Steps, data: Path, check: Check, narrate: Callable[[str], None]) -> None:
    """Core data never leaves: publishing it is refused."""
    narrate("\nCore data (核心数据)")
    check(
        "core data",
        "city-gov tries to publish a core-grade product",
        "INVALID_ARGUMENT",
        steps.publish(
            "city-gov",
            {
                "id": "city-core-registry",
                "title": "Core population registry",
                "grade": "core",
                "source": {"kind": "file", "path": "traffic-flow.csv"},
                "offers": [
                    {
                        "id": "standard",
                        "purposes": ["research"],
                        "valid_from_ns": 0,
                        "valid_until_ns": FAR_NS,
                    }
                ],
            },
            str(data),
        ),
    )
