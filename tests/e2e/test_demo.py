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
    assert (tmp_path / "demo" / "tds.log").stat().st_size > 0
    assert "Traceback" not in result.stderr
