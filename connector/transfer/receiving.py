"""The consumer's side of the byte stream: chunks in order, hashed as they are written."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from pathlib import Path

from connector.errors import Unavailable, VerificationError
from connector.transfer.workers import OrderedWorker

__all__ = ["Assembler"]

_ALIGN = 4096  # O_DIRECT wants file offsets, lengths and buffers on block boundaries
_STAGING_BYTES = 4 * 1024 * 1024
_WAITING_CHUNKS = 2  # per worker, received and not yet hashed or written


class _Appender:
    """Writes a file's bytes from a known length onwards, bypassing the page cache.

    Received data is written once and not read again by this process, so copying it into
    the page cache only costs CPU (the copy, and the kernel's writeback later) and evicts
    what other processes have cached. Data goes through an aligned staging buffer and is
    written with ``O_DIRECT`` in whole blocks; the last partial block is written normally.
    Where the filesystem refuses ``O_DIRECT`` (tmpfs, some network filesystems) every
    write is a normal one.
    """

    def __init__(self, fd: int, path: Path, held: int) -> None:
        self._fd = fd  # a normal descriptor: the tail, and everything without O_DIRECT
        self._direct: int | None = None
        self._staging: mmap.mmap | None = None
        self._at = held  # file offset of the staging buffer's first byte
        self._fill = 0
        if not hasattr(os, "O_DIRECT"):
            return
        try:
            direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return
        self._direct = direct
        self._staging = mmap.mmap(-1, _STAGING_BYTES)  # page-aligned
        # Start on a block boundary: take the held tail back into the buffer.
        tail = held % _ALIGN
        self._at = held - tail
        if tail:
            self._staging[:tail] = os.pread(fd, tail, self._at)
            self._fill = tail

    def append(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view and self._staging is not None:
            take = min(len(view), _STAGING_BYTES - self._fill)
            self._staging[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == _STAGING_BYTES:
                self._flush_blocks()  # may fall back to normal writes for good
        if view:
            self._write_normal(view)

    def flush(self) -> None:
        """Everything appended is written (whole blocks direct, the tail normally)."""
        if self._staging is None:
            return
        self._flush_blocks()
        if self._fill:
            os.pwrite(self._fd, self._staging[: self._fill], self._at)
            # Keep the tail staged: a later append rewrites its block directly.

    def close(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
        if self._staging is not None:
            self._staging.close()
            self._staging = None

    def _flush_blocks(self) -> None:
        assert self._staging is not None and self._direct is not None
        blocks = self._fill - self._fill % _ALIGN
        if not blocks:
            return
        # Views are released on the way out, even when pwrite raises: an exported view
        # would keep the staging buffer from being closed.
        with memoryview(self._staging) as whole, whole[:blocks] as part:
            try:
                written = os.pwrite(self._direct, part, self._at)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                written = -1  # alignment this filesystem will not take: write normally
        if written < 0:
            data = self._staging[: self._fill]
            self._fill = 0
            self.close()
            self._write_normal(data)
            return
        if written != blocks:
            raise OSError(errno.EIO, f"short write: {written} of {blocks} bytes")
        rest = self._staging[blocks : self._fill]
        self._staging[: len(rest)] = rest
        self._at += blocks
        self._fill = len(rest)

    def _write_normal(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._at)
            self._at += written
            view = view[written:]


class Assembler:
    """Writes received chunks to a partial file, refusing gaps, overlaps and oversize.

    Resuming from a partial file left by an earlier run hashes what it already holds, so
    the final hash always covers every byte on disk.
    """

    def __init__(self, path: Path, *, size: int, chunk_size: int) -> None:
        self.path = path
        self.size = size
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._hash = hashlib.sha256()
        # No directories are created here, and a symbolic link is not followed: the
        # caller names a file inside a directory it made (``holdings.holding_path``).
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        held = 0
        try:
            while block := os.read(self._fd, 1024 * 1024):
                self._hash.update(block)
                held += len(block)
            if held > size:
                raise VerificationError(
                    f"the partial file holds {held} bytes, more than the manifest's {size}"
                )
            self._appender = _Appender(self._fd, path, held)
        except BaseException:
            os.close(self._fd)
            raise
        self.received = held
        # Hashing and writing each release the GIL, and each has a thread of its own while
        # the caller receives the next chunk: a write with O_DIRECT waits for the disk, and
        # in one thread with the hash that wait held the hash back (the writer spent more
        # time in pwrite than in SHA-256). Both queues are bounded, so memory stays flat:
        # two chunks each (with four, the chunks waiting for the disk kept the consumer's
        # connector a few megabytes over the 200 MB line during a 1 GiB pull).
        self._error: Exception | None = None
        self._hashing: OrderedWorker[bytes | memoryview] = OrderedWorker(
            "tds-receive-hash", self._hash.update, self._failed, waiting=_WAITING_CHUNKS
        )
        self._writing: OrderedWorker[bytes | memoryview] = OrderedWorker(
            "tds-receive-write", self._appender.append, self._failed, waiting=_WAITING_CHUNKS
        )

    def _failed(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc

    def _drain(self) -> None:
        """Wait until every accepted chunk is hashed and on disk (and stop the workers)."""
        self._hashing.stop()
        if self._writing.stop() and self._error is None:
            try:
                self._appender.flush()
            except Exception as exc:
                self._error = exc
        if isinstance(self._error, OSError):
            raise Unavailable(f"cannot store received data: {self._error.strerror}")
        if self._error is not None:
            raise Unavailable(f"cannot store received data: {self._error!r}")

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Append one chunk; it must start exactly where the last one ended."""
        with self._lock:
            if offset != self.received:
                what = "a gap" if offset > self.received else "an overlap"
                raise VerificationError(
                    f"chunk at offset {offset} leaves {what}: {self.received} bytes are held"
                )
            if len(data) > self.chunk_size:
                raise VerificationError(
                    f"chunk of {len(data)} bytes is larger than the manifest's {self.chunk_size}"
                )
            if self.received + len(data) > self.size:
                raise VerificationError(f"chunk runs past the manifest's size of {self.size} bytes")
            self._writing.put(data)  # written and hashed by the workers, each in order
            self._hashing.put(data)
            self.received += len(data)

    @property
    def complete(self) -> bool:
        """All of the manifest's bytes are held."""
        return self.received == self.size

    def finish(self, sha256: str) -> None:
        """Flush to disk and check size and hash against the manifest."""
        with self._lock:
            self._drain()
            os.fsync(self._fd)
            if self.received != self.size:
                raise VerificationError(
                    f"received {self.received} bytes, the manifest says {self.size}"
                )
            got = self._hash.hexdigest()
            if got != sha256:
                raise VerificationError(
                    f"sha256 of the received bytes is {got}, the manifest says {sha256}"
                )

    def close(self) -> None:
        """Close the file (the partial data stays for a resume)."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                self._drain()
            finally:
                self._appender.close()
                os.close(self._fd)
                self._fd = -1
