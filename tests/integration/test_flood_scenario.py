"""The flood early warning scenario of ``tds demo`` (connector.demo.flood), run on a space
of the bureau and the two recipients against the machine's NATS JetStream: each outcome
as expected, the revocation's stop measured under a second, every window receipt paired
by the auditor, the demo's stream removed from the server; and, with no NATS server at
the address, the scenario skipped with the reason and nothing counted as a pass."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from connector.audit.auditor import fetch_and_witness
from connector.audit.verify import reconcile, verify
from connector.demo.flood import BUREAU, RECIPIENTS, FloodWarning, bureau_settings, flood_warning
from connector.demo.run import Outcome, outcome_line, summary
from connector.demo.space import LocalSpace
from connector.demo.steps import Steps
from connector.identity.names import Role
from tests.sources.conftest import NATS_URL, OwnServer, _own_server, _reachable
from tests.support.ports import free_port


@pytest.fixture
def nats_without_jetstream() -> Iterator[OwnServer]:
    """A NATS server of the test's own with JetStream off."""
    port = free_port()
    yield from _own_server(["nats-server", "-a", "127.0.0.1", "-p", str(port)], port, "nats")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("flood")
    parts = [(BUREAU, Role.GOVERNMENT), *((w, Role.GOVERNMENT) for w in RECIPIENTS)]
    with LocalSpace.create(root, [*parts, ("auditor", Role.AUDITOR)]) as sp:
        sp.start_registry()
        sp.start_connector(BUREAU, **bureau_settings(NATS_URL))
        for who in RECIPIENTS:
            sp.start_connector(who)
        sp.enrol("auditor", "")
        yield sp


def run_scenario(space: LocalSpace, nats_url: str) -> tuple[list[Outcome], FloodWarning, str]:
    """The scenario as ``tds demo`` runs it; its outcomes, result and narration."""
    outcomes: list[Outcome] = []
    lines: list[str] = []

    def check(
        scenario: str,
        step: str,
        expected: str,
        observed: str,
        *,
        measured: str = "",
        skipped: str = "",
    ) -> None:
        outcomes.append(Outcome(scenario, step, expected, observed, measured, skipped))
        lines.append(outcome_line(outcomes[-1]))

    steps = Steps(space)
    try:
        result = flood_warning(steps, nats_url, check, lines.append)
    finally:
        steps.close()
    return outcomes, result, "\n".join(lines)


def test_the_flood_scenario_streams_masked_stops_within_a_second_and_reconciles(
    space: LocalSpace, tmp_path: Path
) -> None:
    if why := _reachable(NATS_URL):
        pytest.skip(f"NATS not reachable at {NATS_URL}: {why}")
    outcomes, result, narration = run_scenario(space, NATS_URL)
    assert [o.status for o in outcomes] == ["ok"] * 7, narration
    observed = {o.step: o.observed for o in outcomes}
    assert (
        observed["no keeper's name leaves the bureau; each bureau gets pseudonyms of its own"]
        == "masked: 12 and 12 pseudonyms, 0 shared"
    )
    revoked = next(o for o in outcomes if "mid-stream" in o.step)
    assert revoked.observed == "PERMISSION_DENIED: agreement_revoked, within 1 s"
    took = re.fullmatch(r"stopped (\d+\.\d\d) s after the revocation", revoked.measured)
    assert took is not None and float(took.group(1)) < 1.0, revoked.measured
    assert "Station keeper" not in narration
    # The auditor pairs every window each bureau had countersigned, and the bureau's log
    # holds no window the recipient's lacks (the revoked one's included).
    assert result.skipped == "" and all(result.windows[w] >= 3 for w in RECIPIENTS), result
    exports = tmp_path / "audit"
    cfg = space.write_config("auditor", "", space.registry_address)
    for who in (BUREAU, *RECIPIENTS):
        fetch_and_witness(cfg, who, exports / who)
        assert verify(exports / who).ok
    for who in RECIPIENTS:
        paired = reconcile(exports / BUREAU, exports / who)
        assert paired["ok"], paired
        assert paired["matched"] == paired["windows"] == result.windows[who]
    # The scenario's JetStream stream is gone from the shared server.
    subject = re.search(r"publish on (\S+)", narration)
    assert subject is not None

    async def streams_holding(name: str) -> list[str]:
        nc = await nats.connect(NATS_URL, connect_timeout=3)
        try:
            names = await nc.jetstream().streams_info()
            return [s.config.name or "" for s in names if name in (s.config.subjects or [])]
        finally:
            await nc.close()

    assert asyncio.run(streams_holding(subject.group(1))) == []


def published(space: LocalSpace) -> int:
    steps = Steps(space)
    try:
        return len(steps.log_entries(BUREAU, "catalog.product_published"))
    finally:
        steps.close()


def test_without_nats_the_scenario_is_skipped_saying_why(space: LocalSpace) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    before = published(space)
    outcomes, result, narration = run_scenario(space, nowhere)
    assert [o.status for o in outcomes] == ["skipped"]
    assert not outcomes[0].ok  # a skipped step is not a pass
    assert f"NATS not reachable at {nowhere}" in outcomes[0].skipped
    assert "refused" in outcomes[0].skipped.lower()
    assert "[skip]" in narration and "--nats URL" in narration
    assert result == FloodWarning(skipped=result.skipped) and nowhere in result.skipped
    assert published(space) == before  # nothing was published on the way


def test_a_nats_server_without_jetstream_is_skipped_saying_why(
    space: LocalSpace, nats_without_jetstream: OwnServer
) -> None:
    before = published(space)
    outcomes, result, _ = run_scenario(space, nats_without_jetstream.url)
    assert [o.status for o in outcomes] == ["skipped"]
    assert f"NATS at {nats_without_jetstream.url} cannot hold" in outcomes[0].skipped
    assert "JetStream" in outcomes[0].skipped and result.skipped
    assert published(space) == before


def test_the_summary_counts_skipped_outcomes_apart_and_never_as_expected() -> None:
    ok = Outcome("s", "a", "x", "x")
    failed = Outcome("s", "b", "x", "y")
    skipped = Outcome("s", "c", "x", "", skipped="NATS not reachable at nats://h:1: refused")
    assert summary([ok, ok]) == "2 of 2 outcomes as expected."
    assert summary([ok, skipped, skipped]) == (
        "1 of 1 outcomes as expected; 2 skipped, not checked: NATS not reachable at "
        "nats://h:1: refused"
    )
    assert summary([ok, failed, skipped]).startswith("1 of 2 outcomes as expected; FAILED: b;")
    assert [o.status for o in (ok, failed, skipped)] == ["ok", "failed", "skipped"]
    # A measured figure is shown, never compared.
    measured = Outcome("s", "d", "x", "x", measured="stopped 0.21 s after the revocation")
    assert measured.ok
    assert outcome_line(measured).endswith(": x (stopped 0.21 s after the revocation)")
