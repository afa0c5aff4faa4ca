"""Every ``tds`` command explains each of its arguments in ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from connector.cli.main import build_parser


def _arguments(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _arguments(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_argument_of_every_command_has_help() -> None:
    undocumented = [
        f"{path} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _arguments(build_parser(), "tds")
        if not action.help
    ]
    assert undocumented == []


def test_show_takes_no_reason() -> None:
    # A reason is recorded with a decision; showing a negotiation decides nothing.
    parser = build_parser()
    args = parser.parse_args(["negotiations", "show", "abc", "--config", "c.toml"])
    assert not hasattr(args, "reason")
