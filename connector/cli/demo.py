"""``tds demo``: run the city data space demo on loopback."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from connector.cli.output import emit, say
from connector.demo import DEFAULT_NATS_URL
from connector.logs import setup_logging
from connector.node.memory import bound_malloc_arenas, keep_chunk_buffers
from connector.node.scheduling import batch_scheduling

if TYPE_CHECKING:
    from connector.demo.space import LocalSpace


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds demo``."""
    p = sub.add_parser(
        "demo",
        help="run a whole city data space on this machine",
        description="Start the operator registry and connectors for a city government, two "
        "enterprises, an individual, a hospital, a health commission, a research institute "
        "and three flood-warning bureaus on loopback (SQLite, development PKI), run the "
        "scenarios, narrate each step, and exit 0 only if every outcome is as expected. "
        "The flood early warning scenario streams over NATS JetStream; where no server "
        "answers it is skipped, saying why (skipped steps are counted apart, never as "
        "expected). State and logs stay in the directory it names.",
    )
    p.add_argument("--dir", type=Path, help="where to keep state (default: ./tds-demo-TIMESTAMP)")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    p.add_argument(
        "--nats",
        metavar="URL",
        default=DEFAULT_NATS_URL,
        help="NATS server with JetStream for the flood early warning scenario "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the space up (Ctrl-C to stop) to explore with the CLI",
    )
    p.set_defaults(func=run)


def _keep(space: LocalSpace) -> None:
    from connector.demo.consoles import guide

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say(
        f"\nThe space is up. Configs: {space.root}/*.toml, e.g.\n"
        f"  tds ping city-gov --config {space.root}/ent-a.toml\n"
        f"  tds registry list --config {space.root}/ent-a.toml\n"
        f"  tds agreements list --config {space.root}/ent-b.toml\n"
        f"  tds consent list --config {space.root}/alice.toml\n"
        f"  tds data list --config {space.root}/water.toml --all\n"
        f"  tds report disclosure --config {space.root}/city-gov.toml --period "
        f"{time.gmtime().tm_year}\n"
        + guide(space.root, space.manifest.operator_id, time.gmtime().tm_year)
        + "\nCtrl-C stops it."
    )
    while not stop.wait(0.5):
        pass


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 1 if any outcome differs from what was expected."""
    root: Path = args.dir or Path(f"tds-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    bound_malloc_arenas()  # the whole space runs in this process
    keep_chunk_buffers()
    batch_scheduling()
    setup_logging("info", root.resolve() / "tds.log")
    # The whole connector stack, imported only when the demo runs (not for --help).
    from connector.demo.run import outcomes_json, run_demo, summary

    outcomes = run_demo(
        root.resolve(), say, keep=_keep if args.keep_running else None, nats_url=args.nats
    )
    failed = [o for o in outcomes if o.status == "failed"]
    emit(
        {
            "directory": str(root.resolve()),
            "ok": not failed,
            "skipped": sum(o.status == "skipped" for o in outcomes),
            "outcomes": outcomes_json(outcomes),
        },
        "\n" + summary(outcomes),
        as_json=args.json,
    )
    say(f"Logs: {root.resolve() / 'tds.log'}")
    return 1 if failed else 0
