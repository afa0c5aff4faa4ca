"""The ``tds`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from connector import __version__
from connector.cli import (
    audit,
    compute,
    consent,
    console,
    demo,
    init,
    negotiate,
    peer,
    pki,
    policy,
    product,
    registry,
    serve,
    subscribe,
    transfer,
)
from connector.cli.output import fail
from connector.errors import ConnectorError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="tds",
        description="Connector for city trusted data spaces: mutual TLS and membership "
        "tokens, contracts under Rego policies, and evidence an auditor verifies offline.",
    )
    parser.add_argument("--version", action="version", version=f"tds {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        demo,
        pki,
        init,
        serve,
        registry,
        peer,
        product,
        negotiate,
        transfer,
        compute,
        subscribe,
        consent,
        audit,
        policy,
        console,
    ):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``tds``; errors are one clear line on stderr, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is still ours to handle
        return code
    except ConnectorError as exc:
        fail(str(exc))
        return 1
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``tds ... | head -1``). Behave like a Unix
        # tool killed by SIGPIPE: no message, status 128 + 13, and point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if args.debug:
            raise
        logging.getLogger("connector").debug("internal error", exc_info=True)
        fail(f"internal error ({exc.__class__.__name__}: {exc}); rerun with --debug for details")
        return 70


if __name__ == "__main__":
    sys.exit(main())
