"""A bounded worker thread that applies one function to each item, in order.

Receiving a transfer (``receiving.Assembler``) hashes and writes each chunk on a thread of
its own while the caller takes the next one; writing a delivered file
(``connector.sources.delivered``) does the same for encoded rows. Both want the same
thing: the work in order, at most a few items waiting (memory stays flat), and an error
kept for the caller rather than a dead thread that would leave ``put`` blocked on a full
queue.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["OrderedWorker"]

T = TypeVar("T")


class OrderedWorker(Generic[T]):
    """A thread applying ``work`` to each item put, in order; at most ``waiting`` items
    queue. After an error (given to ``failed``) it keeps taking items and drops them."""

    def __init__(
        self,
        name: str,
        work: Callable[[T], object],
        failed: Callable[[Exception], None],
        *,
        waiting: int = 4,
    ) -> None:
        self._work, self._failed = work, failed
        self._queue: queue.Queue[tuple[T] | None] = queue.Queue(maxsize=waiting)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        broken = False
        while (item := self._queue.get()) is not None:
            if broken:
                continue
            try:
                self._work(item[0])
            except Exception as exc:
                broken = True
                self._failed(exc)

    def put(self, item: T) -> None:
        """Queue ``item`` after every item before it (blocks while ``waiting`` are queued)."""
        self._queue.put((item,))

    def stop(self) -> bool:
        """Wait for the items put so far; True the first time (the thread was running)."""
        if not self._thread.is_alive():
            return False
        self._queue.put(None)
        self._thread.join()
        return True
