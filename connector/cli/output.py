"""How commands talk to people and scripts: plain text, or JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["emit", "fail", "say"]


def emit(data: Any, human: str, *, as_json: bool) -> None:
    """Print ``data`` as JSON for scripts, or ``human`` for people."""
    if as_json:
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
