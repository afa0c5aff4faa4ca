"""Publishing and discovery: the admin publishes, members see what the access policy allows."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2,
    negotiation_pb2_grpc,
)
from connector.demo.space import LocalSpace
from connector.errors import ConnectorError, PermissionDenied, PreconditionFailed
from connector.identity.names import Role
from tests.integration.test_authentication import own_token, pem, raw_channel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "products" / "traffic-flow.toml"

RESTRICTED = {
    "id": "tender-bids",
    "title": "Tender bids",
    "grade": "general",
    "tags": ["finance"],
    "source": {"kind": "file", "path": "bids.zip"},
    "access": {"allow_list": ["b"]},
    "offers": [
        {
            "id": "audit",
            "purposes": ["audit"],
            "valid_from_ns": 0,
            "valid_until_ns": 4_000_000_000_000_000_000,
        }
    ],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("catalog")
    with LocalSpace.create(
        root,
        [
            ("gov", Role.GOVERNMENT),
            ("a", Role.ENTERPRISE),
            ("b", Role.ENTERPRISE),
            ("ind", Role.INDIVIDUAL),
        ],
    ) as sp:
        sp.start_registry()
        for pid in ("gov", "a", "b", "ind"):
            sp.start_connector(pid)
        yield sp


def admin(space: LocalSpace, who: str = "gov") -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(
        raw_channel(space, "gov", pem(space, who, "admin_key"), pem(space, who, "admin_cert"))
    )


def as_member(space: LocalSpace, member: str) -> grpc.Channel:
    """A channel to gov as ``member``'s connector calls it (its TLS and token)."""
    return raw_channel(
        space,
        "gov",
        pem(space, member, "tls_key"),
        pem(space, member, "tls_cert"),
        own_token(space, member),
    )


def catalog(space: LocalSpace, member: str) -> catalog_pb2_grpc.CatalogServiceStub:
    return catalog_pb2_grpc.CatalogServiceStub(as_member(space, member))


def publish(space: LocalSpace, description: str, fmt: str = "", replace: bool = False) -> None:
    admin(space).AddProduct(
        admin_pb2.AddProductRequest(description=description, format=fmt, replace=replace),
        timeout=10,
    )


def test_publish_and_discover(world: LocalSpace) -> None:
    publish(world, EXAMPLE.read_text(), "toml")
    publish(world, json.dumps(RESTRICTED), "json")
    own = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert sorted(json.loads(p)["id"] for p in own.products_json) == ["tender-bids", "traffic-flow"]
    seen_by_a = catalog(world, "a").ListProducts(catalog_pb2.ListProductsRequest(), timeout=10)
    assert [p.id for p in seen_by_a.products] == ["traffic-flow"]
    seen_by_b = catalog(world, "b").ListProducts(catalog_pb2.ListProductsRequest(), timeout=10)
    assert [p.id for p in seen_by_b.products] == ["tender-bids", "traffic-flow"]
    # the individual's role is not among the product's roles
    seen_by_ind = catalog(world, "ind").ListProducts(catalog_pb2.ListProductsRequest(), timeout=10)
    assert [p.id for p in seen_by_ind.products] == []
    product = (
        catalog(world, "a")
        .GetProduct(catalog_pb2.GetProductRequest(product_id="traffic-flow"), timeout=10)
        .product
    )
    assert product.registration_code == "SH-PD-2026-000123"
    assert product.offers[0].purposes == ["planning", "research"]


def test_hidden_and_missing_products_look_the_same(world: LocalSpace) -> None:
    publish(world, json.dumps(RESTRICTED), "json", replace=True)
    details = []
    for product_id in ("tender-bids", "no-such-product"):
        with pytest.raises(grpc.RpcError) as info:
            catalog(world, "a").GetProduct(
                catalog_pb2.GetProductRequest(product_id=product_id), timeout=10
            )
        err = info.value
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.NOT_FOUND
        details.append((err.details() or "").replace(product_id, "ID"))
    assert details[0] == details[1]


def contract_request(space: LocalSpace, member: str, product_id: str, offer: str) -> str:
    """A member's contract request straight to gov's NegotiationService: the NOT_FOUND
    details with the product id blanked out (what the member learns)."""
    stub = negotiation_pb2_grpc.NegotiationServiceStub(as_member(space, member))
    request = negotiation_pb2.ContractRequest(
        message_id=uuid.uuid4().hex, consumer_pid=uuid.uuid4().hex, product_id=product_id,
        offer_id=offer, purpose="audit",
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as info:
        stub.RequestContract(request, timeout=10)
    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    return (err.details() or "").replace(product_id, "ID")


def test_a_contract_request_for_a_hidden_product_is_answered_as_for_a_missing_one(
    world: LocalSpace,
) -> None:
    publish(world, json.dumps(RESTRICTED), "json", replace=True)
    node = world.nodes["gov"]
    assert node.log is not None
    before = node.log.size
    missing = contract_request(world, "a", "no-such-product", "audit")
    assert contract_request(world, "a", "tender-bids", "audit") == missing
    assert contract_request(world, "a", "tender-bids", "no-such-offer") == missing
    decisions = [
        json.loads(body)["data"]
        for _, body in node.log.entries(before, node.log.size)
        if json.loads(body)["kind"] == "policy.decision"
    ]
    # One decision each: the contract decision says the product is hidden; for an
    # unknown offer, the access decision says which of the two is not found.
    assert [(d["action"], d["allow"], d.get("visible")) for d in decisions] == [
        ("contract.request", False, False),
        ("catalog.read", False, None),
    ]


def test_a_policy_that_does_not_say_visible_is_asked_separately(
    world: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A city library whose contract decision has no ``visible`` (an older or custom
    one): the access policy is asked too, so a hidden product is still not found."""
    publish(world, json.dumps(RESTRICTED), "json", replace=True)
    point = world.nodes["gov"].policy
    assert point is not None
    engine = point.engine

    class Silent:
        revision = engine.revision

        def decide(self, document: Any) -> Any:
            return dataclasses.replace(engine.decide(document), visible=None)

    monkeypatch.setattr(point, "engine", Silent())
    missing = contract_request(world, "a", "no-such-product", "audit")
    assert contract_request(world, "a", "tender-bids", "audit") == missing


def test_core_product_is_refused_and_nothing_changes(world: LocalSpace) -> None:
    before = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    core = {**RESTRICTED, "id": "city-core", "grade": "core"}
    with pytest.raises(grpc.RpcError) as info:
        publish(world, json.dumps(core), "json")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "core data" in (info.value.details() or "")  # type: ignore[attr-defined]
    after = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert list(after.products_json) == list(before.products_json)


def test_bad_provider_module_is_refused(world: LocalSpace) -> None:
    bad = json.loads(json.dumps(RESTRICTED))
    bad["id"] = "with-module"
    bad["offers"][0]["policy_module"] = "sneaky"
    bad["offers"][0]["policy_source"] = "package tds.usage\n"
    with pytest.raises(grpc.RpcError) as info:
        publish(world, json.dumps(bad), "json")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_provider_modules_join_and_leave_the_policy_set(world: LocalSpace) -> None:
    node = world.nodes["gov"]
    assert node.policy is not None
    before = node.policy.engine.revision
    mod = json.loads(json.dumps(RESTRICTED))
    mod.update({"id": "guarded", "access": {}})
    mod["offers"][0]["policy_module"] = "guard"
    mod["offers"][0]["policy_source"] = (
        'package tds.provider.guard\n\nimport rego.v1\n\ndeny contains "weekend" if false\n'
    )
    publish(world, json.dumps(mod), "json")
    assert node.policy.engine.revision != before
    admin(world).RemoveProduct(admin_pb2.RemoveProductRequest(product_id="guarded"), timeout=10)
    assert node.policy.engine.revision == before


def test_members_cannot_publish(world: LocalSpace) -> None:
    with pytest.raises(grpc.RpcError) as info:
        admin(world, "a").AddProduct(
            admin_pb2.AddProductRequest(description=json.dumps(RESTRICTED), format="json"),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_publishing_and_catalog_reads_are_logged(world: LocalSpace) -> None:
    log = world.nodes["gov"].log
    assert log is not None
    kinds = [json.loads(body)["kind"] for _, body in log.entries(0, log.size)]
    assert "catalog.product_published" in kinds and "policy.decision" in kinds


def test_registration_and_search_respect_access_rules(
    world: LocalSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    from connector.cli.main import main

    gov, a, b = (str(world.root / f"{p}.toml") for p in ("gov", "a", "b"))
    assert main(["product", "register", "traffic-flow", "--public", "--config", gov, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    code = listed["registration_code"]
    assert code.startswith("CITY-") and code != "SH-PD-2026-000123"
    assert main(["product", "register", "tender-bids", "--config", gov]) == 0
    capsys.readouterr()
    assert main(["catalog", "search", "--config", a, "--json"]) == 0
    seen_by_a = {x["product"]: x for x in json.loads(capsys.readouterr().out)}
    assert set(seen_by_a) == {"traffic-flow"}  # tender-bids allows only b
    assert seen_by_a["traffic-flow"]["registration_code"] == code
    assert main(["catalog", "search", "bids", "--config", b, "--json"]) == 0
    assert [x["product"] for x in json.loads(capsys.readouterr().out)] == ["tender-bids"]
    assert main(["catalog", "search", "--config", str(world.root / "ind.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # the provider now carries the code it was given
    own = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    codes = {json.loads(p)["id"]: json.loads(p)["registration_code"] for p in own.products_json}
    assert codes["traffic-flow"] == code


def test_a_member_cannot_list_a_product_its_connector_does_not_publish(
    world: LocalSpace,
) -> None:
    """Issue 18 finding 11: b listed look-alikes of gov's products in the index."""
    # Hidden from everyone but a: the operator confirms it all the same while gov registers it.
    publish(world, json.dumps({**RESTRICTED, "id": "road-works", "access": {"allow_list": ["a"]}}))
    own = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    original = next(json.loads(p) for p in own.products_json if json.loads(p)["id"] == "road-works")
    b = world.nodes["b"].registry
    assert b is not None
    look_alikes = {
        "under gov's name": {**original},
        "as b's own": {**original, "owner": "b", "access": {}},
        "renamed, as b's own": {**original, "owner": "b", "id": "road-works-official"},
    }
    for name, listing in look_alikes.items():
        with pytest.raises(ConnectorError) as err:
            b.register_product(json.dumps(listing), True)
        assert isinstance(err.value, PermissionDenied | PreconditionFailed), (name, err.value)
    # gov's own registration, from its connector, is confirmed; b is listed nowhere.
    gov_registry, catalog = world.nodes["gov"].registry, world.nodes["gov"].catalog
    assert gov_registry is not None and catalog is not None
    catalog.register("road-works", True, gov_registry.register_product)
    listed = world.nodes["a"].registry.search_catalog()  # type: ignore[union-attr]
    assert [x.provider for x in listed if x.product_id.startswith("road-works")] == ["gov"]
