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
