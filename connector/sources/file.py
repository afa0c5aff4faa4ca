"""``file`` sources, and where every source on the provider's disk may be read from.

Sources are read only from inside the data directory or a configured extra root
(:class:`SourceRoots`): a path is resolved and checked when the product is published and
again every time it is opened, and the file opened is checked to be the one inside (a
symlink can be swapped after it was checked). Tables (:class:`connector.sources.table.
TableSource`) are opened the same way.

A file is delivered as it is: :class:`FileDigests` fixes its size, modification time and
SHA-256 when the transfer starts, so a changed source is refused instead of delivered
under the old hash, and :func:`read_chunks` streams it from any offset, so a pull resumes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from connector.catalog.products import Source
from connector.errors import InvalidRequest, PreconditionFailed
from connector.sources.delivered import Delivered

__all__ = ["FileDigests", "SourceRoots", "locate_source", "read_chunks"]

_READ = 1024 * 1024


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
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PreconditionFailed("the product's source is not a regular file")
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


def locate_source(source: Source, roots: SourceRoots) -> Path:
    """The source's path on this machine, resolved (relative paths are under the data
    directory); ``PreconditionFailed`` when it is outside ``roots``."""
    try:
        return roots.locate(source.path)
    except InvalidRequest as exc:
        raise PreconditionFailed(str(exc)) from None


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
