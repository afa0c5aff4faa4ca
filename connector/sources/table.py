"""``table`` sources: a CSV or JSON Lines file on the provider's disk, read as records.

CSV with a header row, every product field a column of it; JSON Lines with one object per
line, blank lines skipped, a missing key delivered as absent. The file is opened only as
the provider's :class:`~connector.sources.file.SourceRoots` allow (inside the data
directory or a configured root, no symlink swapped out of them, a regular file).

State: ``table:sha256:<hex>``, the SHA-256 of the file's bytes as read by the snapshot.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

from connector.errors import InvalidRequest, PreconditionFailed
from connector.sources.base import MISSING, Row, Snapshot
from connector.sources.file import SourceRoots

__all__ = ["TableSource", "jsonl_records"]

_BUFFER = 1024 * 1024


def jsonl_records(lines: Iterator[str] | IO[str]) -> Iterator[dict[str, Any]]:
    """The objects of JSON Lines text, blank lines skipped; a line that is not a JSON object
    is the provider's fault (``PreconditionFailed`` naming the line)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise PreconditionFailed(
                f"the product's source line {number} is not JSON; the provider must fix it"
            ) from None
        if not isinstance(record, dict):
            raise PreconditionFailed(f"the product's source line {number} is not an object")
        yield record


class _HashingReader:
    """A text file whose bytes are hashed as they are read."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()

    def readline(self) -> bytes:
        line = self._raw.readline()
        self.hash.update(line)
        return line

    def __iter__(self) -> Iterator[str]:
        while line := self.readline():
            yield line.decode("utf-8")


class _TableSnapshot:
    def __init__(self, path: Path, fmt: str, fields: tuple[str, ...], raw: IO[bytes]) -> None:
        self._reader = _HashingReader(raw)
        self._fmt = fmt
        self._done = False
        if fmt == "csv":
            lines = iter(self._reader)
            self._csv = csv.reader(lines)
            header = next(self._csv, [])
            missing = [f for f in fields if f not in header]
            if missing:
                raise PreconditionFailed(
                    f"the product's source has no column {missing[0]!r}; the provider must fix it"
                )
            self.fields = tuple(header)
        else:
            self.fields = fields

    def __iter__(self) -> Iterator[Row]:
        if self._fmt == "csv":
            width = len(self.fields)
            for row in self._csv:
                # csv.DictReader's rules: a short row's missing cells are None.
                padded: list[Any] = list(row)
                if len(padded) < width:
                    padded += [None] * (width - len(padded))
                yield padded
        else:
            names = self.fields
            for record in jsonl_records(iter(self._reader)):
                yield tuple(record.get(n, MISSING) for n in names)
        self._done = True

    def state(self) -> str:
        if not self._done:
            raise RuntimeError("a snapshot's state is known once it has been read")
        return f"table:sha256:{self._reader.hash.hexdigest()}"


class TableSource:
    """A CSV or JSON Lines file with the product's declared fields."""

    kind = "table"

    def __init__(self, path: Path, fmt: str, fields: Sequence[str], roots: SourceRoots) -> None:
        if fmt not in ("csv", "jsonl"):
            raise InvalidRequest(f"a table source is csv or jsonl, not {fmt!r}")
        self._path = path
        self._roots = roots
        self._fmt = fmt
        self._fields = tuple(fields)

    def fields(self) -> tuple[str, ...]:
        """The product's fields."""
        return self._fields

    @contextmanager
    def open_snapshot(self) -> Iterator[Snapshot]:
        """The file as it is read now."""
        # Unbuffered as the roots open it; lines are read, so buffer.
        raw = io.BufferedReader(cast(io.RawIOBase, self._roots.open(self._path)), _BUFFER)
        with raw:
            try:
                yield _TableSnapshot(self._path, self._fmt, self._fields, raw)
            except UnicodeDecodeError:
                raise PreconditionFailed("the product's source is not UTF-8 text") from None
