"""Injectable time, so that expiry logic can be tested without sleeping."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock"]


class Clock(Protocol):
    """A source of the current time in Unix seconds."""

    def now(self) -> float:
        """Return the current time in Unix seconds."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()


class FixedClock:
    """A clock that only moves when told to (for tests and replay)."""

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        """Return the fixed time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._now += seconds
