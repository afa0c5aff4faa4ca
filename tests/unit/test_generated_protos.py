"""The checked-in generated modules match proto/ (regenerate: python scripts/gen_protos.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("mypy_protobuf") is None,
    reason="mypy-protobuf (the dev extra) is needed to regenerate stubs",
)
def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    checked_in = ROOT / "connector" / "_proto"
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    held = {
        p.relative_to(checked_in): p.read_text()
        for p in checked_in.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(map(str, fresh)) == sorted(map(str, held)), "files differ: regenerate"
    stale = [str(name) for name, text in fresh.items() if held[name] != text]
    assert not stale, f"stale generated files {stale}: run python scripts/gen_protos.py"
