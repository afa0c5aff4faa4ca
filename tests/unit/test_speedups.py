"""The C speedups (connector/_speedups.c) give exactly their Python twins' output.

Each function is checked against the path it replaces, on values chosen to break it:
text needing quotes, non-ASCII, lone surrogates, integers at and past 64 bits, floats
whose text is easy to get wrong, and kinds it must refuse (booleans, subclasses). The
delivered bytes' pinned digests (tests/sources/test_delivered_bytes.py) run both ways too.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
from enum import StrEnum
from itertools import chain
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import speedups
from connector.sources.delivered import _csv_lines, write_rows
from connector.transfer.masking import Masker

try:
    from connector import _speedups
except ImportError:  # pragma: no cover - depends on the install
    _speedups = None  # type: ignore[assignment]

needs_speedups = pytest.mark.skipif(
    _speedups is None, reason=f"the C speedups are not built here ({speedups.status})"
)


def test_the_speedups_are_built_where_ci_requires_them() -> None:
    """CI's machine has a compiler and OpenSSL's headers: there a missing build is a fault,
    not a slower path to skip past (.ci/run sets TDS_REQUIRE_SPEEDUPS)."""
    if not os.environ.get("TDS_REQUIRE_SPEEDUPS"):
        pytest.skip("TDS_REQUIRE_SPEEDUPS is not set (only CI requires the C build)")
    assert _speedups is not None, speedups.status
    assert speedups.csv_lines is not None and speedups.hmac_sha256_hex is not None


def _hmac_hex(key: bytes, text: str) -> str:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(text.encode())
    return h.finalize().hex()


@needs_speedups
@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.lists(st.none() | st.text(max_size=70)))
def test_hmac_is_the_same_hmac(key: bytes, values: list[str | None]) -> None:
    assert _speedups is not None
    expected = [None if v is None else _hmac_hex(key, v) for v in values]
    assert _speedups.hmac_sha256_hex(key, values) == expected
    assert _speedups.hmac_sha256_hex(key, tuple(values)) == expected


@needs_speedups
def test_hmac_refuses_what_is_not_text() -> None:
    assert _speedups is not None

    class Colour(StrEnum):
        RED = "red"

    for odd in (1, b"a", True, Colour.RED, 1.5):
        assert _speedups.hmac_sha256_hex(b"k", ["a", odd]) is None
    with pytest.raises(UnicodeEncodeError):  # as str.encode() does
        _speedups.hmac_sha256_hex(b"k", ["a", "\ud800"])
    with pytest.raises(TypeError):
        _speedups.hmac_sha256_hex("not bytes", ["a"])  # type: ignore[arg-type]


CELLS = (
    st.none()
    | st.text(max_size=12)
    | st.sampled_from(["a,b", 'q"', "n\nl", "c\rr", "z\x00", "", " ", "é漢字", "\ud800x"])
    | st.integers()
    | st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**40, 0, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.1, -0.0, 1e16, 1e-7, 1.0, 123456789.125, 5e-324])
    | st.booleans()
)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _python(columns: list[list[Any]]) -> bytes | None:
    lines = _csv_lines(columns)
    return None if lines is None else lines.encode()


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(st.integers(1, 4).flatmap(lambda w: st.lists(st.lists(CELLS, min_size=w, max_size=w))))
def test_csv_lines_are_the_same_bytes(rows: list[list[Any]]) -> None:
    assert _speedups is not None
    if not rows:
        return
    columns = [list(column) for column in zip(*rows, strict=True)]
    if any(type(v) is str and not _encodable(v) for v in chain.from_iterable(rows)):
        # Neither gives bytes (each stops at the first cell it cannot take, in its own
        # order); the caller's csv module path then raises UnicodeEncodeError.
        for lines in (_python, _speedups.csv_lines):
            with contextlib.suppress(UnicodeEncodeError):
                assert lines(columns) is None
        return
    expected = _python(columns)
    assert _speedups.csv_lines(columns) == expected
    assert _speedups.csv_lines([tuple(c) for c in columns]) == expected


@needs_speedups
def test_csv_lines_refuse_what_python_refuses() -> None:
    assert _speedups is not None

    class Colour(StrEnum):
        RED = "red"

    class Big(int):
        pass

    assert _speedups.csv_lines([["a"]]) is None  # one column: a lone empty cell is quoted
    for odd in (True, Colour.RED, Big(3), b"x", [1], {"k": 1}):
        assert _speedups.csv_lines([["a", "b"], [1, odd]]) is None
        assert _python([["a", "b"], [1, odd]]) is None
    assert _speedups.csv_lines([["a", "b"], [1, 2]]) == b"a,1\nb,2\n"
    with pytest.raises(ValueError):
        _speedups.csv_lines([["a", "b"], [1]])
    with pytest.raises(TypeError):
        _speedups.csv_lines([["a"], 5])  # type: ignore[list-item]


FIELD_CELLS = CELLS | st.sampled_from(["é漢字é漢字", "ab,cd", "x" * 50, "a\u0301bc"])
MASK_SPECS: list[dict[str, Any] | None] = [
    None,
    {"method": "hash"},
    {"method": "truncate", "keep": 0},
    {"method": "truncate", "keep": 2},
    {"method": "redact"},
    {"method": "generalise", "step": 10},
]


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[list[Any], tuple[str, ...], list[str], dict[str, Any]]:
    width = draw(st.integers(1, 5))
    columns = tuple(f"c{i}" for i in range(width))
    fields = draw(st.lists(st.sampled_from(columns), min_size=1, max_size=width, unique=True))
    masks: dict[str, Any] = {}
    for name in fields:
        spec = draw(st.sampled_from(MASK_SPECS))
        if spec is not None:
            masks[name] = spec
    row = st.lists(FIELD_CELLS, min_size=width, max_size=width)
    rows = draw(st.lists(row.map(tuple) | row, max_size=30))
    if draw(st.booleans()) and rows:  # a row of another width: the Python path's to handle
        rows.append((*rows[0], "beyond"))
    return rows, columns, fields, masks


def _delivered(rows: list[Any], columns: tuple[str, ...], fields: list[str], masks: Any) -> bytes:
    out = io.BytesIO()
    write_rows(rows, out, columns=columns, fields=fields, fmt="csv", masker=Masker(masks, KEY))
    return out.getvalue()


KEY = bytes(range(32))


@needs_speedups
@settings(max_examples=400, deadline=None)
@given(_deliveries())
def test_a_delivery_is_the_same_bytes_with_and_without_the_speedups(
    delivery: tuple[list[Any], tuple[str, ...], list[str], dict[str, Any]],
) -> None:
    rows, columns, fields, masks = delivery
    fields = [c for c in columns if c in fields]  # the delivered order is the source's
    with pytest.MonkeyPatch.context() as off:
        for name in ("csv_chunk", "csv_lines", "hmac_sha256_hex"):
            off.setattr(speedups, name, None)
        try:
            expected: bytes | None = _delivered(rows, columns, fields, masks)
        except UnicodeEncodeError:
            expected = None
    if expected is None:
        with pytest.raises(UnicodeEncodeError):
            _delivered(rows, columns, fields, masks)
        return
    assert _delivered(rows, columns, fields, masks) == expected


@needs_speedups
def test_csv_chunk_masks_and_refuses_as_the_python_path() -> None:
    assert _speedups is not None
    hashed = _hmac_hex(KEY, "ann")
    rows = [(1, "ann", "ann@example.com", 2.5), [2, None, "b@x,y", -0.0]]
    layout = ((0, 0, 0), (1, 1, 0), (2, 2, 3), (3, 0, 0))
    assert _speedups.csv_chunk(rows[:1], 4, layout, KEY) == f"1,{hashed},ann,2.5\n".encode()
    assert _speedups.csv_chunk(rows[1:], 4, layout, KEY) == b"2,,b@x,-0.0\n"  # cut before ","
    assert _speedups.csv_chunk(rows[1:], 4, ((2, 2, 1), (3, 0, 0)), KEY) == b"b,-0.0\n"
    assert _speedups.csv_chunk(rows, 4, ((0, 3, 0), (1, 3, 0)), KEY) == b",\n,\n"  # redacted
    for refused in (
        [(1, "a", "b")],  # a row of another width
        [(1, True, "b", 1.0)],  # a boolean
        [(2**64, "a", "b", 1.0)],  # an integer beyond 64 bits
        [(1, 5, "b", 1.0)],  # an integer under the hash mask
        [(1, "a", 7, 1.0)],  # an integer under truncation
        [(1, "a", "b", "x\ny")],  # text the csv module quotes
        [(1, "a", "b,cd", 1.0)],  # ... still there once truncated
    ):
        assert _speedups.csv_chunk(refused, 4, layout, KEY) is None, refused
    assert _speedups.csv_chunk(rows, 4, ((0, 0, 0),), KEY) is None  # one field
    with pytest.raises(ValueError):
        _speedups.csv_chunk(rows, 4, ((9, 0, 0), (0, 0, 0)), KEY)
    with pytest.raises(ValueError):
        _speedups.csv_chunk(rows, 4, ((0, 7, 0), (1, 0, 0)), KEY)


def test_tds_version_says_which_path_deliveries_take(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.cli.main import build_parser

    for status in (speedups.status, "Python only: the C speedups were not built at install"):
        monkeypatch.setattr(speedups, "status", status)
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--version"])
        assert f"(delivery: {status})" in " ".join(capsys.readouterr().out.split())


@needs_speedups
@pytest.mark.parametrize("threshold", [100, 700])
def test_a_list_emptied_by_a_collection_mid_call_is_not_read_past_its_end(
    threshold: int,
) -> None:
    """The functions allocate as they go, a garbage collection may run a ``__del__`` that
    empties the very list being read: they work on copies (this crashed the process)."""
    assert _speedups is not None
    rows: list[Any] = [[f"r{i}", "v"] for i in range(2000)]
    columns: list[Any] = [["a"] * 3] + [range(3) for _ in range(3000)]

    class Trap:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            rows.clear()
            columns.clear()

    old = gc.get_threshold()
    try:
        gc.collect()
        gc.set_threshold(threshold)
        Trap()
        chunk = _speedups.csv_chunk(rows, 2, ((0, 0, 0), (1, 0, 0)), KEY)
        Trap()
        lines = _speedups.csv_lines(columns)
    finally:
        gc.set_threshold(*old)
    assert chunk is None or chunk.startswith(b"r0,v\n")
    assert lines is None or lines.startswith(b"a,0,")


@needs_speedups
def test_no_reference_is_kept_by_a_refusal_and_odd_arguments_are_refused() -> None:
    assert _speedups is not None
    column, other = ["x", "y"], ["z"]
    before = sys.getrefcount(other)
    for _ in range(100):
        with pytest.raises(ValueError):
            _speedups.csv_lines([column, other])
    assert sys.getrefcount(other) == before
    with pytest.raises(TypeError):
        _speedups.csv_chunk([("a", "b")], 2, ([0, 0, 0], (1, 0, 0)), KEY)  # type: ignore[arg-type]
    assert _speedups.csv_lines([[], []]) is None  # no rows: nothing to decide here
    assert _speedups.csv_chunk([], 2, ((0, 0, 0), (1, 0, 0)), KEY) is None


def test_a_truncation_longer_than_any_text_keeps_it_whole_both_ways() -> None:
    rows = [("x", "hello", 1)]
    masks = {"b": {"method": "truncate", "keep": 2**63}}
    with pytest.MonkeyPatch.context() as off:
        off.setattr(speedups, "csv_chunk", None)
        expected = _delivered(rows, ("a", "b", "c"), ["a", "b", "c"], masks)
    assert expected == b"a,b,c\nx,hello,1\n"
    assert _delivered(rows, ("a", "b", "c"), ["a", "b", "c"], masks) == expected
