"""``tds serve``: run a connector or the registry until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from connector.config import Config, load_config
from connector.logs import setup_logging
from connector.node.memory import bound_malloc_arenas
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


def run_serve(args: argparse.Namespace) -> int:
    """Start the node, wait for a signal, stop gracefully."""
    bound_malloc_arenas()  # before the node starts its threads
    batch_scheduling()  # likewise: its threads inherit the class
    setup_logging(os.environ.get("TDS_LOG_LEVEL", "info"))
    cfg = apply_environment(load_config(args.config))
    from connector.node import Node  # the server stack, imported only to serve

    node = Node(cfg)
    node.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"tds: {cfg.participant.id} ({cfg.participant.role}) listening on port {node.port}",
        flush=True,
    )
    while not stopping.wait(0.5):
        pass
    node.stop()
    return 0
