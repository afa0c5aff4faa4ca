"""``tds policy test``: the library's Rego unit tests pass, and failures are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.cli.main import main
from connector.policy.rego_tests import run_rego_tests

POLICY = """package demo

import rego.v1

default allow := false

allow if input.n > 2

decision := {"allow": allow, "n": input.n}
"""

TESTS = """package demo_test

import data.demo
import rego.v1

base := {"n": 3}

test_allow_big if {
	doc := object.union(base, {})
	result := demo.decision with input as doc
	result.allow
}

test_deny_small_fails_on_purpose if {
	doc := {"n": 1}
	result := demo.decision with input as doc
	result.allow
}

test_plain if count([1, 2]) == 2

test_unsupported if {
	demo.allow with input as {"n": 5}
}
"""


def test_library_rego_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == 0 and report["passed"] >= 30


def test_failures_and_unsupported_forms_are_reported(tmp_path: Path) -> None:
    (tmp_path / "demo.rego").write_text(POLICY)
    (tmp_path / "demo_test.rego").write_text(TESTS)
    results = {r.name: r for r in run_rego_tests(tmp_path)}
    assert results["test_allow_big"].passed
    assert results["test_plain"].passed
    assert not results["test_deny_small_fails_on_purpose"].passed
    assert not results["test_unsupported"].passed
    assert "only supported" in results["test_unsupported"].detail
    assert main(["policy", "test", str(tmp_path)]) == 1
