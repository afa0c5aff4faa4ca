"""``tds demo`` runs the whole space and every outcome is as expected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_exits_zero_with_every_outcome_as_expected(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "connector", "demo", "--dir", str(tmp_path / "demo"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert all(o["ok"] for o in report["outcomes"])
    steps = {o["step"]: o["observed"] for o in report["outcomes"]}
    assert steps["revoked ent-b pings city-gov"] == "UNAUTHENTICATED"
    scenarios = {o["scenario"] for o in report["outcomes"]}
    assert scenarios == {
        "trust",
        "public traffic data",
        "personal health data",
        "enterprise exchange",
        "health commission",
        "core data",
        "audit",
    }
    # The scenario outcomes the issue names, each observed (not just expected).
    assert steps["ent-b (no grant) asks for traffic-flow"] == "TERMINATED: no_operation_grant"
    assert (
        steps["ent-a asks for it for advertising, outside its grant"]
        == "TERMINATED: purpose_outside_grant"
    )
    assert steps["the hospital asks for them without consent"] == "TERMINATED: no_consent"
    assert (
        steps["the hospital's copy is deleted and the deletion is in its log"]
        == "deleted: consent_withdrawn"
    )
    assert steps["the fourth pull is refused"] == "PERMISSION_DENIED: transfer_limit_reached"
    assert steps["city-gov tries to publish a core-grade product"] == "INVALID_ARGUMENT"
    assert steps["ent-a and ent-b hold the same receipts"] == "3 receipts match"
    # Compute-to-data (可用不可见): answers under k and ε, each refusal observed.
    assert (
        steps["counts and mean cost per district and age band (k = 10)"]
        == "answered: 16 groups, 2 suppressed"
    )
    assert (
        steps["a question grouping by patient id"] == "INVALID_ARGUMENT: not a declared dimension"
    )
    assert steps["the total, then the total without the one patient aged 90+ (differencing)"] == (
        "answered, then PERMISSION_DENIED: fewer than 10 rows"
    )
    assert (
        steps["the question after the budget is spent"]
        == "PERMISSION_DENIED: privacy_budget_exhausted"
    )
    assert steps["health-commission and institute hold the same receipts"] == "4 receipts match"
    assert any(s.endswith(": 1 transfer") for s in steps.values())
    assert (tmp_path / "demo" / "tds.log").stat().st_size > 0
    assert (tmp_path / "demo" / "audit" / "hospital" / "entries.jsonl").exists()
    assert "Traceback" not in result.stderr
