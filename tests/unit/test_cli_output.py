"""``emit``: a long list prints one element a line, and reads back the same as a short one."""

from __future__ import annotations

import json

import pytest

from connector.cli.output import emit


@pytest.mark.parametrize("count", [0, 3, 100, 101, 2500])
def test_json_reads_back_the_same_at_any_length(
    count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [
        {"id": f"p{i}", "tags": ["a", "é"], "n": i, "nested": {"z": 1, "a": [i]}}
        for i in range(count)
    ]
    emit(data, "", as_json=True)
    out = capsys.readouterr().out
    assert json.loads(out) == data
    if count > 100:
        assert len(out.splitlines()) == count + 2  # one element a line
