"""The delivered form of a record source: projected, masked, written once per transfer.

Every record source (``table``, ``sql``) is delivered the same way: its snapshot's rows are
projected to the fields the decision permits (in the product's order), each value masked as
the decision says (:class:`connector.transfer.masking.Masker`), and written to a staging
file as CSV or JSON Lines. The file is written once when the transfer starts, so a resumed
pull reads exactly the same bytes under the same SHA-256, and row by row, so memory stays
flat for any size.

The encoding is the one tables have always had:

- CSV: a header row of the delivered fields, then one row per record, ``\\n`` line ends,
  minimal quoting; ``None`` (and a missing field) is the empty cell; ``True``/``False`` are
  ``true``/``false``; a list or object is its compact JSON text.
- JSON Lines: one compact object per record, keys in the delivered order, UTF-8 as is; a
  missing field (:data:`connector.sources.base.MISSING`) is left out, ``None`` is ``null``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, cast

from connector import speedups
from connector.errors import InvalidRequest, PreconditionFailed
from connector.sources.base import MISSING, RecordSource, Row
from connector.transfer.masking import Masker

__all__ = [
    "FORMATS",
    "Delivered",
    "Materialised",
    "materialise",
    "record_projector",
    "write_rows",
]

FORMATS = ("csv", "jsonl")
"""The delivered forms of records."""

_FLUSH = 1024 * 1024
"""Bytes of encoded rows collected before they are hashed and written."""

_CHUNK = 1000
"""Rows projected, masked and encoded together."""

_SINK_QUEUE = 4
"""Encoded blocks (of about ``_FLUSH`` bytes) waiting to be hashed and written."""

_CSV_PLAIN = frozenset({str, int, float, type(None)})
"""Value types the csv module writes as the delivered form wants them."""


@dataclass(frozen=True)
class Delivered:
    """The bytes a transfer delivers: a file as it is, or a record source's staging file."""

    path: Path
    size: int
    sha256: str
    mtime_ns: int
    fields: tuple[str, ...] | None = None
    """For record sources: the delivered fields, in order."""


@dataclass(frozen=True)
class Materialised:
    """A record source's delivered form and the state of the snapshot it was made from."""

    delivered: Delivered
    state: str
    """The snapshot's :meth:`~connector.sources.base.Snapshot.state`, for receipts."""
    rows: int


def _csv_cell(value: Any) -> Any:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is MISSING:
        return None
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


class _Projection:
    """Rows in ``columns`` order -> the delivered values of ``fields``, masked.

    Works a chunk of rows at a time, a column at a time, so the per-value work left in
    Python is the masks' own (:meth:`Masker.column`).
    """

    def __init__(self, columns: Sequence[str], fields: Sequence[str], masker: Masker) -> None:
        missing = [f for f in fields if f not in columns]
        if missing:
            raise PreconditionFailed(
                f"the product's source has no column {missing[0]!r}; the provider must fix it"
            )
        self._width = len(columns)
        self._index = [list(columns).index(f) for f in fields]
        self._pick: Callable[[Row], Sequence[Any]]
        if len(self._index) == 1:
            only = self._index[0]

            def pick(row: Row) -> Sequence[Any]:
                return (row[only],)

            self._pick = pick
        else:
            self._pick = itemgetter(*self._index)
        self._whole = self._index == list(range(self._width))
        self._masked = [(pos, name) for pos, name in enumerate(fields) if name in masker]
        self._masker = masker
        self._csv_in_c: Callable[[list[Row]], bytes | None] | None = None
        forms = [masker.plain_form(name) for name in fields]
        csv_chunk = speedups.csv_chunk
        if csv_chunk is not None and None not in forms:
            layout = tuple(
                (index, *form) for index, form in zip(self._index, forms, strict=True) if form
            )
            width, key = self._width, masker.key
            self._csv_in_c = lambda chunk: csv_chunk(chunk, width, layout, key)

    def csv_in_c(self, chunk: list[Row]) -> bytes | None:
        """The chunk's CSV lines made in C, projected and masked in one pass (the same
        bytes as :meth:`columns`, :func:`_csv_lines`), or ``None`` for the Python path."""
        return None if self._csv_in_c is None else self._csv_in_c(chunk)

    def _mask(self, by_column: list[Sequence[Any]]) -> list[Sequence[Any]]:
        for pos, name in self._masked:
            values = by_column[pos]
            if MISSING in values:
                apply = self._masker.apply
                by_column[pos] = [v if v is MISSING else apply(name, v) for v in values]
            else:
                by_column[pos] = self._masker.column(name, values)
        return by_column

    def columns(self, chunk: list[Row]) -> list[Sequence[Any]] | None:
        """The chunk's delivered values a column at a time, or ``None`` when its rows are
        not all as wide as the source's columns (see :meth:`rows`)."""
        if set(map(len, chunk)) != {self._width}:
            return None
        every = list(zip(*chunk, strict=True))
        return self._mask([every[i] for i in self._index])

    def rows(self, chunk: list[Row]) -> list[Sequence[Any]]:
        """The chunk's delivered rows; a row longer than the source's columns (a CSV line
        with cells beyond the header) has its extra cells dropped."""
        if self._masked:
            by_column: list[Sequence[Any]] = list(zip(*map(self._pick, chunk), strict=True))
            return list(zip(*self._mask(by_column), strict=True))
        if self._whole and set(map(len, chunk)) <= {self._width}:
            return chunk  # every column, in order: the rows go on as they are
        return list(map(self._pick, chunk))


_CSV_SPECIAL = (",", '"', "\n", "\r", "\0")
"""Characters in a cell that make the csv module quote it (or may: NUL)."""


def _csv_lines(by_column: list[Sequence[Any]]) -> str | None:
    """The CSV lines of a chunk given a column at a time, exactly as :mod:`csv` writes
    them, or ``None`` when the csv module must write them.

    Built with ``str.join`` when no cell needs quoting, the case of most data: every
    value a string without a comma, quote, line break or NUL, an integer, a float or
    ``None``, and more than one column (a lone empty cell is quoted). Three times
    faster than the csv module's writer, which looks at every cell's every character.
    """
    if len(by_column) < 2 or not by_column[0]:
        return None
    cells: list[Sequence[str]] = []
    for values in by_column:
        kinds = set(map(type, values))
        if kinds == {str}:
            texts: Sequence[str] = cast(Sequence[str], values)
        elif kinds <= {int}:
            texts = list(map(str, values))
            kinds = set()  # digits and a sign: nothing to check
        elif kinds <= _CSV_PLAIN:
            # The csv module writes a float as its repr, which str gives too.
            texts = ["" if v is None else v if type(v) is str else str(v) for v in values]
        else:
            return None
        if str in kinds:
            joined = "|".join(texts)
            if any(c in joined for c in _CSV_SPECIAL):
                return None
        cells.append(texts)
    return "\n".join(map(",".join, zip(*cells, strict=True))) + "\n"


def _chunks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


def write_rows(
    rows: Iterable[Row],
    out: IO[bytes],
    *,
    columns: Sequence[str],
    fields: Sequence[str],
    fmt: str,
    masker: Masker,
) -> tuple[int, str, int]:
    """Write ``rows`` (values in ``columns`` order) in their delivered form to ``out``.

    Only ``fields`` are written, in that order, each masked by ``masker``. Returns the
    number of bytes written, their SHA-256 (hex) and the number of rows.
    """
    if fmt not in FORMATS:
        raise InvalidRequest(f"a record source is delivered as {' or '.join(FORMATS)}, not {fmt!r}")
    projection = _Projection(columns, fields, masker)
    sink = _Sink(out)
    try:
        count = _encode(rows, sink.put, projection=projection, fields=fields, fmt=fmt)
    except BaseException:
        sink.close(abandon=True)  # the source's error is the one to raise
        raise
    size, sha256 = sink.close()
    return size, sha256, count


def _encode(
    rows: Iterable[Row],
    put: Callable[[bytes], None],
    *,
    projection: _Projection,
    fields: Sequence[str],
    fmt: str,
) -> int:
    """Encode the projected rows, a megabyte at a time to ``put``; the number of rows."""
    count = 0
    out = bytearray()
    text = io.StringIO()

    def flush(*, full_only: bool) -> None:
        if text.tell():
            out.extend(text.getvalue().encode())
            text.seek(0)
            text.truncate()
        if len(out) > _FLUSH or not full_only:
            put(bytes(out))
            out.clear()

    if fmt == "csv":
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(fields)
        for chunk in _chunks(rows):
            by_column = None
            lines = projection.csv_in_c(chunk)
            if lines is None:
                by_column = projection.columns(chunk)
                lines = None if by_column is None else _csv_line_bytes(by_column)
            if lines is not None:
                flush(full_only=True)  # the header, or rows the csv module wrote, first
                out.extend(lines)
                count += len(chunk)
                continue
            projected: Sequence[Sequence[Any]] = (
                projection.rows(chunk) if by_column is None else list(zip(*by_column, strict=True))
            )
            if not _CSV_PLAIN.issuperset(map(type, chain.from_iterable(projected))):
                projected = [[_csv_cell(v) for v in values] for values in projected]
            writer.writerows(projected)
            count += len(chunk)
            flush(full_only=True)
    else:
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        names = tuple(fields)
        for chunk in _chunks(rows):
            records = [
                dict(zip(names, values, strict=True))
                if MISSING not in values
                else {n: v for n, v in zip(names, values, strict=True) if v is not MISSING}
                for values in projection.rows(chunk)
            ]
            text.write("\n".join(map(dumps, records)))
            text.write("\n")
            count += len(chunk)
            flush(full_only=True)
    flush(full_only=False)
    return count


def _csv_line_bytes(by_column: list[Sequence[Any]]) -> bytes | None:
    """:func:`_csv_lines` in UTF-8: from the C speedups where they are built (the same
    bytes, about a fifth of the time), else from Python."""
    if speedups.csv_lines is not None:
        return speedups.csv_lines(by_column)
    lines = _csv_lines(by_column)
    return None if lines is None else lines.encode()


class _Sink:
    """SHA-256 and the file write of the encoded rows, on a thread of their own.

    Both release the GIL, so they run beside the encoding of the next rows instead of
    after it (about 0.35 s of the 2.8 s a million SQL rows took). The bytes hashed are the
    bytes written, in order; at most ``_SINK_QUEUE`` blocks wait, so memory stays flat. A
    failed write is raised to the writer at its next block or at ``close``.
    """

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._size = 0
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=_SINK_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tds-delivered-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._blocks.get()) is not None:
            if self._error is None:
                try:
                    self._hash.update(data)
                    self._out.write(data)
                except BaseException as exc:  # raised again on the writer's side
                    self._error = exc

    def put(self, data: bytes) -> None:
        """Hash and write ``data`` after every block before it."""
        if self._error is not None:
            raise self._error
        self._size += len(data)
        self._blocks.put(data)

    def close(self, *, abandon: bool = False) -> tuple[int, str]:
        """Wait for every block; the bytes written and their SHA-256 (hex). ``abandon``:
        the writing failed on the writer's side, the sink's own outcome does not matter."""
        self._blocks.put(None)
        self._thread.join()
        if self._error is not None and not abandon:
            raise self._error
        return self._size, self._hash.hexdigest()


def _delivered(
    columns: Sequence[str],
    permitted: Sequence[str] | None,
    masks: Mapping[str, Mapping[str, Any]],
    key: bytes,
) -> tuple[tuple[str, ...], Masker]:
    """The delivered fields (the source's order) and the masker of a decision."""
    fields = tuple(f for f in columns if permitted is None or f in permitted)
    return fields, Masker({k: v for k, v in masks.items() if k in fields}, key)


def record_projector(
    columns: Sequence[str],
    *,
    permitted: Sequence[str] | None,
    masks: Mapping[str, Mapping[str, Any]],
    key: bytes,
) -> tuple[tuple[str, ...], Callable[[Row], dict[str, Any]]]:
    """The delivered fields, and a function from one row (values in ``columns`` order) to
    the JSON object it is delivered as: projected and masked exactly as
    :func:`materialise` does a table's rows (a stream, message by message)."""
    fields, masker = _delivered(columns, permitted, masks, key)
    project = _Projection(columns, fields, masker).rows

    def one(row: Row) -> dict[str, Any]:
        values = project([row])[0]
        return {n: v for n, v in zip(fields, values, strict=True) if v is not MISSING}

    return fields, one


def materialise(
    source: RecordSource,
    out: Path,
    *,
    fmt: str,
    permitted: Sequence[str] | None,
    masks: Mapping[str, Mapping[str, Any]],
    key: bytes,
) -> Materialised:
    """Write the delivered form of ``source`` to ``out`` (atomically) and describe it.

    ``permitted`` is the decision's field list (``None``: all the source's fields),
    ``masks`` the decision's masks and ``key`` the agreement's mask key. Nothing is left
    at ``out`` when the source fails part way.
    """
    fields, masker = _delivered(source.fields(), permitted, masks, key)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with source.open_snapshot() as snapshot, tmp.open("wb") as f:
            size, sha256, count = write_rows(
                snapshot, f, columns=snapshot.fields, fields=fields, fmt=fmt, masker=masker
            )
            f.flush()
            os.fsync(f.fileno())
            state = snapshot.state()
        os.replace(tmp, out)
    except UnicodeDecodeError:
        raise PreconditionFailed("the product's source is not UTF-8 text") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Materialised(Delivered(out, size, sha256, out.stat().st_mtime_ns, fields), state, count)
