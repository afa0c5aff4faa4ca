"""``tds COMMAND`` builds a parser of the module adding COMMAND alone: the table it goes
by must say exactly which commands each module adds, and the commands must behave the
same whichever parser reads them."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from connector.cli.main import COMMANDS, build_parser
from tests.unit.test_cli_imports import loaded_after


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_each_module_adds_the_commands_the_table_names(module: str) -> None:
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"connector.cli.{module}").add_parser(sub)
    assert sorted(sub.choices) == sorted(COMMANDS[module])


def test_no_command_is_in_two_modules_and_the_full_parser_has_them_all() -> None:
    named = [c for commands in COMMANDS.values() for c in commands]
    assert len(named) == len(set(named))
    full = build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(named)


@pytest.mark.parametrize(
    "argv",
    [
        ["catalog", "list", "--provider", "gov", "--config", "a.toml", "--json", "--limit", "5"],
        ["--debug", "catalog", "search", "traffic", "--config", "a.toml"],
        ["product", "list", "--config", "a.toml"],
        ["audit", "verify", "export.jsonl"],
    ],
)
def test_a_commands_own_parser_reads_its_arguments_as_the_full_one(argv: list[str]) -> None:
    command = next(a for a in argv if a != "--debug")
    own, full = build_parser(command).parse_args(argv), build_parser().parse_args(argv)
    assert vars(own) == vars(full)


def test_a_commands_parser_refuses_what_the_full_one_refuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["catalog", "list", "--provider", "gov", "--config", "a.toml", "--limit", "x"]
    errors = []
    for parser in (build_parser("catalog"), build_parser()):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        errors.append((exc.value.code, capsys.readouterr().err))
    assert errors[0] == errors[1]
    assert errors[0][0] == 2 and "--limit" in errors[0][1]


def test_tds_catalog_imports_none_of_the_other_command_modules() -> None:
    probe = (
        "import json, sys\n"
        "from connector.cli.main import main\n"
        "try:\n"
        "    main(['catalog', 'list', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('connector.cli.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(out.stdout.splitlines()[-1])
    assert "connector.cli.product" in loaded
    assert not {f"connector.cli.{m}" for m in COMMANDS if m != "product"} & set(loaded)


def test_a_command_talking_to_its_own_connector_leaves_the_registry_client_unloaded() -> None:
    """``tds catalog list`` and the other client commands reach their connector through
    ``connector.node.clients``; the registry client (and the PyJWT its directory needs,
    about 0.1 s of the command's start) loads only for a command that asks the registry."""
    code = "import connector.cli.product, connector.config, connector.node.clients"
    assert loaded_after(code, ["jwt", "connector.registry.client"]) == []
