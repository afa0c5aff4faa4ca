"""One writer for every record source: table sources give the bytes tables always had."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.errors import PreconditionFailed
from connector.sources.base import MISSING, RecordSource
from connector.sources.delivered import materialise, write_rows
from connector.sources.file import SourceRoots
from connector.sources.table import TableSource
from connector.transfer.masking import Masker

KEY = bytes(32)
FIELDS = ("id", "name", "district", "age", "notes")
MASKS: dict[str, dict[str, Any]] = {
    "name": {"method": "hash"},
    "district": {"method": "truncate", "keep": 3},
    "age": {"method": "generalise", "step": 10},
    "notes": {"method": "redact"},
}


def _sinks_alive() -> list[threading.Thread]:
    """The writer threads write_rows started that are still running (by name, so threads
    left winding down by earlier tests in the same process do not count)."""
    return [t for t in threading.enumerate() if t.name == "tds-delivered-sink" and t.is_alive()]


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


# The SHA-256 of the delivered bytes of each case, as the table writer the transfer
# provider used before record sources (connector/transfer/sources.py materialise_table,
# removed by issue 19) wrote them for these inputs: the delivered form of
# a table must not change under a consumer who compares hashes.
KNOWN: dict[tuple[str, str, bool], str] = {
    ("csv", "*", True): "c20029b16dc55abc90db98da8536951f773ed399b9bf80bcf6a4f87f43f00817",
    ("csv", "*", False): "833078ee194c55226da3127a8caf020f4abc7d7f9f939d04e8417fda9e280948",
    (
        "csv",
        "id,age,name",
        True,
    ): "c799b55c98316db3ea3fe5ab72309c6cd372cc67ebc219b3d7cf2272e9f84a72",
    (
        "csv",
        "id,age,name",
        False,
    ): "05663710b0b74223094b05a519cbd6a377de526de8065cfc7227802e586d04cc",
    ("csv", "notes", True): "645147146e9dcb3a843f7939ce227ac8315e486b2ce13f014fd8d99e5db6f583",
    ("csv", "notes", False): "ebb6f98237aeb0ffd14cd9af245e0d55c81229681d5dc5df75dfa1d2673f56b1",
    ("jsonl", "*", True): "e00d2d2151a4b08d35a50b7dec3eafed4d8f0f8fa6204f4c6580faa560446f94",
    ("jsonl", "*", False): "21d66d05f7ecf4d7626aa009e0449d2302728337b44f97ae2e887c59617a8de7",
    (
        "jsonl",
        "id,age,name",
        True,
    ): "4e2ec20bbe12410a98cf3b015dfbb3bec619374a1938e4886cef437745b9e43f",
    (
        "jsonl",
        "id,age,name",
        False,
    ): "d4fbbf92a40c86dc283d7971127019261e92488334d8de4932cc566986a8472f",
    ("jsonl", "notes", True): "d9dd309399729b89a8bbc97741b8f3b7bbd6a1fc4253362260ece30ae7fd4c44",
    ("jsonl", "notes", False): "b5c6f6ff191f3034a04728be06412ae4f633c34f99e7438528666e0e7f147641",
}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("permitted", [None, ["id", "age", "name"], ["notes"]])
@pytest.mark.parametrize("masked", [True, False])
def test_table_source_delivers_the_bytes_tables_always_had(
    tmp_path: Path, fmt: str, permitted: list[str] | None, masked: bool
) -> None:
    data = tmp_path / f"data.{fmt}"
    (_csv if fmt == "csv" else _jsonl)(data)
    masks = MASKS if masked else {}
    source: RecordSource = TableSource(data, fmt, FIELDS, SourceRoots(tmp_path))
    new = materialise(source, tmp_path / "new", fmt=fmt, permitted=permitted, masks=masks, key=KEY)
    delivered = (tmp_path / "new").read_bytes()
    assert new.delivered.sha256 == hashlib.sha256(delivered).hexdigest()
    assert new.delivered.size == len(delivered)
    assert new.delivered.fields == tuple(f for f in FIELDS if permitted is None or f in permitted)
    assert new.delivered.sha256 == KNOWN[(fmt, ",".join(permitted or ["*"]), masked)]
    assert new.state == f"table:sha256:{hashlib.sha256(data.read_bytes()).hexdigest()}"


def test_table_missing_column_refused_and_nothing_left(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("id,name\n1,a\n")
    with pytest.raises(PreconditionFailed, match="no column 'district'"):
        materialise(
            TableSource(data, "csv", ("id", "district"), SourceRoots(tmp_path)),
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
            TableSource(data, "jsonl", ("id",), SourceRoots(tmp_path)),
            out,
            fmt="jsonl",
            permitted=None,
            masks={},
            key=KEY,
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


def test_cells_beyond_the_header_never_leave(tmp_path: Path) -> None:
    """Every column permitted, in order, no masks: rows go on as read, except a CSV line
    with more cells than the header, whose extra cells are dropped (as with any projection)."""
    data = tmp_path / "data.csv"
    data.write_text("id,name\n1,a\n2,b,secret\n3\n")
    made = materialise(
        TableSource(data, "csv", ("id", "name"), SourceRoots(tmp_path)),
        tmp_path / "out.csv",
        fmt="csv",
        permitted=None,
        masks={},
        key=KEY,
    )
    assert (tmp_path / "out.csv").read_text() == "id,name\n1,a\n2,b\n3,\n"
    assert made.rows == 3


class _FullDisk(io.BytesIO):
    """A file that takes 1.5 MB, then fails like a full disk."""

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > 1_500_000:
            raise OSError(28, "No space left on device")
        return super().write(data)


def _many(n: int) -> Iterator[tuple[Any, ...]]:
    for i in range(n):
        yield (i, f"name {i}", "x" * 40)


def test_a_failed_write_is_raised_and_no_thread_is_left() -> None:
    with pytest.raises(OSError, match="No space left"):
        write_rows(
            _many(200_000),
            _FullDisk(),
            columns=("id", "name", "pad"),
            fields=("id", "name", "pad"),
            fmt="csv",
            masker=Masker({}, KEY),
        )
    assert not _sinks_alive()


def test_a_failing_source_is_the_error_raised() -> None:
    def broken() -> Iterator[tuple[Any, ...]]:
        yield from _many(50_000)
        raise PreconditionFailed("the source went away")

    with pytest.raises(PreconditionFailed, match="went away"):
        write_rows(
            broken(),
            io.BytesIO(),
            columns=("id", "name", "pad"),
            fields=("id", "name", "pad"),
            fmt="jsonl",
            masker=Masker({}, KEY),
        )
    assert not _sinks_alive()


def test_the_hash_is_of_the_bytes_written() -> None:
    out = io.BytesIO()
    size, sha256, rows = write_rows(
        _many(100_000),
        out,
        columns=("id", "name", "pad"),
        fields=("name", "id"),
        fmt="csv",
        masker=Masker({"name": {"method": "hash"}}, KEY),
    )
    data = out.getvalue()
    assert rows == 100_000 and size == len(data) > 5 * 1024 * 1024
    assert sha256 == hashlib.sha256(data).hexdigest()
