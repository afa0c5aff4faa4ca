"""Structure-aware fuzzing of every RPC a connector and the registry serve.

The connector runs on SQLite and on PostgreSQL; the registry (LocalSpace's) on SQLite.

Kept short here (CI); ``bench/fuzz.py --examples N`` runs the same for longer. For every
call, as a member, as the connector's admin and with no token: no INTERNAL (nor UNKNOWN),
no traceback in the answer or in the logs, nothing in the database changed when the call
was refused, health still SERVING; at the end the connector stops within its grace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzzing import Target, bodies_for, fuzz_target, state_of
from tests.support.malformed import tds_rpcs

_RPCS = tds_rpcs()
_BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Target]]:
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("module_postgres_url")
    with fuzz_target(tmp_path_factory.mktemp("fuzz"), url) as targets:
        yield targets
        for t in targets.values():
            started = time.monotonic()
            t.node.stop(grace=2.0)
            assert time.monotonic() - started < 2.0 + 3.0, "stop took longer than its grace"


@st.composite
def _calls(draw: st.DrawFn) -> tuple[str, int, bytes]:
    index = draw(st.integers(0, len(_RPCS) - 1))
    who = draw(st.sampled_from(["member", "admin", "anonymous"]))
    return who, index, draw(bodies_for(_RPCS[index]))


def _served_by(rpc_path: str) -> str:
    return "registry" if rpc_path.startswith("/tds.v1.RegistryService/") else "connector"


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=_calls())
def test_no_rpc_answers_internal_or_changes_state_on_refusal(
    target: dict[str, Target], call: tuple[str, int, bytes]
) -> None:
    who, index, body = call
    rpc = _RPCS[index]
    server = target[_served_by(rpc.path)]
    before = state_of(server.node)
    code, details = server.call(who, rpc, body)
    assert code not in _BAD, f"{rpc.path} as {who}: {code.name} {details!r} for {body[:80]!r}"
    assert "Traceback" not in details and "Exception" not in details, details
    if code != grpc.StatusCode.OK:
        assert state_of(server.node) == before, f"{rpc.path} refused {code.name} changed state"
    assert not server.findings.records, server.findings.records
    assert server.serving()


def test_every_service_is_fuzzed(target: dict[str, Target]) -> None:
    """The fuzzer's list of methods covers every tds service (no silent gaps)."""
    services = {rpc.service for t in target.values() for rpc in t.rpcs}
    expected = {
        "tds.v1.TransferService",
        "tds.v1.NegotiationService",
        "tds.v1.AdminService",
        "tds.v1.CatalogService",
        "tds.v1.AuditService",
        "tds.v1.RegistryService",
    }
    assert expected <= services, expected - services
