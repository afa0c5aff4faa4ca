"""The operator's opt-in settings of the library (policies/tds/settings.rego)."""

from __future__ import annotations

import shutil
from pathlib import Path

from connector.policy import EmbeddedEngine, load_library
from connector.policy.library import default_policy_dir
from tests.policy.cases import compute_contract, resource, run, start


def test_important_data_may_require_compute_when_the_operator_opts_in(tmp_path: Path) -> None:
    important = resource(grade="important", fields=["time", "road"])
    copy_terms = compute_contract(delivery=["copy", "compute"], permitted_fields=["time"])
    # Off by default: a copy of important data in its permitted fields is allowed.
    default = EmbeddedEngine(load_library())
    assert default.decide(start(res=important, con=copy_terms)).allow

    policies = tmp_path / "policies"
    shutil.copytree(default_policy_dir() / "tds", policies / "tds")
    settings = policies / "tds" / "settings.rego"
    settings.write_text(
        settings.read_text().replace(
            "important_requires_compute := false", "important_requires_compute := true"
        )
    )
    strict = EmbeddedEngine(load_library(policies))
    copy = strict.decide(start(res=important, con=copy_terms))
    assert not copy.allow and "important_data_requires_compute" in copy.deny
    # Answers still leave, and general data is copied as before.
    assert strict.decide(run(res=important, con=copy_terms)).allow
    assert strict.decide(start(con=copy_terms)).allow
