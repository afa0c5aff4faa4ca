"""Structured logging: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["JsonFormatter", "NonBlockingStreamHandler", "setup_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON with its ``extra`` fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class NonBlockingStreamHandler(logging.Handler):
    """Writes records to a stream from its own thread; logging never blocks the caller.

    A stderr that nobody drains (a full pipe) blocked every thread that logged, the ones
    serving calls and the one stopping the connector alike: after a burst of refused calls
    a connector did not stop on SIGTERM until someone read its output. Records are queued
    (up to ``capacity``) and written by one daemon thread; when the queue is full they are
    dropped and counted, and the count is written once the stream takes lines again.
    """

    def __init__(self, stream: TextIO, capacity: int = 10_000) -> None:
        super().__init__()
        self._stream = stream
        self._queue: queue.Queue[str] = queue.Queue(maxsize=capacity)
        self._dropped = 0
        self._count_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="tds-log", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the formatted record, or count it as dropped when the queue is full."""
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            with self._count_lock:
                self._dropped += 1

    def _write_loop(self) -> None:
        while True:
            line = self._queue.get()
            try:
                with self._count_lock:
                    dropped, self._dropped = self._dropped, 0
                if dropped:
                    note = {"level": "warning", "logger": __name__, "dropped": dropped}
                    self._stream.write(json.dumps({**note, "msg": "log lines dropped"}) + "\n")
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nowhere left to tell
                continue
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` seconds for queued lines to be written (never longer)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


def setup_logging(level: str = "info", path: Path | None = None) -> None:
    """Send the ``connector`` loggers as JSON lines to stderr, or to ``path``.

    On stderr the lines are written by a thread of their own (``NonBlockingStreamHandler``),
    and grpc's own logger goes the same way, so a stalled reader never stalls the connector.
    """
    handler: logging.Handler
    if path is None:
        handler = NonBlockingStreamHandler(sys.stderr)
        grpc_logger = logging.getLogger("grpc")
        grpc_logger.handlers[:] = [handler]
        grpc_logger.propagate = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("connector")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
