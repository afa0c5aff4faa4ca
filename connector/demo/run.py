"""``tds demo``: a city data space on loopback, narrated, with every outcome checked.

Scenarios so far: the trust foundation (onboarding, membership tokens, calls over mutual
TLS, refusals of forged, misbound and revoked callers), contracts (publishing, a core
product refused, auto-approved and approval-gated negotiations, a refused purpose,
revocation) and audit (every log cosigned, fetched and verified; tampering caught).
"""

from __future__ import annotations

import json
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
    admin_pb2,
    admin_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from connector.audit.auditor import fetch_and_witness
from connector.audit.verify import verify
from connector.demo.space import LocalSpace, rpc_code
from connector.errors import ConnectorError
from connector.identity.certs import (
    certificate_thumbprint,
    load_certificate,
    load_ed25519_public_key,
)
from connector.identity.names import Role
from connector.negotiation.agreement import verify_agreement
from connector.node import Node
from connector.node.clients import admin_channel
from connector.rpc.channel import TlsIdentity, open_channel

__all__ = ["DEMO_PARTICIPANTS", "Outcome", "run_demo"]

DEMO_PARTICIPANTS: list[tuple[str, Role]] = [
    ("city-gov", Role.GOVERNMENT),
    ("ent-a", Role.ENTERPRISE),
    ("ent-b", Role.ENTERPRISE),
    ("alice", Role.INDIVIDUAL),
    ("hospital", Role.ENTERPRISE),
    ("auditor", Role.AUDITOR),
]
CONNECTORS = ["city-gov", "ent-a", "ent-b", "alice", "hospital"]


@dataclass(frozen=True)
class Outcome:
    """One checked step of the demo."""

    scenario: str
    step: str
    expected: str
    observed: str

    @property
    def ok(self) -> bool:
        """Whether what happened is what was expected."""
        return self.expected == self.observed


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
    root: Path, narrate: Callable[[str], None], *, keep: Callable[[LocalSpace], None] | None = None
) -> list[Outcome]:
    """Run the demo under ``root``; return every outcome (the caller decides the exit code)."""
    outcomes: list[Outcome] = []

    def check(scenario: str, step: str, expected: str, observed: str) -> None:
        outcome = Outcome(scenario, step, expected, observed)
        outcomes.append(outcome)
        mark = "ok " if outcome.ok else "FAILED"
        narrate(
            f"  [{mark}] {step}: {observed}" + ("" if outcome.ok else f" (expected {expected})")
        )

    started = time.monotonic()
    narrate(f"Creating a development PKI for space 'city' in {root / 'pki'}")
    space = LocalSpace.create(root, DEMO_PARTICIPANTS)
    try:
        registry = space.start_registry()
        narrate(f"Operator registry listening on 127.0.0.1:{registry.port}")
        for pid in CONNECTORS:
            node = space.start_connector(pid)
            narrate(
                f"  {pid:<9} ({node.cfg.participant.role}) enrolled, token obtained, "
                f"listening on 127.0.0.1:{node.port}"
            )
        space.enrol("auditor", "")
        narrate("  auditor   enrolled (CLI only, no connector)")

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
        _contracts(space, check, narrate)
        _audit(space, root, check, narrate)
        narrate(f"\nAll state, keys and configs are in {root} ({time.monotonic() - started:.1f} s)")
        if keep is not None:
            keep(space)
    finally:
        space.stop()
    return outcomes


FAR_NS = 4_000_000_000_000_000_000


def _product(pid: str, title: str, grade: str, purposes: list[str]) -> str:
    return json.dumps(
        {
            "id": pid,
            "title": title,
            "grade": grade,
            "tags": ["mobility"],
            "source": {"kind": "file", "path": f"{pid}.csv"},
            "offers": [
                {
                    "id": "standard",
                    "purposes": purposes,
                    "valid_from_ns": 0,
                    "valid_until_ns": FAR_NS,
                    "max_transfers": 3,
                }
            ],
        }
    )


def _admin_stub(space: LocalSpace, participant: str) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(admin_channel(space.configs[participant]))


def _follow(
    stub: admin_pb2_grpc.AdminServiceStub, pid: str, until: tuple[str, ...], timeout: float = 20.0
) -> admin_pb2.NegotiationInfo:
    deadline = time.monotonic() + timeout
    info = stub.GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    while info.state not in until and time.monotonic() < deadline:
        time.sleep(0.05)
        info = stub.GetNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    return info


def _contracts(
    space: LocalSpace, check: Callable[[str, str, str, str], None], narrate: Callable[[str], None]
) -> None:
    """Publish, negotiate (auto-approved and approval-gated), refuse, revoke."""
    s = "contracts"
    narrate("\nThe city publishes data products; the hospital negotiates contracts")
    gov, hospital = _admin_stub(space, "city-gov"), _admin_stub(space, "hospital")
    gov.AddProduct(
        admin_pb2.AddProductRequest(
            description=_product(
                "bus-timetable", "Bus timetable and punctuality", "general", ["research"]
            ),
            format="json",
        ),
        timeout=10,
    )
    gov.AddProduct(
        admin_pb2.AddProductRequest(
            description=_product("road-sensors", "Road sensor readings", "important", ["research"]),
            format="json",
        ),
        timeout=10,
    )
    try:
        gov.AddProduct(
            admin_pb2.AddProductRequest(
                description=_product("city-core", "Core registry", "core", ["research"]),
                format="json",
            ),
            timeout=10,
        )
        observed = "published"
    except grpc.RpcError as err:
        observed = rpc_code(err)
    check(s, "city-gov tries to publish a core-grade product", "INVALID_ARGUMENT", observed)

    def negotiate(product: str, purpose: str) -> admin_pb2.NegotiationInfo:
        info = hospital.StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider="city-gov", product_id=product, offer_id="standard", purpose=purpose
            ),
            timeout=10,
        )
        return _follow(hospital, info.pid, ("FINALIZED", "TERMINATED"), timeout=8)

    done = negotiate("bus-timetable", "research")
    keys = {
        p.id: load_ed25519_public_key(space.pki_dir / p.signing_public_key)
        for p in space.manifest.participants
    }
    try:
        verify_agreement(done.agreement, keys.__getitem__)
        signatures = "both signatures verify"
    except ConnectorError as exc:
        signatures = str(exc)
    check(
        s,
        "hospital contracts for bus-timetable (research)",
        "FINALIZED, both signatures verify",
        f"{done.state}, {signatures}",
    )
    refused = negotiate("bus-timetable", "marketing")
    check(
        s,
        "hospital asks for a purpose the offer does not allow",
        "TERMINATED: purpose_not_offered",
        f"{refused.state}: {', '.join(refused.reasons)}",
    )
    waiting = hospital.StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="city-gov", product_id="road-sensors", offer_id="standard", purpose="research"
        ),
        timeout=10,
    )
    deadline = time.monotonic() + 10
    queue: list[admin_pb2.NegotiationInfo] = []
    while not queue and time.monotonic() < deadline:
        queue = list(
            gov.ListNegotiations(
                admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=10
            ).negotiations
        )
        time.sleep(0.05)
    check(s, "important data waits for city-gov's approval", "1 waiting", f"{len(queue)} waiting")
    if queue:
        gov.ApproveNegotiation(admin_pb2.NegotiationRef(pid=queue[0].pid), timeout=10)
    approved = _follow(hospital, waiting.pid, ("FINALIZED", "TERMINATED"))
    check(s, "city-gov approves; the contract is finalized", "FINALIZED", approved.state)
    gov.RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(
            agreement_id=done.agreement_id, reason="demo: licence withdrawn"
        ),
        timeout=10,
    )
    deadline = time.monotonic() + 10
    held = hospital.GetNegotiation(admin_pb2.NegotiationRef(pid=done.pid), timeout=10)
    while not held.revocation and time.monotonic() < deadline:
        time.sleep(0.05)
        held = hospital.GetNegotiation(admin_pb2.NegotiationRef(pid=done.pid), timeout=10)
    check(
        s,
        "city-gov revokes the bus-timetable agreement; the hospital holds the signed revocation",
        "revoked",
        "revoked" if held.revocation else "not revoked",
    )


def _audit(
    space: LocalSpace,
    root: Path,
    check: Callable[[str, str, str, str], None],
    narrate: Callable[[str], None],
) -> None:
    """The auditor witnesses and exports every log, verifies each, and catches a forgery."""
    s = "audit"
    narrate("\nThe auditor cosigns, fetches and verifies every connector's log")
    cfg = space.write_config("auditor", "", space.registry_address)
    exports = root / "audit"
    # ent-b was revoked above: its connector can no longer reach the registry.
    for pid in [space.manifest.operator_id, *(c for c in CONNECTORS if c != "ent-b")]:
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


def outcomes_json(outcomes: list[Outcome]) -> list[dict[str, object]]:
    """Outcomes for ``--json``."""
    return [{**asdict(o), "ok": o.ok} for o in outcomes]
