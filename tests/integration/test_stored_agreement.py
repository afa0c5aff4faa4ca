"""Issue 18 finding 3: the provider verifies the agreement it stored before it acts on it.

Someone who can write the provider's database (the SQLite file, or PostgreSQL) edits a
finalized agreement to name another product. The provider must refuse every use of the
edited agreement — start, pull, receipt, revocation — with a clear message, log the
refusal and change nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import (
    admin_pb2,
    negotiation_pb2,
    negotiation_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)
from connector.audit import jws
from connector.audit.receipts import Receipt, sign_receipt
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_private_key
from connector.identity.names import Role
from tests.integration.test_authentication import own_token, pem, raw_channel
from tests.support.exchange import admin, agree, altered, entries, offer, publish


@pytest.fixture
def space(tmp_path: Path, database_url: str) -> Iterator[LocalSpace]:
    """gov (on ``database_url``) publishes ``open``, ``secret`` and ``approved``."""
    data = tmp_path / "space" / "data"  # inside the space: a source root of its connectors
    data.mkdir(parents=True)
    (data / "open.bin").write_bytes(os.urandom(256 * 1024))
    (data / "secret.bin").write_bytes(os.urandom(1024 * 1024))
    parts = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]
    with LocalSpace.create(tmp_path / "space", parts) as sp:
        sp.start_registry()
        sp.start_connector("gov", database_url=database_url)
        sp.start_connector("a")
        for pid, grade, path in (
            ("open", "general", "open.bin"),
            ("secret", "general", "secret.bin"),
            ("approved", "important", "open.bin"),  # agreed only once gov's admin approves
        ):
            description = {
                "id": pid,
                "title": pid,
                "grade": grade,
                "source": {"kind": "file", "path": path},
                "offers": [offer()],
            }
            publish(sp, "gov", description, data)
        sp.data = data  # type: ignore[attr-defined]
        yield sp


@contextlib.contextmanager
def _database(url: str) -> Iterator[Callable[[str, tuple[Any, ...]], list[Any]]]:
    """Statements on the connector's database behind its back, as a person with access
    to the file or the server would run them (``?`` markers)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            yield lambda sql, params: conn.execute(sql, params).fetchall()
        return
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as pg:

        def run(sql: str, params: tuple[Any, ...]) -> list[Any]:
            cur = pg.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

        yield run


def _stored(url: str, agreement: str) -> str:
    with _database(url) as run:
        rows = run("SELECT agreement FROM negotiation WHERE agreement_id = ?", (agreement,))
    assert len(rows) == 1
    return str(rows[0][0])


def _store(url: str, agreement: str, signed: str) -> None:
    with _database(url) as run:
        run("UPDATE negotiation SET agreement = ? WHERE agreement_id = ?", (signed, agreement))


def _gov_as_a(space: LocalSpace) -> transfer_pb2_grpc.TransferServiceStub:
    return transfer_pb2_grpc.TransferServiceStub(space.nodes["a"]._member_channel("gov"))


def _a_key(space: LocalSpace) -> Any:
    return load_ed25519_private_key(
        space.pki_dir / space.manifest.participant("a").signing_key, "k"
    )


def _receipt(space: LocalSpace, agreement: str, m: transfer_pb2.TransferManifest) -> str:
    """a's signed receipt for ``m`` (as if all of it had arrived)."""
    receipt = Receipt(
        agreement=agreement,
        transfer=m.transfer_id,
        product=m.product_id,
        provider="gov",
        consumer="a",
        size=m.size,
        sha256=m.sha256,
        started_ms=m.started_ms,
        ended_ms=m.started_ms + 1,
        provider_log_index=m.provider_log_index,
        consumer_log_index=0,
    )
    return sign_receipt(receipt, _a_key(space))


def test_an_agreement_edited_in_the_database_is_refused_for_every_use(
    space: LocalSpace, database_url: str
) -> None:
    agreement = agree(space, "gov", "a", "open")
    gov = _gov_as_a(space)
    start = transfer_pb2.StartTransferRequest(agreement_id=agreement)
    running = gov.StartTransfer(start, timeout=10)  # started before the edit
    signed = _stored(database_url, agreement)
    _store(database_url, agreement, altered(signed, product="secret"))

    def refused(call: Callable[[], object]) -> None:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert f"the stored agreement {agreement} does not verify" in (err.value.details() or "")

    pull = transfer_pb2.PullRequest(transfer_id=running.transfer_id)
    refused(lambda: gov.StartTransfer(start, timeout=10))
    refused(lambda: list(gov.Pull(pull, timeout=10)))
    refused(
        lambda: gov.CompleteTransfer(
            transfer_pb2.CompleteTransferRequest(
                transfer_id=running.transfer_id, receipt=_receipt(space, agreement, running)
            ),
            timeout=10,
        )
    )
    refused(
        lambda: admin(space, "gov").RevokeAgreement(
            admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="test"), timeout=10
        )
    )

    # Each refusal is logged; nothing else changed: one transfer counted, still running,
    # not completed, the agreement not revoked.
    refusals = [
        e["data"]["use"]
        for e in entries(space, "gov", "agreement.unverified")
        if e["data"]["agreement"] == agreement
    ]
    assert refusals == ["transfer.start", "transfer.pull", "transfer.complete", "agreement.revoke"]
    mine = [e for e in entries(space, "gov") if e["data"].get("agreement") == agreement]
    assert [e["kind"] for e in mine if e["kind"] != "agreement.unverified"] == ["transfer.started"]
    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    counted = [
        (m.transfers, m.completed) for m in metering.agreements if m.agreement_id == agreement
    ]
    assert counted == [(1, 0)]
    listed = admin(space, "gov").ListTransfers(admin_pb2.ListTransfersRequest(), timeout=10)
    assert [t.state for t in listed.transfers if t.agreement_id == agreement] == ["started"]

    # Restored, the same transfer goes on, and delivers the product agreed.
    _store(database_url, agreement, signed)
    delivered = b"".join(c.data for c in gov.Pull(pull, timeout=30))
    source = (space.data / "open.bin").read_bytes()  # type: ignore[attr-defined]
    assert delivered == source and running.sha256 == hashlib.sha256(source).hexdigest()


def test_an_agreement_edited_before_its_countersignature_is_not_finalized(
    space: LocalSpace, database_url: str
) -> None:
    """The consumer countersigns what the edited row holds (a consumer that wants the
    other product would); the provider must not finalize it."""
    # a's connector is stopped, so the approved agreement gov sends waits in gov's outbox
    # and gov's row stays AGREED; a speaks by hand, with its own certificate and token.
    token = own_token(space, "a")
    space.nodes.pop("a").stop(grace=1)
    channel = raw_channel(
        space, "gov", pem(space, "a", "tls_key"), pem(space, "a", "tls_cert"), token
    )
    gov = negotiation_pb2_grpc.NegotiationServiceStub(channel)
    asked = gov.RequestContract(
        negotiation_pb2.ContractRequest(
            message_id="m-1",
            consumer_pid="c-by-hand",
            product_id="approved",
            offer_id="o1",
            purpose="research",
        ),
        timeout=10,
    )
    assert asked.state == "REQUESTED"
    admin(space, "gov").ApproveNegotiation(admin_pb2.NegotiationRef(pid=asked.pid), timeout=10)
    with _database(database_url) as run:
        ((agreement, signed),) = run(
            "SELECT agreement_id, agreement FROM negotiation WHERE pid = ?", (asked.pid,)
        )
        edited = altered(signed, product="secret")
        run("UPDATE negotiation SET agreement = ? WHERE pid = ?", (edited, asked.pid))
    # a countersigns the edited terms as they are, binding gov's (now invalid) signature.
    doc = json.loads(edited)
    bound = hashlib.sha256(doc["signatures"][0]["signature"].encode()).digest()
    header = {
        "alg": "EdDSA",
        "kid": "a",
        "tds_role": "consumer",
        "tds_countersigns": base64.urlsafe_b64encode(bound).rstrip(b"=").decode(),
    }
    doc["signatures"].append(jws._signature(doc["payload"], header, _a_key(space)))
    with pytest.raises(grpc.RpcError) as err:
        gov.VerifyAgreement(
            negotiation_pb2.AgreementMessage(
                message_id="m-2",
                provider_pid=asked.pid,
                consumer_pid="c-by-hand",
                agreement=json.dumps(doc),
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert f"the stored agreement {agreement} does not verify" in (err.value.details() or "")
    held = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=asked.pid), timeout=10)
    assert held.state == "AGREED"
    refusals = [
        e["data"]["use"]
        for e in entries(space, "gov", "agreement.unverified")
        if e["data"]["agreement"] == agreement
    ]
    assert refusals == ["agreement.finalize"]
