"""Every example's script runs and ends as its README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_two_connectors_example_runs(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "two-connectors" / "run.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "it verified you as ent-a (enterprise)" in result.stdout
    assert "it verified you as city-gov (government)" in result.stdout
    assert "refused, as expected" in result.stdout
    assert "participant 'ent-a' has been revoked by the operator" in result.stderr


SCENARIOS = {
    "public-traffic": [
        "Road traffic flow, 5-minute aggregates  [CITY-",
        "no_operation_grant",
        "purpose_outside_grant",
        "TERMINATED  (asked too early)",
        "is TERMINATED, not waiting",
        "REQUESTED",
        "(verified)",
        "ent-a: 1 transfers",
    ],
    "personal-health": [
        "no_consent",
        "withdrawn by the individual",
        "reason: consent_withdrawn",
    ],
    "enterprise-exchange": [
        "both signatures verify",
        "transfer_limit_reached",
        "REVOKED",
        "consumer deleted",
    ],
    "core-data": ["core data (核心数据) is never published", "(no products)"],
    "health-compute": [
        "offer aggregate: compute only, k=10, by age_band, district, year",
        "copy_not_offered",
        "16 groups shown, 2 suppressed (fewer rows than the offer's k)",
        "patient_id is not a declared dimension (declared: age_band, district, year)",
        "separates fewer than 10 rows",
        "ε spent 3 (differential privacy), 3 left of the budget",
        "privacy_budget_exhausted (ε 6 spent, 0 left, 3 asked)",
        "2 answers, ε 6 of 6 spent (0 left)",
        "4 receipts match (4 of them computations)",
    ],
    "audit": ["cosigned by auditor", "1 receipts match", "first bad index"],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_example_runs_as_its_readme_says(name: str, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / name / "run.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished: every step as described" in result.stdout
    for expected in SCENARIOS[name]:
        assert expected in result.stdout, (expected, result.stdout)
    assert "UNEXPECTED" not in result.stdout
    assert "Traceback" not in result.stderr
    readme = (ROOT / "examples" / name / "README.md").read_text()
    assert "run.sh" in readme


@pytest.mark.postgres
def test_orders_postgres_example_runs_as_its_readme_says(tmp_path: Path) -> None:
    from tests.conftest import POSTGRES_URL, _postgres_admin

    with _postgres_admin():  # type: ignore[attr-defined]  # skips when PostgreSQL is down
        pass
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        TDS_EXAMPLE_POSTGRES_URL=POSTGRES_URL,
    )
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "orders-postgres" / "run.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (ROOT / "examples" / "orders-postgres" / "README.md").read_text()
    for shown in (
        "created table example_orders with 5 orders",
        "Published orders                   general    1 offer(s)  Online orders, March 2026",
        "source.query must be a SELECT; a DELETE statement is not allowed",
        "Received 615 B into orders.csv",
        "(signed by you, countersigned by ent-a)",
        "order_id,ordered_on,customer_name,postcode,city,item,amount",
    ):
        assert shown in result.stdout, (shown, result.stdout)
        assert shown in readme, shown
    # The README's rows, pseudonyms aside (they are keyed to each run's agreement).
    for line in readme.splitlines():
        if line.strip().startswith("100") and "…" in line:
            first, rest = line.strip().split("…", 1)
            order, date = first.split(",")[:2]
            tail = rest.split(",", 1)[1]
            assert f"{order},{date}," in result.stdout and f",{tail}" in result.stdout, line
    assert "finished: every step as described" in result.stdout
    assert "UNEXPECTED" not in result.stdout
    assert "Traceback" not in result.stderr


def test_flood_warning_example_runs_as_its_readme_says(tmp_path: Path) -> None:
    """Needs NATS with JetStream (skipped with the reason when it does not answer)."""
    from tests.sources.conftest import NATS_URL, _reachable

    if why := _reachable(NATS_URL):
        pytest.skip(f"NATS not reachable at {NATS_URL}: {why}")
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        TDS_EXAMPLE_NATS_URL=NATS_URL,
    )
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "flood-warning" / "run.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished: every step as described" in result.stdout
    for expected in (
        "stopped: agreement_revoked",
        '"kept_sequence": 300',
        '"state": "SUSPENDED"',
        "300 messages to sequence 300 in 15 windows",
        "(deleted)",
        "15 receipts match (15 of them stream windows)",
        "keepers' names at water and city-mgmt: masked: 12 and 12 pseudonyms, 0 shared",
        "after the bureau's agreement.revoked (within a second;",
    ):
        assert expected in result.stdout, (expected, result.stdout)
    assert "UNEXPECTED" not in result.stdout and "Traceback" not in result.stderr
