"""No decision means no data: every engine failure is a deny with a reason."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector.audit.log import TransparencyLog
from connector.clock import SystemClock
from connector.errors import InvalidRequest, Unavailable
from connector.policy import EmbeddedEngine, OpaServerEngine, PolicySet
from connector.policy.decision import (
    ENGINE_ERROR,
    ENGINE_TIMEOUT,
    ENGINE_UNAVAILABLE,
    INVALID_INPUT,
    MALFORMED_DECISION,
    UNDEFINED,
    parse_decision,
)
from connector.policy.library import validate_provider_module
from connector.policy.point import PolicyPoint
from connector.store.database import open_database
from tests.policy.cases import CASES, offer, start
from tests.policy.conftest import fault

GOOD = CASES[0]  # an allowed catalog read

CRASH = """package tds.provider.fixture_crash

import rego.v1

deny contains "never" if 1 / input.context.transfers_used > 1
"""


@pytest.fixture
def opa(opa_url: str, policy_set: PolicySet) -> Iterator[OpaServerEngine]:
    engine = OpaServerEngine(opa_url, policy_set, timeout_seconds=0.5)
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def no_fault(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "opa_url" in request.fixturenames or "opa" in request.fixturenames:
        with contextlib.suppress(pytest.skip.Exception):
            fault(request.getfixturevalue("opa_url"), "none")


def still_serves(engine: object) -> None:
    decision = engine.decide(GOOD.input)  # type: ignore[attr-defined]
    assert decision.allow, decision.detail


def test_opa_down_is_a_deny(policy_set: PolicySet) -> None:
    engine = OpaServerEngine("http://127.0.0.1:9", policy_set, timeout_seconds=0.5)
    with pytest.raises(Unavailable, match="not healthy"):
        engine.start()
    decision = engine.decide(GOOD.input)
    assert not decision.allow and decision.deny == (ENGINE_UNAVAILABLE,)


def test_opa_slow_past_the_timeout_is_a_deny(opa: OpaServerEngine, opa_url: str) -> None:
    fault(opa_url, "slow", delay=2)
    decision = opa.decide(GOOD.input)
    assert not decision.allow and decision.deny == (ENGINE_TIMEOUT,)
    fault(opa_url, "none")
    still_serves(opa)


def test_opa_answering_500_is_a_deny(opa: OpaServerEngine, opa_url: str) -> None:
    fault(opa_url, "error500")
    decision = opa.decide(GOOD.input)
    assert not decision.allow and decision.deny == (ENGINE_ERROR,)
    assert "500" in decision.detail
    fault(opa_url, "none")
    still_serves(opa)


def test_opa_answering_200_without_result_is_a_deny(opa: OpaServerEngine, opa_url: str) -> None:
    fault(opa_url, "no_result")
    decision = opa.decide(GOOD.input)
    assert not decision.allow and decision.deny == (UNDEFINED,)


def test_malformed_decision_is_a_deny(opa: OpaServerEngine, opa_url: str) -> None:
    fault(opa_url, "garbage")
    decision = opa.decide(GOOD.input)
    assert not decision.allow and decision.deny == (MALFORMED_DECISION,)


@pytest.mark.parametrize(("visible", "allow"), [("yes", False), (1, False), (False, True)], ids=str)
def test_a_decision_with_a_bad_visible_is_a_deny(visible: object, allow: bool) -> None:
    """``visible`` must be a boolean, and a resource the subject may not see is never
    allowed: either way the document is malformed, and malformed is a deny."""
    raw = {
        "allow": allow, "deny": [] if allow else ["x"], "needs_approval": False,
        "obligations": {}, "permitted_fields": None, "masks": {}, "visible": visible,
    }  # fmt: skip
    decision = parse_decision(raw, revision="r", input_sha256="0" * 64, engine="test")
    assert not decision.allow and decision.deny == (MALFORMED_DECISION,)
    assert decision.visible is None


def test_unhealthy_opa_refuses_to_start(opa_url: str, policy_set: PolicySet) -> None:
    fault(opa_url, "unhealthy")
    with pytest.raises(Unavailable):
        OpaServerEngine(opa_url, policy_set, timeout_seconds=0.5).start()


@pytest.mark.parametrize("kind", ["embedded", "opa"])
def test_policy_runtime_error_is_a_deny(
    kind: str, policy_set: PolicySet, request: pytest.FixtureRequest
) -> None:
    crashing = policy_set.with_provider_module("fixture_crash", CRASH)
    if kind == "embedded":
        engine: EmbeddedEngine | OpaServerEngine = EmbeddedEngine(crashing)
    else:
        engine = OpaServerEngine(request.getfixturevalue("opa_url"), crashing, timeout_seconds=2)
        engine.start()
    document = start(off=offer(policy_module="fixture_crash"))  # transfers_used = 0: 1/0
    decision = engine.decide(document)
    assert not decision.allow
    # rego-cpp and the double report a builtin error; a real OPA without strict builtin
    # errors leaves the rule undefined: both deny.
    assert decision.deny[0] in (ENGINE_ERROR, UNDEFINED, "provider_policy_missing")
    still_serves(engine)
    engine.close()


def test_unsupported_builtin_is_refused_at_upload(policy_set: PolicySet) -> None:
    source = (
        "package tds.provider.fetcher\n\nimport rego.v1\n\n"
        'deny contains "x" if http.send({"method": "get", "url": "http://x"}).status_code != 200\n'
    )
    with pytest.raises(InvalidRequest, match=r"http\.send"):
        validate_provider_module("fetcher", source, policy_set)


def test_unsupported_builtin_in_an_unvalidated_set_still_denies(policy_set: PolicySet) -> None:
    rogue = dict(policy_set.modules)
    rogue["provider/rogue.rego"] = (
        "package tds.provider.rogue\n\nimport rego.v1\n\n"
        'deny contains "blocked" if not http.send({"method": "get", "url": "http://x"})\n'
    )
    engine = EmbeddedEngine(PolicySet(rogue))
    decision = engine.decide(start(off=offer(policy_module="rogue")))
    assert not decision.allow


@pytest.mark.parametrize(
    "module_id, source, message",
    [
        ("broken", 'package tds.provider.broken\n\ndeny contains "x" if {\n', "does not compile"),
        (
            "sneaky",
            'package tds.usage\n\nimport rego.v1\n\ndeny contains "x" if false\n',
            "cannot add to or override",
        ),
        (
            "lifter",
            "package tds.provider.lifter\n\nimport rego.v1\n\nallow := true\n",
            "define 'deny contains",
        ),
        ("Bad-Id", "package tds.provider.bad\n", "lower-case"),
        ("two", "package tds.provider.two\npackage tds.provider.three\n", "exactly one package"),
    ],
)
def test_bad_provider_modules_are_refused(
    policy_set: PolicySet, module_id: str, source: str, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate_provider_module(module_id, source, policy_set)


def test_unserialisable_input_is_a_deny(policy_set: PolicySet) -> None:
    decision = EmbeddedEngine(policy_set).decide({**GOOD.input, "context": {"now_ns": object()}})
    assert decision.deny == (INVALID_INPUT,)


def test_input_the_embedded_engine_cannot_hold_is_a_deny(policy_set: PolicySet) -> None:
    engine = EmbeddedEngine(policy_set)
    decision = engine.decide({**GOOD.input, "offer": {**GOOD.input["offer"], "id": 2**70}})
    assert decision.deny == (INVALID_INPUT,)
    assert "an integer outside 64 bits" in decision.detail
    still_serves(engine)


def test_embedded_engine_keeps_inputs_apart_across_threads(policy_set: PolicySet) -> None:
    engine = EmbeddedEngine(policy_set)
    errors: list[str] = []

    def worker(offset: int) -> None:
        for case in CASES[offset::2] * 3:
            d = engine.decide(case.input)
            if d.allow != case.allow or set(d.deny) != set(case.deny):
                errors.append(case.name)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.fixture
def log(tmp_path: Path) -> Iterator[TransparencyLog]:
    """A decision point's log, on its own SQLite database."""
    db = open_database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        yield TransparencyLog(
            db,
            origin="tds/city/gov",
            actor="city-gov",
            signing_key=ed25519.Ed25519PrivateKey.generate(),
            clock=SystemClock(),
        )
    finally:
        db.close()


def test_decisions_are_logged_with_provenance(policy_set: PolicySet, log: TransparencyLog) -> None:
    point = PolicyPoint(EmbeddedEngine(policy_set), log)
    decision = point.decide(CASES[2].input)  # core data: denied
    body = log.entries(0, 1)[0][1].decode()
    for value in (decision.id, decision.input_sha256, decision.revision, "core_data"):
        assert value in body
    log.close()
    with pytest.raises(Unavailable):
        point.decide(CASES[0].input)  # no log, no decision


def test_an_engine_that_does_not_answer_is_logged_then_unavailable(
    policy_set: PolicySet, log: TransparencyLog
) -> None:
    engine = OpaServerEngine("http://127.0.0.1:9", policy_set, timeout_seconds=0.5)
    point = PolicyPoint(engine, log)
    with pytest.raises(Unavailable, match=r"engine_unavailable.*try again"):
        point.decide(GOOD.input)
    # The deny is evidence all the same; deferred, it is left to the caller to log.
    assert ENGINE_UNAVAILABLE in log.entries(0, 1)[0][1].decode()
    deferred: list[Any] = []
    with pytest.raises(Unavailable):
        point.decide(GOOD.input, defer=deferred)
    assert [kind for kind, _, _ in deferred] == ["policy.decision"] and log.size == 1
    log.close()


def test_invalid_input_names_the_fields_and_is_never_evaluated(policy_set: PolicySet) -> None:
    class Counting(EmbeddedEngine):
        evaluated = 0

        def _evaluate(self, document: dict[str, Any]) -> Any:
            Counting.evaluated += 1
            return super()._evaluate(document)

    engine = Counting(policy_set)
    broken = start()
    del broken["contract"]["max_transfers"]
    broken["context"]["now_ns"] = True  # a boolean is not a time
    broken["subject"] = "ent-a"  # a section that is not an object
    decision = engine.decide(broken)
    assert (decision.allow, decision.deny) == (False, (INVALID_INPUT,))
    for field in ("contract.max_transfers", "context.now_ns", "subject.id", "subject.role"):
        assert field in decision.detail
    assert Counting.evaluated == 0
    assert engine.decide(start()).allow and Counting.evaluated == 1


def test_a_decision_larger_than_the_output_buffer_is_read_whole(
    policy_set: PolicySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.policy import _rego_c

    expected = EmbeddedEngine(policy_set).decide(start())
    monkeypatch.setattr(_rego_c, "_BUFFER_BYTES", 16)
    monkeypatch.setattr(_rego_c, "_buffers", threading.local())
    decision = EmbeddedEngine(policy_set).decide(start())
    assert decision.allow and decision.obligations == expected.obligations
