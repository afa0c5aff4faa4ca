"""One writer for every record source: table sources give the bytes tables always had."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connector.catalog.products import Source
from connector.errors import PreconditionFailed
from connector.sources.base import MISSING, RecordSource
from connector.sources.delivered import materialise
from connector.sources.table import TableSource
from connector.transfer.sources import SourceRoots, materialise_table

KEY = bytes(32)
FIELDS = ("id", "name", "district", "age", "notes")
MASKS: dict[str, dict[str, Any]] = {
    "name": {"method": "hash"},
    "district": {"method": "truncate", "keep": 3},
    "age": {"method": "generalise", "step": 10},
    "notes": {"method": "redact"},
}


def _csv(path: Path) -> None:
    path.write_text(
        "id,name,district,age,notes,extra\n"
        '1,Li Wei,Haidian,34,"said ""hi"", left",x\n'
        "2,张敏,朝阳区,71,,y\n"
        "3,Short,Xicheng\n"
        '4,"multi\nline",Dongcheng,not a number,n,z\n',
        encoding="utf-8",
    )


def _jsonl(path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": 1, "name": "Li Wei", "district": "Haidian", "age": 34, "notes": "x"},
        {"id": 2, "name": "张敏", "age": 71.5, "notes": None},
        {"id": 3, "name": None, "district": ["a", 1], "age": "40", "other": True},
        {"id": 4, "name": {"k": "v"}, "district": "D", "age": True},
    ]
    path.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8"
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("permitted", [None, ["id", "age", "name"], ["notes"]])
@pytest.mark.parametrize("masked", [True, False])
def test_table_source_delivers_the_bytes_materialise_table_does(
    tmp_path: Path, fmt: str, permitted: list[str] | None, masked: bool
) -> None:
    data = tmp_path / f"data.{fmt}"
    (_csv if fmt == "csv" else _jsonl)(data)
    masks = MASKS if masked else {}
    old = materialise_table(
        Source("table", str(data), fmt),
        data,
        tmp_path / "old",
        product_fields=FIELDS,
        permitted=permitted,
        masks=masks,
        key=KEY,
        roots=SourceRoots(tmp_path),
    )
    source: RecordSource = TableSource(data, fmt, FIELDS)
    new = materialise(source, tmp_path / "new", fmt=fmt, permitted=permitted, masks=masks, key=KEY)
    assert (tmp_path / "new").read_bytes() == (tmp_path / "old").read_bytes()
    assert (new.delivered.size, new.delivered.sha256, new.delivered.fields) == (
        old.size,
        old.sha256,
        old.fields,
    )
    import hashlib

    assert new.state == f"table:sha256:{hashlib.sha256(data.read_bytes()).hexdigest()}"


def test_table_missing_column_refused_and_nothing_left(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("id,name\n1,a\n")
    with pytest.raises(PreconditionFailed, match="no column 'district'"):
        materialise(
            TableSource(data, "csv", ("id", "district")),
            tmp_path / "out" / "x.csv",
            fmt="csv",
            permitted=None,
            masks={},
            key=KEY,
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_table_bad_line_refused_and_nothing_left(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": 1}\nnot json\n')
    out = tmp_path / "x.jsonl"
    with pytest.raises(PreconditionFailed, match="line 2 is not JSON"):
        materialise(
            TableSource(data, "jsonl", ("id",)), out, fmt="jsonl", permitted=None, masks={}, key=KEY
        )
    assert not out.exists()
    assert not out.with_name("x.jsonl.tmp").exists()


def test_missing_is_left_out_of_json_lines_and_empty_in_csv(tmp_path: Path) -> None:
    class Two:
        kind = "test"

        def fields(self) -> tuple[str, ...]:
            return ("a", "b")

        def open_snapshot(self) -> Any:
            from contextlib import nullcontext

            class Snap:
                fields = ("a", "b")

                def __iter__(self) -> Any:
                    return iter([(1, MISSING), (MISSING, None)])

                def state(self) -> str:
                    return "test:x"

            return nullcontext(Snap())

    materialise(
        Two(),
        tmp_path / "x.jsonl",
        fmt="jsonl",
        permitted=None,
        masks={"b": {"method": "hash"}},
        key=KEY,
    )
    assert (tmp_path / "x.jsonl").read_text() == '{"a":1}\n{"b":null}\n'
    materialise(Two(), tmp_path / "x.csv", fmt="csv", permitted=None, masks={}, key=KEY)
    assert (tmp_path / "x.csv").read_text() == "a,b\n1,\n,\n"
