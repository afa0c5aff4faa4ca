"""``tds policy``: run the Rego tests, evaluate a decision, check a provider module."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from connector.cli.output import JSON_HELP, emit
from connector.errors import ConfigError, InvalidRequest
from connector.policy.library import (
    default_policy_dir,
    load_library,
    package_of,
    validate_provider_module,
)
from connector.policy.rego_tests import run_rego_tests

if TYPE_CHECKING:
    from connector.policy.engine import PolicyEngine


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds policy``."""
    pol = sub.add_parser("policy", help="Rego policies: test, evaluate, check")
    ps = pol.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    test = ps.add_parser("test", help="run the test_* rules of *_test.rego files")
    test.add_argument("dir", nargs="?", type=Path, help="policy directory (default: the library)")
    test.add_argument("--json", action="store_true", help=JSON_HELP)
    test.set_defaults(func=run_test)

    ev = ps.add_parser(
        "eval",
        help="print the decision for an input document",
        description="Evaluate data.tds.main.decision for the input document in "
        "FILE (see policies/schema/input.schema.json).",
    )
    ev.add_argument("--input", required=True, type=Path, help="input document (JSON)")
    ev.add_argument("--policy-dir", type=Path, help="policy directory (default: the library)")
    ev.add_argument(
        "--provider-module",
        type=Path,
        action="append",
        default=[],
        help="a provider module to include (repeatable)",
    )
    ev.add_argument("--opa-url", help="evaluate on this OPA server instead of in-process")
    ev.add_argument("--json", action="store_true", help=JSON_HELP)
    ev.set_defaults(func=run_eval)

    check = ps.add_parser("check", help="validate a provider's Rego module for an offer")
    check.add_argument("file", type=Path, help="the provider's Rego module (.rego)")
    check.add_argument("--policy-dir", type=Path, help="policy directory (default: the library)")
    check.add_argument("--json", action="store_true", help=JSON_HELP)
    check.set_defaults(func=run_check)


def run_test(args: argparse.Namespace) -> int:
    """Run Rego tests; exit 1 if any fails."""
    directory = args.dir or default_policy_dir()
    results = run_rego_tests(directory)
    failed = [r for r in results if not r.passed]
    lines = [
        f"{'PASS' if r.passed else 'FAIL'}  {r.package}.{r.name}"
        + (f"  ({r.detail})" if r.detail else "")
        for r in results
    ]
    lines.append(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    emit(
        {
            "passed": len(results) - len(failed),
            "failed": len(failed),
            "tests": [
                {"package": r.package, "name": r.name, "passed": r.passed, "detail": r.detail}
                for r in results
            ],
        },
        "\n".join(lines),
        as_json=args.json,
    )
    return 1 if failed else 0


def _module_id(path: Path, source: str) -> str:
    package = package_of(source, path.name)
    prefix = "tds.provider."
    if not package.startswith(prefix):
        raise InvalidRequest(f"{path}: a provider module declares 'package tds.provider.<id>'")
    return package.removeprefix(prefix)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc}") from None


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate one input document."""
    try:
        document = json.loads(_read(args.input, "input"))
    except ValueError as exc:
        raise InvalidRequest(f"{args.input} is not JSON: {exc}") from None
    policy = load_library(args.policy_dir)
    for path in args.provider_module:
        source = _read(path, "provider module")
        policy = policy.with_provider_module(_module_id(path, source), source)
    engine: PolicyEngine
    if args.opa_url:
        from connector.policy.opa import OpaServerEngine  # the OPA client: only for --opa-url

        engine = OpaServerEngine(args.opa_url, policy)
        engine.start()
    else:
        from connector.policy.embedded import EmbeddedEngine

        engine = EmbeddedEngine(policy)
    decision = engine.decide(document)
    engine.close()
    verdict = "ALLOW" if decision.allow else "DENY: " + ", ".join(decision.deny)
    extras = []
    if decision.needs_approval:
        extras.append("needs the provider's approval")
    if decision.permitted_fields is not None:
        extras.append(f"fields {', '.join(decision.permitted_fields)}")
    if decision.obligations:
        extras.append(f"obligations {json.dumps(decision.obligations, sort_keys=True)}")
    emit(
        decision.as_json(),
        f"{verdict}"
        + (f" ({'; '.join(extras)})" if extras else "")
        + f"\n  decision {decision.id}, policy revision {decision.revision[:16]}",
        as_json=args.json,
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Validate a provider module against the library."""
    source = _read(args.file, "provider module")
    module_id = _module_id(args.file, source)
    validate_provider_module(module_id, source, load_library(args.policy_dir))
    emit(
        {"module": module_id, "valid": True},
        f"{args.file}: valid provider module {module_id!r} (it can only add denials)",
        as_json=args.json,
    )
    return 0
