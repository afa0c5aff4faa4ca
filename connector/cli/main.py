"""The ``tds`` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from connector import __version__, speedups
from connector.cli.output import fail
from connector.errors import ConnectorError

__all__ = ["COMMANDS", "build_parser", "main"]


# The modules that add the commands, in the order ``tds --help`` lists them, and the
# commands each adds (tests/unit/test_cli_commands.py checks this against the modules).
COMMANDS: dict[str, tuple[str, ...]] = {
    "demo": ("demo",),
    "pki": ("pki",),
    "init": ("init",),
    "serve": ("serve",),
    "registry": ("registry",),
    "peer": ("ping", "status"),
    "product": ("product", "catalog"),
    "negotiate": ("negotiate", "negotiations", "agreements"),
    "transfer": ("transfer", "data", "report"),
    "compute": ("compute",),
    "subscribe": ("subscribe",),
    "consent": ("consent",),
    "audit": ("audit",),
    "policy": ("policy",),
    "console": ("console",),
}
_OWNER = {command: module for module, commands in COMMANDS.items() for command in commands}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full argument parser; with ``command``, one that knows only the commands of the
    module adding ``command`` (importing the other command modules, and what they import,
    took a third of the CPU time of starting ``tds catalog list``)."""
    parser = argparse.ArgumentParser(
        prog="tds",
        description="Connector for city trusted data spaces: mutual TLS and membership "
        "tokens, contracts under Rego policies, and evidence an auditor verifies offline.",
    )
    parser.add_argument(
        "--version", action="version", version=f"tds {__version__} (delivery: {speedups.status})"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [_OWNER[command]] if command in _OWNER else list(COMMANDS)
    for name in modules:
        importlib.import_module(f"connector.cli.{name}").add_parser(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The command ``argv`` names, when it names one before any other option than
    ``--debug`` (``tds --help`` and ``tds --version`` get the full parser)."""
    for arg in argv:
        if arg != "--debug":
            return arg if arg in _OWNER else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``tds``; errors are one clear line on stderr, never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
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
