"""A revoked participant's log stays open to auditors and the operator, and to them only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import audit_pb2, audit_pb2_grpc, catalog_pb2, catalog_pb2_grpc
from connector.audit.checkpoint import Checkpoint, log_origin, sign_checkpoint
from connector.audit.verify import verify
from connector.audit.witness import FileWitnessState, Seen
from connector.cli.main import main
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from tests.integration.test_audit import signing_key
from tests.integration.test_authentication import assert_refused, own_token, pem, raw_channel


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    """Participant ``a``, witnessed once by the auditor, then revoked with more entries."""
    root = tmp_path_factory.mktemp("revoked")
    participants = [("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    participants += [("aud", Role.AUDITOR), ("aud2", Role.AUDITOR)]
    with LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        a = sp.start_connector("a")
        sp.start_connector("b")
        for auditor in ("aud", "aud2"):
            sp.enrol(auditor, "")
            sp.write_config(auditor, "", sp.registry_address)
        assert a.log is not None
        for i in range(5):
            a.log.record("transfer.start", parties=["b"], data={"i": i})
        assert fetch(sp, "aud", "a", root / "before") == 0  # cosigns size 5
        for i in range(3):
            a.log.record("policy.decision", parties=["b"], data={"i": i})
        sp.revoke("a", "test: revoked, under investigation")
        sp.refresh()
        yield sp


def fetch(sp: LocalSpace, who: str, connector: str, out: Path) -> int:
    config = str(sp.root / f"{who}.toml")
    return main(["audit", "fetch", "--config", config, "--connector", connector, "--out", str(out)])


def test_auditor_fetches_and_verifies_a_revoked_log(revoked: LocalSpace, tmp_path: Path) -> None:
    """Issue 18, finding 9: the auditor could not fetch a revoked participant's log.

    ``aud`` witnessed the log before the revocation; ``aud2`` comes to it afterwards (the
    revoked connector could not even look up its key to take its cosignature).
    """
    address = f"a@127.0.0.1:{revoked.nodes['a'].port}"
    for auditor, connector in (("aud2", "a"), ("aud", "a"), ("aud2", address)):
        out = tmp_path / f"{auditor}-{connector.replace(':', '_')}"
        assert fetch(revoked, auditor, connector, out) == 0
        report = verify(out)
        assert report.ok and report.size >= 8, report.problems
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] and manifest["participant"] == "a"
        directory = json.loads((out / "directory.json").read_text())
        assert directory["a"]["revoked"] is True and "revoked" not in directory["b"]
        # The witnessed checkpoint (size 5, cosigned before the revocation) is kept.
        assert report.cosignatures == {"aud": 1}


def test_operator_fetches_and_verifies_a_revoked_log(revoked: LocalSpace, tmp_path: Path) -> None:
    assert fetch(revoked, revoked.manifest.operator_id, "a", tmp_path / "op") == 0
    assert json.loads((tmp_path / "op" / "manifest.json").read_text())["complete"]
    assert verify(tmp_path / "op").ok


def test_a_revoked_connector_keeps_a_fresh_revocation_list(revoked: LocalSpace) -> None:
    """Without it, the revoked connector refuses every call once its list is too old."""
    registry = revoked.nodes["a"].registry
    assert registry is not None
    assert "a" in registry.refresh_revocations().participants


def test_a_revoked_connector_answers_nobody_else(revoked: LocalSpace) -> None:
    b = raw_channel(
        revoked,
        "a",
        pem(revoked, "b", "tls_key"),
        pem(revoked, "b", "tls_cert"),
        own_token(revoked, "b"),
    )
    with b:
        calls = [
            lambda: audit_pb2_grpc.AuditServiceStub(b).GetCheckpoint(
                audit_pb2.GetCheckpointRequest(), timeout=5
            ),
            lambda: catalog_pb2_grpc.CatalogServiceStub(b).ListProducts(
                catalog_pb2.ListProductsRequest(), timeout=5
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert_refused(info.value, grpc.StatusCode.PERMISSION_DENIED, "has been revoked")


def test_a_revoked_log_that_forked_from_the_witnessed_one_is_refused(
    revoked: LocalSpace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No cosigning round checks consistency for a revoked log: the fetch does."""
    aud = revoked.configs["aud"]
    state = FileWitnessState(aud.data_dir / "witness")
    origin = log_origin(revoked.space, "a")
    real = state.get(origin)
    assert real is not None
    other = Checkpoint(origin, real.checkpoint.size, bytes(32))  # a's key signed another root
    state.put(origin, Seen(other, sign_checkpoint(other, signing_key(revoked, "a"))))
    try:
        assert fetch(revoked, "aud", "a", tmp_path / "forked") != 0
        assert "does not extend the checkpoint of size 5" in capsys.readouterr().err
    finally:
        state.put(origin, real)
