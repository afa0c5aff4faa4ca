"""A one-line progress bar on stderr (only when stderr is a terminal)."""

from __future__ import annotations

import sys
import time

__all__ = ["ByteProgress", "CountProgress", "human_bytes"]


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class ByteProgress:
    """Bytes done of a total, with rate and ETA; silent when stderr is not a terminal."""

    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._first = -1
        self._shown = False

    def update(self, done: int, note: str = "") -> None:
        """Redraw with ``done`` bytes."""
        if not self.enabled:
            return
        if self._first < 0:
            self._first, self._start = done, time.monotonic()
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = (done - self._first) / elapsed
        left = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = width * done // max(self.total, 1)
        eta = f"ETA {int(left) // 60}:{int(left) % 60:02d}" if done < self.total else "done"
        line = (
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{human_bytes(done)}/{human_bytes(self.total)} {human_bytes(rate)}/s {eta}"
            + (f"  {note}" if note else "")
        )
        print(line.ljust(100), end="", file=sys.stderr, flush=True)
        self._shown = True

    def close(self) -> None:
        """End the line."""
        if self._shown:
            print(file=sys.stderr, flush=True)
            self._shown = False


class CountProgress:
    """Items received so far, page by page; silent when stderr is not a terminal."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._shown = False

    def update(self, items: int, pages: int) -> None:
        """Redraw with the count so far."""
        if not self.enabled:
            return
        print(f"\r{self.label}: {items} after {pages} page(s)…".ljust(60), end="", file=sys.stderr)
        self._shown = True

    def close(self) -> None:
        """End the line."""
        if self._shown:
            print(file=sys.stderr, flush=True)
            self._shown = False
