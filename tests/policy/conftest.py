"""Policy engines under test: embedded, and OPA (the REST double, or a real OPA)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from connector.policy import EmbeddedEngine, OpaServerEngine, PolicySet, load_library
from connector.policy.engine import PolicyEngine
from tests.policy.cases import PROVIDER_MODULES
from tests.support import opa_double

REAL_OPA = os.environ.get("TDS_OPA_URL")


@pytest.fixture(scope="session")
def opa_url() -> Iterator[str]:
    """``TDS_OPA_URL`` when set (a real OPA), else a fresh OPA REST double process."""
    if REAL_OPA:
        yield REAL_OPA
        return
    with opa_double.running() as url:
        yield url


@pytest.fixture(scope="session")
def policy_set() -> PolicySet:
    """The city library plus the fixture provider modules."""
    policy = load_library()
    for module_id, source in PROVIDER_MODULES.items():
        policy = policy.with_provider_module(module_id, source)
    return policy


@pytest.fixture(scope="session", params=["embedded", "opa"])
def engine(request: pytest.FixtureRequest, policy_set: PolicySet) -> Iterator[PolicyEngine]:
    """Every engine, loaded with the same policy set."""
    if request.param == "embedded":
        yield EmbeddedEngine(policy_set)
        return
    opa = OpaServerEngine(request.getfixturevalue("opa_url"), policy_set, timeout_seconds=5)
    opa.start()
    yield opa
    opa.close()


def fault(url: str, mode: str, delay: float = 0) -> None:
    """Make the OPA double misbehave (skips against a real OPA)."""
    if REAL_OPA:
        pytest.skip("fault injection needs the OPA REST double, not a real OPA")
    opa_double.set_fault(url, mode, delay)
