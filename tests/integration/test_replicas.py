"""Two replicas of one provider sharing PostgreSQL: races yield one agreement, one entry."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, negotiation_pb2
from connector._proto.tds.v1 import negotiation_pb2_grpc as npb_grpc
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.negotiation.outbox import Pending
from connector.node import Node
from tests.integration.test_authentication import own_token, pem
from tests.integration.test_negotiation import product

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[LocalSpace, Node, Node]]:
    root = tmp_path_factory.mktemp("replicas")
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        first = sp.start_connector("gov", database_url=postgres_url)
        sp.start_connector("a")
        second = Node(sp.write_config("gov", "127.0.0.1:0", sp.registry_address, postgres_url))
        second.start()
        assert second.wait_ready(10)
        sp.nodes["gov-2"] = second
        admin_stub(sp, first).AddProduct(
            admin_pb2.AddProductRequest(description=product("shared", "important"), format="json"),
            timeout=10,
        )
        for node in (first, second):
            assert node.catalog is not None
            node.catalog.refresh_policies()
        yield sp, first, second


def channel(sp: LocalSpace, node: Node, who: str, kind: str, token: bool) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        (sp.pki_dir / "ca.pem").read_bytes(),
        pem(sp, who, f"{kind}_key"),
        pem(sp, who, f"{kind}_cert"),
    )
    if token:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(own_token(sp, who))
        )
    return grpc.secure_channel(
        f"127.0.0.1:{node.port}", creds, options=[("grpc.ssl_target_name_override", "gov.city.tds")]
    )


def admin_stub(sp: LocalSpace, node: Node) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(channel(sp, node, "gov", "admin", False))


def peer_stub(sp: LocalSpace, node: Node) -> npb_grpc.NegotiationServiceStub:
    return npb_grpc.NegotiationServiceStub(channel(sp, node, "a", "tls", True))


def race(*calls: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except grpc.RpcError as err:
            results[i] = err.code()  # type: ignore[attr-defined]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def entries(node: Node, pid: str) -> list[str]:
    assert node.db is not None
    with node.db.engine.connect() as conn:
        bodies = conn.execute(text("SELECT body FROM log_entry ORDER BY idx")).scalars()
        found = [json.loads(bytes(b)) for b in bodies]
    return [
        e["data"]["to"]
        for e in found
        if e["kind"] == "negotiation.transition" and e["data"].get("pid") == pid
    ]


def test_racing_requests_approvals_and_callbacks(replicas: tuple[LocalSpace, Node, Node]) -> None:
    sp, first, second = replicas
    request = negotiation_pb2.ContractRequest(
        message_id="m-1",
        consumer_pid="c-race",
        product_id="shared",
        offer_id="o1",
        purpose="research",
    )
    acks = race(
        lambda: peer_stub(sp, first).RequestContract(request, timeout=15),
        lambda: peer_stub(sp, second).RequestContract(request, timeout=15),
    )
    assert all(isinstance(a, negotiation_pb2.NegotiationAck) for a in acks), acks
    assert acks[0].pid == acks[1].pid and acks[0].state == "REQUESTED"
    pid = acks[0].pid
    assert entries(first, pid) == ["REQUESTED"]

    outcomes = race(
        lambda: admin_stub(sp, first).ApproveNegotiation(
            admin_pb2.NegotiationRef(pid=pid), timeout=15
        ),
        lambda: admin_stub(sp, second).ApproveNegotiation(
            admin_pb2.NegotiationRef(pid=pid), timeout=15
        ),
    )
    approved = [o for o in outcomes if isinstance(o, admin_pb2.NegotiationInfo)]
    assert len(approved) == 1, outcomes
    assert grpc.StatusCode.FAILED_PRECONDITION in outcomes
    assert entries(first, pid) == ["REQUESTED", "AGREED"]
    assert first.db is not None
    with first.db.engine.connect() as conn:
        agreements = conn.execute(
            text("SELECT count(DISTINCT agreement_id) FROM negotiation WHERE pid = :p"), {"p": pid}
        ).scalar_one()
        sends = conn.execute(
            text(
                "SELECT count(*) FROM outbox"
                " WHERE negotiation_pid = :p AND method = 'SendAgreement'"
            ),
            {"p": pid},
        ).scalar_one()
    assert (agreements, sends) == (1, 1)


def test_racing_verification_callbacks_finalize_once(
    replicas: tuple[LocalSpace, Node, Node],
) -> None:
    import time

    sp, first, second = replicas
    consumer = sp.nodes["a"]
    assert consumer.outbox is not None and consumer.db is not None
    # The consumer's own admin channel names "a" (channel() names "gov").
    a_admin = admin_pb2_grpc.AdminServiceStub(
        grpc.secure_channel(
            f"127.0.0.1:{consumer.port}",
            grpc.ssl_channel_credentials(
                (sp.pki_dir / "ca.pem").read_bytes(),
                pem(sp, "a", "admin_key"),
                pem(sp, "a", "admin_cert"),
            ),
            options=[("grpc.ssl_target_name_override", "a.city.tds")],
        )
    )
    mine = a_admin.StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id="shared", offer_id="o1", purpose="research"
        ),
        timeout=15,
    )
    deadline = time.monotonic() + 15
    pending: list[Any] = []
    while not pending and time.monotonic() < deadline:
        pending = list(
            admin_stub(sp, first)
            .ListNegotiations(admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=15)
            .negotiations
        )
        time.sleep(0.05)
    assert pending
    consumer.outbox.stop()  # hold the consumer's countersignature in its outbox
    admin_stub(sp, first).ApproveNegotiation(
        admin_pb2.NegotiationRef(pid=pending[0].pid), timeout=15
    )
    payload = None
    while payload is None and time.monotonic() < deadline + 15:
        with consumer.db.engine.connect() as conn:
            payload = conn.execute(
                text(
                    "SELECT payload FROM outbox"
                    " WHERE method = 'VerifyAgreement' AND status = 'pending'"
                )
            ).scalar()
        time.sleep(0.05)
    assert payload is not None
    message = negotiation_pb2.AgreementMessage.FromString(bytes(payload))
    acks = race(
        lambda: peer_stub(sp, first).VerifyAgreement(message, timeout=15),
        lambda: peer_stub(sp, second).VerifyAgreement(message, timeout=15),
        lambda: peer_stub(sp, second).VerifyAgreement(message, timeout=15),
    )
    states = [a.state for a in acks if isinstance(a, negotiation_pb2.NegotiationAck)]
    assert states == ["FINALIZED"] * 3, acks
    assert entries(first, pending[0].pid) == ["REQUESTED", "AGREED", "FINALIZED"]
    assert first.db is not None
    with first.db.engine.connect() as conn:
        finals = conn.execute(
            text("SELECT count(*) FROM outbox WHERE negotiation_pid = :p AND method = 'Finalize'"),
            {"p": pending[0].pid},
        ).scalar_one()
    assert finals == 0  # FINALIZED goes back as the answer to VerifyAgreement
    assert mine.state == "REQUESTED"
    # The consumer's own delivery of its countersignature (held above) is answered
    # FINALIZED, the message having been processed, and that finalizes its side, once.
    with consumer.db.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT id, message_id, target, method, payload, negotiation_pid, attempts"
                " FROM outbox WHERE method = 'VerifyAgreement' AND status = 'pending'"
            )
        ).one()
    assert consumer.delivery is not None
    held = Pending(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6])
    consumer.delivery(held)
    consumer.delivery(held)  # a repeat changes nothing
    final = a_admin.GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=15)
    assert final.state == "FINALIZED"
    assert entries(consumer, mine.pid) == ["REQUESTED", "VERIFIED", "FINALIZED"]
