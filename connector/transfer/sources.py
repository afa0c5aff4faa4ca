"""What a transfer delivers: a file as it is, or a table projected and masked.

Sources are read only from inside the data directory or a configured extra root
(``SourceRoots``): a path is resolved and checked when the product is published and again
every time it is opened, and the file opened is checked to be the one inside (a symlink
can be swapped after it was checked).

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
from typing import IO, Any

from connector.catalog.products import Source
from connector.errors import InvalidRequest, PreconditionFailed
from connector.sources.table import jsonl_records
from connector.transfer.masking import Masker

__all__ = [
    "Delivered",
    "FileDigests",
    "SourceRoots",
    "materialise_table",
    "open_source",
    "read_chunks",
]

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


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


@dataclass(frozen=True)
class SourceRoots:
    """The directories product sources may be read from: the data directory and the
    configuration's ``transfer.source_roots``; nothing outside them, whatever a
    description's path, a ``..`` or a symlink says."""

    data_dir: Path
    extra: tuple[Path, ...] = ()

    def _roots(self) -> list[Path]:
        return [r.resolve() for r in (self.data_dir, *self.extra)]

    def locate(self, path: str) -> Path:
        """``path`` (relative: under the data directory) resolved, symlinks and all, or
        ``InvalidRequest`` when it leaves every root."""
        where = Path(path)
        resolved = (where if where.is_absolute() else self.data_dir / where).resolve()
        if not _within(resolved, self._roots()):
            raise InvalidRequest(
                f"product source {path!r} is outside the data directory and "
                "transfer.source_roots; move it there, or add its directory to "
                "transfer.source_roots in the provider's configuration"
            )
        return resolved

    def open(self, path: Path) -> IO[bytes]:
        """Open a source for reading, refusing a file outside the roots: the path is
        checked again (a symlink may have been swapped since), the last component is not
        followed (``O_NOFOLLOW``), and the file opened must be inside a root."""
        try:
            located = self.locate(str(path))
        except InvalidRequest as exc:
            raise PreconditionFailed(str(exc)) from None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(located, flags)
        except FileNotFoundError:
            raise PreconditionFailed(
                "the product's source file is missing on the provider; ask the provider to "
                "restore it"
            ) from None
        except OSError as exc:
            raise PreconditionFailed(
                f"the product's source cannot be read: {exc.strerror}"
            ) from None
        f = os.fdopen(fd, "rb", buffering=0)
        # A directory swapped for a symlink between the check and the open is caught here:
        # where the descriptor really points (Linux; elsewhere the checks above stand).
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.is_symlink() and not _within(Path(os.readlink(opened)), self._roots()):
            f.close()
            raise PreconditionFailed(
                "the product's source now points outside the data directory and "
                "transfer.source_roots; the provider must fix it"
            )
        return f


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

    def digest(self, path: Path, roots: SourceRoots) -> Delivered:
        """The file as it is now (opened as ``roots`` allow)."""
        st = _stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        with self._lock:
            known = self._known.get(key)
        if known is None:
            h = hashlib.sha256()
            with roots.open(path) as f:
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


def open_source(source: Source, roots: SourceRoots) -> Path:
    """The source's path on this machine, resolved (relative paths are under the data
    directory); ``PreconditionFailed`` when it is outside ``roots``."""
    try:
        return roots.locate(source.path)
    except InvalidRequest as exc:
        raise PreconditionFailed(str(exc)) from None


def _text(path: Path, roots: SourceRoots) -> IO[str]:
    return io.TextIOWrapper(roots.open(path), encoding="utf-8", newline="")


def _csv_rows(path: Path, roots: SourceRoots) -> Iterator[dict[str, Any]]:
    with _text(path, roots) as f:
        reader = csv.DictReader(f)
        yield from reader


def _jsonl_rows(path: Path, roots: SourceRoots) -> Iterator[dict[str, Any]]:
    with _text(path, roots) as f:
        yield from jsonl_records(f)


def _header(path: Path, roots: SourceRoots) -> list[str]:
    with _text(path, roots) as f:
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
    roots: SourceRoots,
) -> Delivered:
    """Write the delivered form of a table to ``out`` and return its size and hash."""
    _stat(path)
    fields = tuple(f for f in product_fields if permitted is None or f in permitted)
    masker = Masker({k: v for k, v in masks.items() if k in fields}, key)
    if source.format == "csv":
        missing = [f for f in fields if f not in _header(path, roots)]
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
                for row in _csv_rows(path, roots):
                    values = [masker.apply(name, row.get(name)) for name in fields]
                    writer.writerow(["" if v is None else v for v in values])
                    if buffer.tell() > _READ:
                        put(buffer.getvalue().encode())
                        buffer.seek(0)
                        buffer.truncate()
                put(buffer.getvalue().encode())
            else:
                for row in _jsonl_rows(path, roots):
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


def read_chunks(
    path: Path, offset: int, chunk_size: int, roots: SourceRoots
) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the file from ``offset`` in chunks of at most ``chunk_size``
    (opened as ``roots`` allow)."""
    with roots.open(path) as f:
        f.seek(offset)
        while block := f.read(chunk_size):
            yield offset, block
            offset += len(block)
