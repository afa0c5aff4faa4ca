"""Running the Rego unit tests (``test_*`` rules in ``*_test.rego``) with the embedded engine.

rego-cpp (regopy 1.5) aborts the whole process when it compiles ``X with input as Y`` for
a rule whose value is computed. So that tests keep the standard OPA form — and still run
with ``opa test`` — this runner rewrites each test of the shape

    test_name if {
        doc := <expression>            # and any locals it needs
        result := <rule> with input as doc
        <assertions on result>
    }

into a rule computing ``doc`` and a rule asserting on ``<rule>``, then evaluates the first,
sets the result as the input, and evaluates the second. A test that uses ``with`` in any
other form is reported as failed (unsupported), never evaluated.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import regopy

from connector.errors import ConfigError
from connector.policy._rego_c import UnrepresentableInput, to_input
from connector.policy.library import package_of, test_rules

__all__ = ["RegoTestResult", "run_rego_tests"]

_RULE_BLOCK = re.compile(r"^(test_\w+) if \{\n(.*?)\n\}", re.MULTILINE | re.DOTALL)
_WITH_LINE = re.compile(r"^\s*(\w+) := (.+?) with input as (\w+)\s*$")
_TRUE = '{"expressions":[true]}'


@dataclass(frozen=True)
class RegoTestResult:
    """One ``test_*`` rule's outcome."""

    package: str
    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class _Plan:
    name: str
    input_rule: str | None
    test_rule: str
    unsupported: str = ""


def _rewrite(source: str) -> tuple[str, list[_Plan]]:
    """The module with every ``with`` test split in two, and how to run each test."""
    plans: dict[str, _Plan] = {}

    def split(match: re.Match[str]) -> str:
        name, body = match.group(1), match.group(2)
        if " with " not in body:
            plans[name] = _Plan(name, None, name)
            return match.group(0)
        lines = body.split("\n")
        with_lines = [i for i, ln in enumerate(lines) if " with " in ln]
        found = _WITH_LINE.match(lines[with_lines[0]]) if len(with_lines) == 1 else None
        if found is None:
            plans[name] = _Plan(
                name,
                None,
                name,
                unsupported="'with' is only supported as 'result := <rule> with input as <local>'",
            )
            return f"{name} if false"
        i = with_lines[0]
        result, target, local = found.groups()
        before, after = lines[:i], lines[i + 1 :]
        input_rule, test_rule = f"__tds_input_{name}", f"__tds_test_{name}"
        plans[name] = _Plan(name, input_rule, test_rule)
        input_body = "\n".join(before) if before else "\ttrue"
        test_body = "\n".join([f"\t{result} := {target}", *after])
        return (
            f"{input_rule} := {local} if {{\n{input_body}\n}}\n\n"
            f"{test_rule} if {{\n{test_body}\n}}\n\n{name} if false"
        )

    rewritten = _RULE_BLOCK.sub(split, source)
    for name in test_rules(source):
        plans.setdefault(name, _Plan(name, None, name))
    return rewritten, [plans[n] for n in sorted(plans)]


def run_rego_tests(directory: Path) -> list[RegoTestResult]:
    """Load every ``*.rego`` under ``directory`` and evaluate each ``test_*`` rule."""
    files = sorted(directory.rglob("*.rego"))
    if not files:
        raise ConfigError(f"no .rego files under {directory}")
    rego = regopy.Interpreter()
    rego.strict_built_in_errors = True
    suites: list[tuple[str, list[_Plan]]] = []
    for path in files:
        source = path.read_text()
        if path.name.endswith("_test.rego"):
            source, plans = _rewrite(source)
            suites.append((package_of(source, path.name), plans))
        try:
            rego.add_module(str(path.relative_to(directory)), source)
        except regopy.RegoError as exc:
            raise ConfigError(f"{path} does not parse: {str(exc).splitlines()[0]}") from None
    results = []
    for package, plans in suites:
        for plan in plans:
            start = time.perf_counter()
            passed, detail = _run(rego, package, plan)
            results.append(
                RegoTestResult(package, plan.name, passed, detail, time.perf_counter() - start)
            )
    return results


def _run(rego: regopy.Interpreter, package: str, plan: _Plan) -> tuple[bool, str]:
    if plan.unsupported:
        return False, plan.unsupported
    try:
        rego.set_input({})
        if plan.input_rule is not None:
            made = rego.query(f"data.{package}.{plan.input_rule}")
            if not made.ok() or not made.results or not made.results[0].expressions:
                return False, "the test's input is undefined"
            rego.set_input(to_input(made.results[0].expressions[0]))
        output = rego.query(f"data.{package}.{plan.test_rule}")
    except (regopy.RegoError, UnrepresentableInput) as exc:
        return False, str(exc)[:300]
    if not output.ok():
        return False, "evaluation error"
    text = (
        json.dumps({"expressions": output.results[0].expressions}, separators=(",", ":"))
        if output.results
        else "undefined"
    )
    return text == _TRUE, "" if text == _TRUE else text[:300]
