"""A policy engine that does not answer decides nothing: every service answers UNAVAILABLE
(try again), logs the deny, and changes no state — not an empty catalog, a missing
product, a terminated negotiation or a refused transfer, which would all be for good.

gov decides through an OPA server: the REST double in its own process, made slower than
gov's deadline for the calls under test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import (
    admin_pb2,
    catalog_pb2,
    catalog_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)
from connector.config import PolicyConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.negotiation.agreement import verify_agreement
from tests.integration.test_approval import (
    provider_entries_since,
    publish,
    refused_approval,
    waiting,
)
from tests.integration.test_negotiation import admin, keys, product, wait
from tests.support import opa_double
from tests.support.exchange import entries


@pytest.fixture(scope="module")
def opa_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSpace, str]]:
    """gov decides through an OPA server (the REST double, in its own process)."""
    root = tmp_path_factory.mktemp("engine-down")
    participants = [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]
    with opa_double.running() as url, LocalSpace.create(root, participants) as sp:
        sp.start_registry()
        policy = PolicyConfig(engine="opa", opa_url=url, timeout_seconds=0.5)
        sp.start_connector("gov", policy=policy)
        sp.start_connector("a")
        yield sp, url


def published_file(space: LocalSpace, product_id: str) -> None:
    description = product(product_id)
    data = Path(space.root) / "gov-data"
    data.mkdir(exist_ok=True)
    (data / f"{product_id}.bin").write_bytes(b"x" * 4096)
    admin(space, "gov").AddProduct(
        admin_pb2.AddProductRequest(description=description, format="json", base_dir=str(data)),
        timeout=10,
    )


def test_an_approval_while_the_policy_engine_is_down_waits_for_it(
    opa_space: tuple[LocalSpace, str],
) -> None:
    space, opa_url = opa_space
    publish(space, product("sensors-opa", "important"))
    pid = waiting(space, "a", "sensors-opa")
    log = space.nodes["gov"].log
    assert log is not None
    before = log.size
    opa_double.set_fault(opa_url, "slow", delay=2)  # past gov's 0.5 s deadline
    try:
        message = refused_approval(space, pid, grpc.StatusCode.UNAVAILABLE)
    finally:
        opa_double.set_fault(opa_url, "none")
    # Not a deny for good: the admin is told to try again, not to reject.
    assert "engine_timeout" in message and "approve it again" in message
    [entry] = provider_entries_since(space, before)
    assert entry["kind"] == "policy.decision"
    assert entry["data"]["deny"] == ["engine_timeout"]  # type: ignore[index]
    # The engine is back: the same negotiation is approved and finalised.
    admin(space, "gov").ApproveNegotiation(admin_pb2.NegotiationRef(pid=pid), timeout=10)
    done = wait(space, "gov", pid, "FINALIZED")
    assert verify_agreement(done.agreement, keys(space)).product == "sensors-opa"


def test_a_catalog_is_unavailable_not_empty(opa_space: tuple[LocalSpace, str]) -> None:
    space, opa_url = opa_space
    published_file(space, "listed-opa")
    stub = catalog_pb2_grpc.CatalogServiceStub(space.nodes["a"]._member_channel("gov"))
    assert "listed-opa" in [
        p.id for p in stub.ListProducts(catalog_pb2.ListProductsRequest()).products
    ]
    opa_double.set_fault(opa_url, "slow", delay=2)
    try:
        for call, request in (
            (stub.ListProducts, catalog_pb2.ListProductsRequest()),
            (stub.GetProduct, catalog_pb2.GetProductRequest(product_id="listed-opa")),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "policy engine did not answer" in (err.value.details() or "")
    finally:
        opa_double.set_fault(opa_url, "none")


def test_a_contract_request_is_retried_until_the_engine_answers(
    opa_space: tuple[LocalSpace, str],
) -> None:
    space, opa_url = opa_space
    published_file(space, "asked-opa")
    opa_double.set_fault(opa_url, "slow", delay=2)
    try:
        mine = admin(space, "a").StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider="gov", product_id="asked-opa", offer_id="o1", purpose="research"
            ),
            timeout=10,
        )
        time.sleep(1.5)  # the first delivery is refused with UNAVAILABLE
        info = admin(space, "a").GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
        # Neither side decided: the consumer still asks, the provider holds nothing.
        assert info.state == "REQUESTED" and not info.counterparty_pid, info
        held = admin(space, "gov").ListNegotiations(admin_pb2.ListNegotiationsRequest(), timeout=10)
        assert "asked-opa" not in [n.product_id for n in held.negotiations]
    finally:
        opa_double.set_fault(opa_url, "none")
    # The consumer's outbox asks again; the engine answers; the contract is made.
    done = wait(space, "a", mine.pid, "FINALIZED", timeout=30)
    assert verify_agreement(done.agreement, keys(space)).product == "asked-opa"


def test_a_transfer_is_unavailable_not_refused(
    opa_space: tuple[LocalSpace, str], tmp_path: Path
) -> None:
    space, opa_url = opa_space
    published_file(space, "moved-opa")
    mine = admin(space, "a").StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id="moved-opa", offer_id="o1", purpose="research"
        ),
        timeout=10,
    )
    agreement = wait(space, "a", mine.pid, "FINALIZED").agreement_id
    stub = transfer_pb2_grpc.TransferServiceStub(space.nodes["a"]._member_channel("gov"))
    started = len(entries(space, "gov", "transfer.started"))
    opa_double.set_fault(opa_url, "slow", delay=2)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.StartTransfer(
                transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    finally:
        opa_double.set_fault(opa_url, "none")
    # Nothing started, nothing counted: the next try is the agreement's first transfer.
    assert len(entries(space, "gov", "transfer.started")) == started
    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    assert all(x.transfers == 0 for x in metering.agreements if x.agreement_id == agreement)
    stub.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=10)
