"""Every example's script runs and ends as its README says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.sources.conftest import NATS_URL, _reachable

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

AT_ONCE = 2
"""Example scripts run this many at a time: each runs one command after another (about one
core at most, much of it waiting), so two side by side take little longer than one."""
TIMEOUT = 600
"""Seconds one script may take: a guard against a hang only (two share the machine)."""


def _postgres_unreachable() -> str:
    from tests.conftest import _postgres_admin

    try:
        with _postgres_admin():  # type: ignore[attr-defined]
            return ""
    except pytest.skip.Exception as why:
        return str(why)


class Examples:
    """Every example script, started when the module's first test asks (``AT_ONCE`` at a
    time, in the tests' order); each test waits for its own."""

    def __init__(self, root: Path) -> None:
        self._pool = ThreadPoolExecutor(AT_ONCE, thread_name_prefix="example")
        self._runs: dict[str, Future[subprocess.CompletedProcess[str]]] = {}
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        self.unreachable = {"nats": _reachable(NATS_URL), "postgres": _postgres_unreachable()}
        from tests.conftest import POSTGRES_URL

        for name, needs, extra in [
            ("two-connectors", "", {}),
            *((name, "", {}) for name in sorted(SCENARIOS)),
            ("orders-postgres", "postgres", {"TDS_EXAMPLE_POSTGRES_URL": POSTGRES_URL}),
            ("flood-warning", "nats", {"TDS_EXAMPLE_NATS_URL": NATS_URL}),
        ]:
            if needs and self.unreachable[needs]:
                continue
            env = dict(os.environ, PATH=path, **extra)
            self._runs[name] = self._pool.submit(self._run, name, root / name, env)

    @staticmethod
    def _run(name: str, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run one script in a session of its own: a script that hangs is killed with the
        servers it started (a kill of bash alone would leave them running)."""
        args = ["bash", str(ROOT / "examples" / name / "run.sh"), str(workdir)]
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(killed after {TIMEOUT} s)"
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    def result(self, name: str) -> subprocess.CompletedProcess[str]:
        return self._runs[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    runs = Examples(tmp_path_factory.mktemp("examples"))
    try:
        yield runs
    finally:
        runs.close()


def test_two_connectors_example_runs(examples: Examples) -> None:
    result = examples.result("two-connectors")
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
def test_scenario_example_runs_as_its_readme_says(name: str, examples: Examples) -> None:
    result = examples.result(name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished: every step as described" in result.stdout
    for expected in SCENARIOS[name]:
        assert expected in result.stdout, (expected, result.stdout)
    assert "UNEXPECTED" not in result.stdout
    assert "Traceback" not in result.stderr
    readme = (ROOT / "examples" / name / "README.md").read_text()
    assert "run.sh" in readme


@pytest.mark.postgres
def test_orders_postgres_example_runs_as_its_readme_says(examples: Examples) -> None:
    if why := examples.unreachable["postgres"]:
        pytest.skip(why)
    result = examples.result("orders-postgres")
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


def test_flood_warning_example_runs_as_its_readme_says(examples: Examples) -> None:
    """Needs NATS with JetStream (skipped with the reason when it does not answer)."""
    if why := examples.unreachable["nats"]:
        pytest.skip(f"NATS not reachable at {NATS_URL}: {why}")
    result = examples.result("flood-warning")
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
