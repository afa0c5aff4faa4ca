"""``tds console``: the browser console, served on loopback with a one-time token."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from connector.cli.output import say
from connector.config import load_config
from connector.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds console``."""
    p = sub.add_parser(
        "console",
        help="open a web console for your connector (loopback, one-time token)",
        description="Serve a web console on loopback that acts on your connector through "
        "its admin API with your administrator certificate, as the other commands do. It "
        "prints a URL with a one-time token; opening it signs the browser in (an HttpOnly, "
        "SameSite=Strict cookie). The auditor's log page verifies entries in the browser.",
    )
    p.add_argument("--config", required=True, type=Path, help="your connector's config")
    p.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where to serve (default 127.0.0.1 on a free port); loopback only",
    )
    p.add_argument(
        "--insecure-listen",
        action="store_true",
        help="allow a non-loopback --listen (anyone reaching it with the token acts as you)",
    )
    p.add_argument(
        "--idle-minutes",
        type=float,
        help="end a session unused for this many minutes (default 30)",
    )
    p.add_argument(
        "--session-hours",
        type=float,
        help="end every session this many hours after sign-in (default 12)",
    )
    p.set_defaults(func=run_console)


def run_console(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from connector.console.app import Console, check_listen
    from connector.console.backend import AdminBackend
    from connector.console.sessions import IDLE_SECONDS, LIFETIME_SECONDS, Sessions

    host, port = check_listen(args.listen, insecure=args.insecure_listen)
    idle = IDLE_SECONDS if args.idle_minutes is None else args.idle_minutes * 60
    lifetime = LIFETIME_SECONDS if args.session_hours is None else args.session_hours * 3600
    if not 0 < idle <= lifetime:
        raise ConfigError("--idle-minutes must be above 0 and within --session-hours")
    if args.insecure_listen:
        say(f"warning: --insecure-listen: the console is reachable at {host}:{port} off this host")
    console = Console(
        AdminBackend(load_config(args.config)), sessions=Sessions(idle=idle, lifetime=lifetime)
    )
    console.start(host, port)
    stopped = threading.Event()
    # SIGTERM (a service manager stopping it) ends it as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        say("Console for your connector; open this URL once (the token then stops working):")
        print(console.url(), flush=True)
        stopped.wait()
    finally:
        console.stop()
    say("console stopped")
    return 0
