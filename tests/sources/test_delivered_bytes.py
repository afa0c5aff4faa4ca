"""The delivered bytes are pinned: the same rows and masks give the same bytes as ever.

A resumed pull, or a transfer made by a newer connector from the same data, must get the
bytes (and SHA-256) the delivered form has always had. The digests below were made by the
row-at-a-time writer (the csv module's writer, :meth:`Masker.apply` per value) before
delivery was made columnwise; the rows cover what the fast paths must tell apart: cells
that need quoting, empty text and ``None``, numbers, booleans, lists, missing fields, rows
wider than the header, repeated and non-text values under a hash mask.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from connector import speedups
from connector.sources.base import MISSING
from connector.sources.delivered import write_rows
from connector.transfer.masking import Masker

KEY = bytes(range(32))
COLUMNS = ("id", "name", "email", "city", "amount", "age", "notes")
MASKS: dict[str, dict[str, Any]] = {
    "name": {"method": "hash"},
    "email": {"method": "truncate", "keep": 3},
    "age": {"method": "generalise", "step": 10},
    "notes": {"method": "redact"},
}
SPECIAL = ["a,b", 'say "hi"', "two\nlines", "cr\rhere", "nul\x00byte", "", " lead", "é漢字"]


def _rows(n: int) -> Iterator[tuple[Any, ...]]:
    """Deterministic rows; chunk by chunk (1,000 rows), more kinds of value appear."""
    for i in range(n):
        chunk = i // 1000
        name: Any = f"customer {i % 700}"  # repeats, for the hash mask's reuse
        email: Any = f"c{i}@example.com"
        city: Any = ["Haidian", "Chaoyang", "Xicheng"][i % 3]
        amount: Any = f"{i % 1000}.{i % 100:02d}"
        age: Any = i % 90
        notes: Any = f"note {i}"
        row: tuple[Any, ...]
        if chunk == 1 and i % 7 == 0:
            name, city, notes = None, None, None
        if chunk == 2:
            amount = (i % 1000) / 8 if i % 2 else i
            age = str(i % 90) if i % 3 else float(i % 90) + 0.5
        if chunk == 3 and i % 50 == 0:
            city = SPECIAL[(i // 50) % len(SPECIAL)]
            name = SPECIAL[(i // 50 + 1) % len(SPECIAL)]
        if chunk == 4 and i % 40 == 0:
            name = [1, "x"] if i % 80 else i
            email = True if i % 120 else {"k": "v, w"}
            age = "not a number"
        if chunk == 5 and i % 30 == 0:
            email, notes = MISSING, MISSING
        row = (i, name, email, city, amount, age, notes)
        if chunk == 6 and i % 100 == 0:
            row = (*row, "beyond the header")
        yield row


N = 7000

PINNED = {
    ("csv", "masked"): "9890cf527b8e431ff50558319101cd6844a797ffdc0449e4ac55bd1988dbf669",
    ("csv", "plain"): "ad1bf1d81b68a4a00689e94837c61bf5bde65bc000b7328f188fa6cacd9a5412",
    ("csv", "projected"): "1118d9ccb73a0019c61b0a7c09bdf367faf481ca9e39d4896c3adc8c76fd041c",
    ("jsonl", "masked"): "698c2c7e5c495bcf344a60ebe770220a072e5ea5cba04924d906083720cc01fe",
    ("jsonl", "plain"): "7cf74389b2c6be9a428ca940b87163d8864d5c153a375642fd6ec49a87bd2168",
}


def _write(fmt: str, case: str) -> bytes:
    fields = ("city", "id", "name") if case == "projected" else COLUMNS
    masks = {} if case == "plain" else {k: v for k, v in MASKS.items() if k in fields}
    out = io.BytesIO()
    _size, sha256, rows = write_rows(
        _rows(N), out, columns=COLUMNS, fields=fields, fmt=fmt, masker=Masker(masks, KEY)
    )
    assert rows == N
    assert sha256 == hashlib.sha256(out.getvalue()).hexdigest()
    return out.getvalue()


@pytest.fixture(params=["c", "python"])
def speedups_used(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test below runs with the C speedups (where built) and without them."""
    if request.param == "python":
        monkeypatch.setattr(speedups, "csv_lines", None)
        monkeypatch.setattr(speedups, "csv_chunk", None)
        monkeypatch.setattr(speedups, "hmac_sha256_hex", None)
    elif speedups.csv_lines is None:
        pytest.skip(f"the C speedups are not built here ({speedups.status})")
    return str(request.param)


@pytest.mark.parametrize(("fmt", "case"), sorted(PINNED))
def test_delivered_bytes_are_pinned(fmt: str, case: str, speedups_used: str) -> None:
    assert hashlib.sha256(_write(fmt, case)).hexdigest() == PINNED[(fmt, case)]


def _cell(value: Any) -> Any:
    if value is True or value is False:
        return "true" if value else "false"
    if value is MISSING:
        return None
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def test_csv_is_what_the_csv_module_writes_of_each_masked_value(speedups_used: str) -> None:
    """The same bytes as the csv module writing each row of ``Masker.apply``'d values."""
    masker = Masker(MASKS, KEY)
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in _rows(N):
        writer.writerow(
            [
                _cell(v if v is MISSING else masker.apply(name, v))
                for name, v in zip(COLUMNS, row[: len(COLUMNS)], strict=True)
            ]
        )
    assert _write("csv", "masked") == expected.getvalue().encode()


@pytest.mark.parametrize("method", ["hash", "truncate", "generalise", "redact"])
def test_a_column_is_masked_as_each_value_would_be(method: str, speedups_used: str) -> None:
    spec = {"hash": {}, "truncate": {"keep": 2}, "generalise": {"step": 5}, "redact": {}}[method]
    masker = Masker({"f": {"method": method, **spec}}, KEY)
    values: list[Any] = [
        "a", "a", "", None, 0, 1, True, False, 1.0, 12.5, -3, "17", " 4.5 ", [1, "x"],
        {"k": 1}, "漢字漢字", "a", float("inf"), 10**30,
    ]  # fmt: skip
    assert masker.column("f", values) == [masker.apply("f", v) for v in values]
    assert masker.column("other", values) == values
