"""The consumer's side of the byte stream: chunks in order, hashed as they are written."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path

from connector.errors import Unavailable, VerificationError

__all__ = ["Assembler"]


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
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab+", buffering=0)
        self._file.seek(0)
        held = 0
        while block := self._file.read(1024 * 1024):
            self._hash.update(block)
            held += len(block)
        if held > size:
            self._file.close()
            raise VerificationError(
                f"the partial file holds {held} bytes, more than the manifest's {size}"
            )
        self.received = held
        # Hashing and writing release the GIL: a writer thread does both while the caller
        # receives the next chunk. The queue is bounded, so memory stays flat.
        self._pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: OSError | None = None
        self._writer = threading.Thread(target=self._write_loop, name="tds-receive", daemon=True)
        self._writer.start()

    def _write_loop(self) -> None:
        while (data := self._pending.get()) is not None:
            if self._error is not None:
                continue
            try:
                self._file.write(data)
                self._hash.update(data)
            except OSError as exc:
                self._error = exc

    def _drain(self) -> None:
        """Wait until every accepted chunk is on disk (and stop the writer)."""
        if self._writer.is_alive():
            self._pending.put(None)
            self._writer.join()
        if self._error is not None:
            raise Unavailable(f"cannot store received data: {self._error.strerror}")

    def add(self, offset: int, data: bytes) -> None:
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
            self._pending.put(data)  # hashed and written by the writer thread, in order
            self.received += len(data)

    @property
    def complete(self) -> bool:
        """All of the manifest's bytes are held."""
        return self.received == self.size

    def finish(self, sha256: str) -> None:
        """Flush to disk and check size and hash against the manifest."""
        with self._lock:
            self._drain()
            os.fsync(self._file.fileno())
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
            try:
                self._drain()
            finally:
                self._file.close()
