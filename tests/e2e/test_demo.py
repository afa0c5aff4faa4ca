"""``tds demo`` runs the whole space and every outcome is as expected; the flood early
warning scenario streams over the machine's NATS JetStream, and without a NATS server it is
skipped, saying why, while the rest runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sources.conftest import NATS_URL, _reachable
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


class Demo:
    """One ``tds demo`` process, started at once; its outcome read when a test wants it.
    Its output goes to files (a full pipe would hold it up while nobody reads it)."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self._out = directory.with_suffix(".out").open("w+")
        self._err = directory.with_suffix(".err").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "demo", "--dir", str(directory), *args],
            stdout=self._out,
            stderr=self._err,
            text=True,
        )

    def result(self) -> subprocess.CompletedProcess[str]:
        try:
            self.proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError("tds demo ran over 240 s") from None
        self._out.seek(0)
        self._err.seek(0)
        out, err = self._out.read(), self._err.read()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Demo | str]]:
    """Both demos, run side by side: each spends most of its time waiting (about 12 s of
    CPU in 35 s), so the two take little longer than one. "nats" is the reason NATS is
    unreachable instead, when it is."""
    root = tmp_path_factory.mktemp("demos")
    nowhere = f"nats://127.0.0.1:{free_port()}"
    runs: dict[str, Demo | str] = {
        "nats": _reachable(NATS_URL) or Demo(root / "nats", "--json", "--nats", NATS_URL),
        "no nats": Demo(root / "no-nats", "--nats", nowhere),
        "nowhere": nowhere,
    }
    try:
        yield runs
    finally:
        for run in runs.values():
            if isinstance(run, Demo):
                run.stop()


def test_demo_exits_zero_with_every_outcome_as_expected(demos: dict[str, Demo | str]) -> None:
    run = demos["nats"]
    if isinstance(run, str):
        pytest.skip(f"NATS not reachable at {NATS_URL}: {run} (the flood scenario needs it)")
    result = run.result()
    directory = run.directory
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["skipped"] == 0
    assert all(o["ok"] and o["status"] == "ok" for o in report["outcomes"])
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
        "flood early warning",
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
    # Flood early warning (防汛): live readings, masked, one recipient revoked mid-stream.
    flood = {o["step"]: o for o in report["outcomes"] if o["scenario"] == "flood early warning"}
    assert len(flood) == 7
    assert (
        flood["no keeper's name leaves the bureau; each bureau gets pseudonyms of its own"][
            "observed"
        ]
        == "masked: 12 and 12 pseudonyms, 0 shared"
    )
    stop = flood["met-bureau revokes city-mgmt's agreement mid-stream: its delivery stops"]
    assert stop["observed"] == "PERMISSION_DENIED: agreement_revoked, within 1 s"
    assert float(stop["measured"].split()[1]) < 1.0, stop["measured"]
    for who in ("water", "city-mgmt"):
        paired = steps[f"met-bureau and {who} hold the same window receipts"]
        assert paired.endswith("of them stream windows)") and not paired.startswith("0 "), paired
    assert (directory / "tds.log").stat().st_size > 0
    assert (directory / "audit" / "hospital" / "entries.jsonl").exists()
    assert "Traceback" not in result.stderr


def test_demo_without_nats_skips_the_flood_scenario_saying_why(
    demos: dict[str, Demo | str],
) -> None:
    run, nowhere = demos["no nats"], demos["nowhere"]
    assert isinstance(run, Demo) and isinstance(nowhere, str)
    result = run.result()
    # Everything else ran and was as expected: the exit code counts failures only.
    assert result.returncode == 0, result.stdout + result.stderr
    last = [line for line in result.stdout.splitlines() if "outcomes as expected" in line][-1]
    checked = last.split(" of ")[0]
    assert last.startswith(f"{checked} of {checked} outcomes as expected; 3 skipped, not checked")
    assert f"NATS not reachable at {nowhere}" in last
    # The narration (stderr) marks each skipped step with its reason.
    narrated = result.stderr.splitlines()
    skipped = [line for line in narrated if line.strip().startswith("[skip]")]
    assert len(skipped) == 3, result.stderr  # the scenario and its two pairs at the audit
    assert all("NATS not reachable" in line for line in skipped)
    assert not any("[FAILED]" in line for line in narrated) and "Traceback" not in result.stderr
