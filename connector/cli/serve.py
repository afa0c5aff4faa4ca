"""``tds serve``: run a connector or the registry until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from connector.config import Config, load_config
from connector.logs import setup_logging
from connector.node.memory import bound_malloc_arenas, freeze_startup_objects, keep_chunk_buffers
from connector.node.scheduling import batch_scheduling


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds serve``."""
    p = sub.add_parser(
        "serve",
        help="run a connector (or the registry, for role operator)",
        description="Serve until SIGTERM or SIGINT, then finish in-flight calls and close. "
        "Logs are JSON lines on stderr. Environment: TDS_DATABASE_URL overrides "
        "database.url; TDS_LOG_LEVEL sets the log level (default info); TDS_SCHED_BATCH=0 "
        "keeps the threads out of Linux's batch scheduling class.",
    )
    p.add_argument("--config", required=True, type=Path, help="the connector's TOML config")
    p.set_defaults(func=run_serve)


def apply_environment(cfg: Config) -> Config:
    """Environment overrides, applied by the CLI only (the library never reads them)."""
    url = os.environ.get("TDS_DATABASE_URL")
    if url:
        cfg = dataclasses.replace(cfg, database=dataclasses.replace(cfg.database, url=url))
    return cfg


# Beyond the grace, closing clients and flushing logs may take this long before the
# process is ended regardless.
STOP_MARGIN_SECONDS = 3.0


def _exit_now(message: str, code: int) -> None:
    """End the process at once: no thread that is stuck (a handler, a log writer) can hold it."""
    # A full or closed stderr must not keep the process alive either.
    with contextlib.suppress(OSError):
        os.set_blocking(2, False)
        os.write(2, f"tds: {message}\n".encode())
    os._exit(code)


def run_serve(args: argparse.Namespace) -> int:
    """Start the node, wait for a signal, stop gracefully."""
    bound_malloc_arenas()  # before the node starts its threads
    keep_chunk_buffers()  # likewise: a transfer's chunk buffers reused, not faulted in anew
    batch_scheduling()  # likewise: its threads inherit the class
    setup_logging(os.environ.get("TDS_LOG_LEVEL", "info"))
    cfg = apply_environment(load_config(args.config))
    from connector.node import Node  # the server stack, imported only to serve

    node = Node(cfg)
    node.start()
    freeze_startup_objects()  # full collections then walk only what serving allocates
    stopping = threading.Event()
    limit = cfg.server.grace_seconds + STOP_MARGIN_SECONDS

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():  # a second signal: the operator wants it gone now
            _exit_now("stopped at once on a second signal", 1)
        stopping.set()
        # Stopping is bounded whatever blocks: in-flight calls get the grace, closing and
        # flushing the margin, then the process ends (committed state is durable; what a
        # stuck call had not committed rolls back).
        watchdog = threading.Timer(
            limit, _exit_now, (f"did not stop within {limit:g} s; ended without waiting", 1)
        )
        watchdog.daemon = True
        watchdog.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dsp = f"; Dataspace Protocol at {node.dsp.base_url}" if node.dsp is not None else ""
    print(
        f"tds: {cfg.participant.id} ({cfg.participant.role}) listening on port {node.port}{dsp}",
        flush=True,
    )
    while not stopping.wait(0.5):
        pass
    node.stop()
    for handler in logging.getLogger("connector").handlers:
        handler.flush()  # bounded: see connector.logs
    sys.stdout.flush()
    # Not a normal interpreter exit: it would join every worker thread of the server,
    # and a call that ignored its cancellation would hold the process past the grace.
    os._exit(0)
