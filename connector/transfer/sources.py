"""What a transfer delivers: a file as it is, or a table projected and masked.

The delivered form is fixed when the transfer starts. A file is streamed from its source,
and its size, modification time and SHA-256 are recorded so that a changed source is
refused instead of delivered under the old hash. A table is written once, row by row, to
a staging file in its delivered form (only the permitted fields, each masked as the
decision says), so a resumed pull reads exactly the same bytes. Memory stays flat for any
size in both cases.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.catalog.products import Source
from connector.errors import PreconditionFailed
from connector.transfer.masking import Masker

__all__ = ["Delivered", "FileDigests", "materialise_table", "open_source", "read_chunks"]

_READ = 1024 * 1024


@dataclass(frozen=True)
class Delivered:
    """The bytes a transfer delivers."""

    path: Path
    size: int
    sha256: str
    mtime_ns: int
    fields: tuple[str, ...] | None = None
    """For tables: the delivered fields, in order."""


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PreconditionFailed(
            "the product's source file is missing on the provider; ask the provider to restore it"
        ) from None
    except OSError as exc:
        raise PreconditionFailed(f"the product's source cannot be read: {exc.strerror}") from None
    if not path.is_file():
        raise PreconditionFailed("the product's source is not a regular file")
    return st


class FileDigests:
    """SHA-256 of source files, remembered while size, mtime, inode and ctime hold."""

    def __init__(self, limit: int = 256) -> None:
        self._known: dict[tuple[str, int, int, int, int], str] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def digest(self, path: Path) -> Delivered:
        """The file as it is now."""
        st = _stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        with self._lock:
            known = self._known.get(key)
        if known is None:
            h = hashlib.sha256()
            with path.open("rb", buffering=0) as f:
                while block := f.read(_READ):
                    h.update(block)
            known = h.hexdigest()
            if _stat(path).st_mtime_ns != st.st_mtime_ns:
                raise PreconditionFailed("the product's source changed while being hashed")
            with self._lock:
                if len(self._known) >= self._limit:
                    self._known.pop(next(iter(self._known)))
                self._known[key] = known
        return Delivered(path, st.st_size, known, st.st_mtime_ns)


def open_source(source: Source, data_dir: Path) -> Path:
    """The source's path on this machine (relative paths are under the data directory)."""
    path = Path(source.path)
    return path if path.is_absolute() else data_dir / path


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        yield from reader


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise PreconditionFailed(
                    f"the product's source line {number} is not JSON; the provider must fix it"
                ) from None
            if not isinstance(row, dict):
                raise PreconditionFailed(f"the product's source line {number} is not an object")
            yield row


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


def materialise_table(
    source: Source,
    path: Path,
    out: Path,
    *,
    product_fields: Sequence[str],
    permitted: Sequence[str] | None,
    masks: Mapping[str, Mapping[str, Any]],
    key: bytes,
) -> Delivered:
    """Write the delivered form of a table to ``out`` and return its size and hash."""
    _stat(path)
    fields = tuple(f for f in product_fields if permitted is None or f in permitted)
    masker = Masker({k: v for k, v in masks.items() if k in fields}, key)
    if source.format == "csv":
        missing = [f for f in fields if f not in _header(path)]
        if missing:
            raise PreconditionFailed(
                f"the product's source has no column {missing[0]!r}; the provider must fix it"
            )
    h = hashlib.sha256()
    size = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    try:
        with tmp.open("wb") as f:

            def put(data: bytes) -> None:
                nonlocal size
                h.update(data)
                f.write(data)
                size += len(data)

            if source.format == "csv":
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow(fields)
                for row in _csv_rows(path):
                    values = [masker.apply(name, row.get(name)) for name in fields]
                    writer.writerow(["" if v is None else v for v in values])
                    if buffer.tell() > _READ:
                        put(buffer.getvalue().encode())
                        buffer.seek(0)
                        buffer.truncate()
                put(buffer.getvalue().encode())
            else:
                for row in _jsonl_rows(path):
                    kept = {n: masker.apply(n, row[n]) for n in fields if n in row}
                    put(
                        json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                    )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except UnicodeDecodeError:
        raise PreconditionFailed("the product's source is not UTF-8 text") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Delivered(out, size, h.hexdigest(), out.stat().st_mtime_ns, fields)


def read_chunks(path: Path, offset: int, chunk_size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the file from ``offset`` in chunks of at most ``chunk_size``."""
    with path.open("rb", buffering=0) as f:
        f.seek(offset)
        while block := f.read(chunk_size):
            yield offset, block
            offset += len(block)
