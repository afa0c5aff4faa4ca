"""How commands talk to people and scripts: plain text, or JSON with ``--json``."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

from connector.errors import InvalidRequest

__all__ = ["JSON_HELP", "emit", "fail", "json_line", "parse_date_ns", "say", "utc_text"]

# Every command's --json flag means the same thing; one wording for all of them.
JSON_HELP = "print the result as JSON (for scripts)"


_LONG_LIST = 100
"""A list longer than this prints one element a line (json's indenting encoder is pure
Python, its compact one C: a catalog of 10,000 products took 0.75 s to indent)."""


def json_line(item: Any) -> str:
    """An element of a long list as ``emit`` prints it, on its line."""
    return json.dumps(item, sort_keys=True, default=str)


def emit(data: Any, human: str, *, as_json: bool, lines: Sequence[str] | None = None) -> None:
    """Print ``data`` as JSON for scripts, or ``human`` for people.

    ``lines``: the elements of the list ``data`` as ``json_line`` gives them, when the
    caller has them already (a long list's are then printed as they are).
    """
    if as_json:
        if isinstance(data, list) and len(data) > _LONG_LIST:
            if lines is None:
                lines = [json_line(item) for item in data]
            print("[\n  " + ",\n  ".join(lines) + "\n]")
        else:
            print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif human:
        print(human)


def say(text: str, *, quiet: bool = False) -> None:
    """A progress line for people (stderr, so ``--json`` output stays clean)."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def fail(message: str) -> None:
    """Print an error the way every tds command does."""
    print(f"tds: error: {message}", file=sys.stderr)


def parse_date_ns(text: str, flag: str) -> int:
    """A date or ISO time given on the command line (UTC unless it says), in Unix ns."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{flag} {text!r}: expected a date like 2027-11-22") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp()) * 1_000_000_000


def utc_text(ns: int, fmt: str = "%Y-%m-%d") -> str:
    """Unix nanoseconds as UTC text."""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime(fmt)
