"""``tds demo``: a city data space on loopback, narrated, with every outcome checked.

Scenarios: trust (onboarding, membership tokens, mutual TLS, forged and misbound tokens
refused), public traffic data under authorised operation (grant scope and purpose,
approval, masking, the disclosure report), personal health data under consent (refusal
without it, withdrawal stopping transfers and deleting the recipient's copy), an
enterprise sale (validity window, transfer limit, revocation), hospital admissions used but
not seen (compute-to-data under k and ε: a question by patient, a small group, differencing
and a spent budget refused), core data refused, flood early warning (live rain-gauge
readings over NATS JetStream to two bureaus, one agreement revoked mid-stream; skipped,
saying why, where no NATS server answers), and the auditor (every log cosigned, fetched,
verified and reconciled pair by pair, window receipts too; tampering caught), ending with
the operator revoking a membership.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import (
    peer_pb2,
    peer_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from connector.audit.auditor import fetch_and_witness
from connector.audit.verify import reconcile, verify
from connector.demo import DEFAULT_NATS_URL
from connector.demo.flood import BUREAU, RECIPIENTS, FloodWarning, bureau_settings, flood_warning
from connector.demo.scenarios import (
    core_data,
    enterprise_exchange,
    health_commission,
    personal_health,
    public_traffic,
    write_data,
)
from connector.demo.space import LocalSpace, rpc_code
from connector.demo.steps import Check, Steps
from connector.errors import ConnectorError
from connector.identity.certs import (
    certificate_thumbprint,
    load_certificate,
)
from connector.identity.names import Role
from connector.node import Node
from connector.rpc.channel import TlsIdentity, open_channel

__all__ = [
    "DEFAULT_NATS_URL",
    "DEMO_PARTICIPANTS",
    "Outcome",
    "outcome_line",
    "run_demo",
    "summary",
]


DEMO_PARTICIPANTS: list[tuple[str, Role]] = [
    ("city-gov", Role.GOVERNMENT),
    ("ent-a", Role.ENTERPRISE),
    ("ent-b", Role.ENTERPRISE),
    ("alice", Role.INDIVIDUAL),
    ("hospital", Role.ENTERPRISE),
    ("health-commission", Role.GOVERNMENT),
    ("institute", Role.ENTERPRISE),
    (BUREAU, Role.GOVERNMENT),
    *((who, Role.GOVERNMENT) for who in RECIPIENTS),
    ("auditor", Role.AUDITOR),
]
CONNECTORS = [pid for pid, role in DEMO_PARTICIPANTS if role != Role.AUDITOR]
PAIRS = {
    ("city-gov", "ent-a"): 1,
    ("alice", "hospital"): 1,
    ("ent-a", "ent-b"): 3,
    ("health-commission", "institute"): 4,
}
"""Provider/consumer pairs the scenarios connect, with the receipts each must share."""


@dataclass(frozen=True)
class Outcome:
    """One checked step of the demo."""

    scenario: str
    step: str
    expected: str
    observed: str
    measured: str = ""
    """A figure taken on the way, shown beside the outcome (not compared)."""
    skipped: str = ""
    """Why the step could not run here: then it is neither as expected nor failed."""

    @property
    def status(self) -> str:
        """``ok`` (what happened is what was expected), ``failed`` or ``skipped``."""
        if self.skipped:
            return "skipped"
        return "ok" if self.expected == self.observed else "failed"

    @property
    def ok(self) -> bool:
        """Whether what happened is what was expected (a skipped step is not)."""
        return self.status == "ok"


def _tls(space: LocalSpace, participant: str) -> TlsIdentity:
    me = space.manifest.participant(participant)
    return TlsIdentity.load(
        space.pki_dir / space.manifest.ca_cert,
        space.pki_dir / me.tls_cert,
        space.pki_dir / me.tls_key,
    )


def _ping(space: LocalSpace, caller: str, callee: str, token: Callable[[], str] | None) -> str:
    """Ping ``callee`` as ``caller`` with the given token source; return OK or the status."""
    node: Node = space.nodes[callee]
    channel = open_channel(
        f"127.0.0.1:{node.port}", _tls(space, caller), space=space.space, peer=callee, token=token
    )
    try:
        resp = peer_pb2_grpc.PeerServiceStub(channel).Ping(peer_pb2.PingRequest(), timeout=10)
        return f"OK as {resp.caller_id}"
    except grpc.RpcError as err:
        return rpc_code(err)
    finally:
        channel.close()


def _own_token(space: LocalSpace, participant: str) -> Callable[[], str]:
    registry = space.nodes[participant].registry
    assert registry is not None
    return registry.token


def run_demo(
    root: Path,
    narrate: Callable[[str], None],
    *,
    keep: Callable[[LocalSpace], None] | None = None,
    nats_url: str = DEFAULT_NATS_URL,
) -> list[Outcome]:
    """Run the demo under ``root`` (the flood early warning scenario on the NATS server at
    ``nats_url``); return every outcome (the caller decides the exit code)."""
    outcomes: list[Outcome] = []

    def check(
        scenario: str,
        step: str,
        expected: str,
        observed: str,
        *,
        measured: str = "",
        skipped: str = "",
    ) -> None:
        outcome = Outcome(scenario, step, expected, observed, measured, skipped)
        outcomes.append(outcome)
        narrate(outcome_line(outcome))

    started = time.monotonic()
    narrate(f"Creating a development PKI for space 'city' in {root / 'pki'}")
    space = LocalSpace.create(root, DEMO_PARTICIPANTS)
    try:
        registry = space.start_registry()
        narrate(f"Operator registry listening on 127.0.0.1:{registry.port}")
        settings = {BUREAU: bureau_settings(nats_url)}
        for pid in CONNECTORS:
            node = space.start_connector(pid, **settings.get(pid, {}))
            narrate(
                f"  {pid:<17} ({node.cfg.participant.role}) enrolled, token obtained, "
                f"listening on 127.0.0.1:{node.port}"
            )
        space.enrol("auditor", "")
        narrate("  auditor           enrolled (CLI only, no connector)")

        s = "trust"
        narrate("\nMembers call each other over mutual TLS with membership tokens")
        check(
            s,
            "ent-a pings city-gov",
            "OK as ent-a",
            _ping(space, "ent-a", "city-gov", _own_token(space, "ent-a")),
        )
        check(
            s,
            "city-gov pings alice",
            "OK as city-gov",
            _ping(space, "city-gov", "alice", _own_token(space, "city-gov")),
        )

        narrate("\nEvery forged or misused credential is refused")
        check(
            s,
            "call without a membership token",
            "UNAUTHENTICATED",
            _ping(space, "ent-a", "city-gov", None),
        )
        forger = ed25519.Ed25519PrivateKey.generate()
        cert = load_certificate(space.pki_dir / space.manifest.participant("ent-a").tls_cert)
        forged = jwt.encode(
            {
                "iss": space.nodes["ent-a"].issuer,
                "sub": "ent-a",
                "aud": space.space,
                "iat": int(time.time()),
                "exp": int(time.time()) + 300,
                "jti": uuid.uuid4().hex,
                "role": "government",
                "attrs": {},
                "cnf": {"x5t#S256": certificate_thumbprint(cert)},
            },
            forger,
            algorithm="EdDSA",
            headers={"typ": "tds-membership+jwt"},
        )
        check(
            s,
            "token signed by someone other than the operator",
            "UNAUTHENTICATED",
            _ping(space, "ent-a", "city-gov", lambda: forged),
        )
        check(
            s,
            "ent-b presents ent-a's token (bound to another certificate)",
            "UNAUTHENTICATED",
            _ping(space, "ent-b", "city-gov", _own_token(space, "ent-a")),
        )
        channel = open_channel(
            space.registry_address,
            _tls(space, "ent-a"),
            space=space.space,
            peer=space.manifest.operator_id,
            token=_own_token(space, "ent-a"),
        )
        try:
            registry_pb2_grpc.RegistryServiceStub(channel).Revoke(
                registry_pb2.RevokeRequest(participant_id="ent-b", reason="hostile"), timeout=10
            )
            observed = "OK"
        except grpc.RpcError as err:
            observed = rpc_code(err)
        finally:
            channel.close()
        check(s, "ent-a (not an admin) tries to revoke ent-b", "PERMISSION_DENIED", observed)

        data = root / "data"
        write_data(data)
        steps = Steps(space)
        try:
            public_traffic(steps, data, check, narrate)
            personal_health(steps, data, check, narrate)
            enterprise_exchange(steps, data, check, narrate)
            health_commission(steps, data, check, narrate)
            core_data(steps, data, check, narrate)
            flood = flood_warning(steps, nats_url, check, narrate)
        finally:
            steps.close()
        _audit(space, root, check, narrate, flood)
        _membership_revocation(space, check, narrate)
        narrate(f"\nAll state, keys and configs are in {root} ({time.monotonic() - started:.1f} s)")
        if keep is not None:
            keep(space)
    finally:
        space.stop()
    return outcomes


def outcome_line(o: Outcome) -> str:
    """How an outcome is narrated."""
    if o.status == "skipped":
        return f"  [skip] {o.step}: skipped: {o.skipped}"
    line = f"  [{'ok ' if o.ok else 'FAILED'}] {o.step}: {o.observed}"
    if o.measured:
        line += f" ({o.measured})"
    return line + ("" if o.ok else f" (expected {o.expected})")


def _audit(
    space: LocalSpace,
    root: Path,
    check: Check,
    narrate: Callable[[str], None],
    flood: FloodWarning,
) -> None:
    """The auditor witnesses and exports every log, verifies each, reconciles every pair's
    receipts (the flood scenario's window receipts too), and catches a forgery."""
    s = "audit"
    narrate("\nThe auditor cosigns, fetches and verifies every connector's log")
    cfg = space.write_config("auditor", "", space.registry_address)
    exports = root / "audit"
    for pid in [space.manifest.operator_id, *CONNECTORS]:
        try:
            manifest = fetch_and_witness(cfg, pid, exports / pid)
            report = verify(exports / pid)
            size = manifest["size"]
            cosigned = report.ok and report.cosignatures.get("auditor")
            observed = "OK" if cosigned else "; ".join(p.what for p in report.problems)
        except ConnectorError as exc:
            size, observed = "?", str(exc)
        check(
            s,
            f"{pid}'s log ({size} entries) verifies, cosigned by the auditor",
            "OK",
            observed or "not cosigned",
        )
    narrate("\nThe auditor reconciles every provider/consumer pair, receipt by receipt")
    for (provider, consumer), receipts in PAIRS.items():
        expected = f"{receipts} receipts match"
        check(
            s,
            f"{provider} and {consumer} hold the same receipts",
            expected,
            _reconciled(exports, provider, consumer),
        )
    for consumer in RECIPIENTS:
        step = f"{BUREAU} and {consumer} hold the same window receipts"
        if flood.skipped:
            check(s, step, "", "", skipped=f"no stream ran: {flood.skipped}")
            continue
        windows = flood.windows.get(consumer, 0)
        expected = f"{windows} receipts match ({windows} of them stream windows)"
        check(s, step, expected, _reconciled(exports, BUREAU, consumer))
    forged = exports / "operator-altered"
    shutil.copytree(exports / space.manifest.operator_id, forged, dirs_exist_ok=True)
    lines = (forged / "entries.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"role":"enterprise"', b'"role":"government"')
    (forged / "entries.jsonl").write_bytes(b"".join(lines))
    report = verify(forged)
    check(
        s,
        "one altered entry in a copy of the operator's export",
        "detected at index 2",
        f"detected at index {report.first_bad_index}" if not report.ok else "not detected",
    )


def _reconciled(exports: Path, provider: str, consumer: str) -> str:
    """What ``tds audit reconcile`` says of two exports, in short."""
    try:
        result = reconcile(exports / provider, exports / consumer)
    except ConnectorError as exc:
        return str(exc)
    if not result["ok"]:
        return f"mismatch: {result['only_in_a']} {result['only_in_b']} {result['differ']}"
    windows = result["windows"]
    return f"{result['matched']} receipts match" + (
        f" ({windows} of them stream windows)" if windows else ""
    )


def _membership_revocation(space: LocalSpace, check: Check, narrate: Callable[[str], None]) -> None:
    """The operator ends a membership; every connector refuses the member after refresh."""
    s = "trust"
    narrate("\nThe operator revokes ent-b; every connector refuses it after refresh")
    space.revoke("ent-b", "demo: membership ended")
    space.refresh()
    stale_token = _own_token(space, "ent-b")
    check(
        s,
        "revoked ent-b pings city-gov",
        "UNAUTHENTICATED",
        _ping(space, "ent-b", "city-gov", stale_token),
    )
    check(
        s,
        "ent-a still pings city-gov",
        "OK as ent-a",
        _ping(space, "ent-a", "city-gov", _own_token(space, "ent-a")),
    )


def summary(outcomes: list[Outcome]) -> str:
    """The demo's last line: outcomes as expected of those checked, the failed ones by
    name, and the skipped ones apart (never counted as expected) with the first reason."""
    failed = [o.step for o in outcomes if o.status == "failed"]
    skipped = [o.skipped for o in outcomes if o.status == "skipped"]
    checked = len(outcomes) - len(skipped)
    return (
        f"{checked - len(failed)} of {checked} outcomes as expected"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
        + (f"; {len(skipped)} skipped, not checked: {skipped[0]}" if skipped else ".")
    )


def outcomes_json(outcomes: list[Outcome]) -> list[dict[str, object]]:
    """Outcomes for ``--json``."""
    return [{**asdict(o), "ok": o.ok, "status": o.status} for o in outcomes]
