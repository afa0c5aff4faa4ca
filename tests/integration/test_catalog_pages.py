"""Paged catalogs (issue 21): pages, filters, tokens bound to their caller, one access
decision per page, answers far below the message limit, and batch publishing all or none."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, catalog_pb2, registry_pb2
from connector.catalog.catalog import Catalog, Description
from connector.catalog.store import ProductStore
from connector.demo.space import LocalSpace
from connector.errors import InvalidRequest
from connector.identity.names import Role
from connector.policy import EmbeddedEngine, PolicySet, load_library
from connector.policy._rego_c import Prepared
from tests.integration.test_catalog import admin, catalog, publish

OFFER = {"id": "o", "purposes": ["research"], "valid_from_ns": 0, "valid_until_ns": 4 * 10**18}


def product(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"item-{i:03d}",
        "title": f"Item {i} {'parking' if i % 3 == 0 else 'traffic'}",
        "grade": "important" if i % 4 == 0 else "general",
        "tags": [f"t{i % 2}"],
        "domain": "transport" if i % 5 else "energy",
        "source": {"kind": "file", "path": "x.csv"},
        "offers": [OFFER],
        # every seventh only b may see
        **({"access": {"allow_list": ["b"]}} if i % 7 == 0 else {}),
        **extra,
    }


COUNT = 40


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSpace]:
    """gov's catalog and the registry's index on each database (a and b on SQLite)."""
    database = ""
    if request.param == "postgresql":
        database = request.getfixturevalue("module_postgres_url")
    root = tmp_path_factory.mktemp("pages")
    (root / "x.csv").write_text("a\n1\n")
    with LocalSpace.create(
        root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    ) as sp:
        sp.start_registry(database_url=database)
        sp.start_connector("gov", database_url=database)
        for pid in ("a", "b"):
            sp.start_connector(pid)
        batch = [
            admin_pb2.ProductDescription(description=json.dumps(product(i)), format="json")
            for i in range(COUNT)
        ]
        admin(sp).AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=30)
        yield sp


def pages(stub: Any, **request: Any) -> Iterator[catalog_pb2.ListProductsResponse]:
    token = ""
    while True:
        resp = stub.ListProducts(
            catalog_pb2.ListProductsRequest(page_token=token, **request), timeout=10
        )
        yield resp
        token = resp.next_page_token
        if not token:
            return


def decisions(space: LocalSpace, since: int) -> list[dict[str, Any]]:
    log = space.nodes["gov"].log
    assert log is not None
    entries = [json.loads(body) for _, body in log.entries(since, log.size)]
    return [e["data"] for e in entries if e["kind"] == "policy.decision"]


def log_size(space: LocalSpace) -> int:
    log = space.nodes["gov"].log
    assert log is not None
    return int(log.size)


def edited(token: str, at: int) -> str:
    """``token`` with the character at ``at`` changed."""
    chars = list(token)
    chars[at] = "B" if chars[at] == "A" else "A"
    return "".join(chars)


def code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


def test_pages_cover_the_visible_catalog_once_in_order(world: LocalSpace) -> None:
    expected_a = [f"item-{i:03d}" for i in range(COUNT) if i % 7]
    for size in (1, 7, 40, 1000):
        seen = [p.id for page in pages(catalog(world, "a"), page_size=size) for p in page.products]
        assert seen == expected_a, size
    seen_b = [p.id for page in pages(catalog(world, "b"), page_size=9) for p in page.products]
    assert seen_b == [f"item-{i:03d}" for i in range(COUNT)]


def test_one_decision_per_page_listing_the_visible_ids(world: LocalSpace) -> None:
    before = log_size(world)
    got = list(pages(catalog(world, "a"), page_size=10))
    logged = decisions(world, before)
    assert len(got) == len(logged) == 4  # 40 products, 10 a page: one entry per page
    for page, entry in zip(got, logged, strict=True):
        assert entry["action"] == "catalog.list" and entry["allow"] is True
        assert len(entry["products"]) == 10
        assert entry["visible_ids"] == [p.id for p in page.products]
        assert set(entry["products"]) > set(entry["visible_ids"])  # the hidden were decided
    hashes = {e["input_sha256"] for e in logged}
    assert len(hashes) == 4


def test_a_single_product_keeps_its_own_decision(world: LocalSpace) -> None:
    before = log_size(world)
    catalog(world, "a").GetProduct(catalog_pb2.GetProductRequest(product_id="item-001"), timeout=10)
    (entry,) = decisions(world, before)
    assert entry["action"] == "catalog.read" and entry["product"] == "item-001"


def test_filters_combine(world: LocalSpace) -> None:
    def ids(**filters: Any) -> list[str]:
        return [p.id for page in pages(catalog(world, "b"), **filters) for p in page.products]

    everything = [product(i) for i in range(COUNT)]
    assert ids(tag="t1") == [p["id"] for p in everything if "t1" in p["tags"]]
    assert ids(domain="energy", grade="important") == [
        p["id"] for p in everything if p["domain"] == "energy" and p["grade"] == "important"
    ]
    assert ids(text="PARKING item") == [p["id"] for p in everything if "parking" in p["title"]]
    assert ids(text="nowhere") == []


def test_a_page_token_of_another_caller_or_edited_is_refused(world: LocalSpace) -> None:
    first = catalog(world, "a").ListProducts(
        catalog_pb2.ListProductsRequest(page_size=5), timeout=10
    )
    token = first.next_page_token
    assert token
    before = log_size(world)
    for member, request in (
        ("b", catalog_pb2.ListProductsRequest(page_size=5, page_token=token)),
        ("a", catalog_pb2.ListProductsRequest(page_size=5, page_token=token, tag="t1")),
        ("a", catalog_pb2.ListProductsRequest(page_size=5, page_token=edited(token, -1))),
        ("a", catalog_pb2.ListProductsRequest(page_size=5, page_token=edited(token, 20))),
        ("a", catalog_pb2.ListProductsRequest(page_size=5, page_token="bm90LWEtdG9rZW4")),
    ):
        stub = catalog(world, member)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListProducts(request, timeout=10)
        err: Any = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "item-" not in (err.details() or "")  # nothing revealed
    assert decisions(world, before) == []  # refused before anything was decided
    # the token still works for its own caller and filters
    again = catalog(world, "a").ListProducts(
        catalog_pb2.ListProductsRequest(page_size=5, page_token=token), timeout=10
    )
    assert again.products[0].id == "item-005"  # after item-000..004


@pytest.mark.parametrize(
    "request_",
    [
        catalog_pb2.ListProductsRequest(page_size=0),
        catalog_pb2.ListProductsRequest(page_size=-1),
        catalog_pb2.ListProductsRequest(page_size=1001),
        catalog_pb2.ListProductsRequest(text="x" * (1 << 20)),
        catalog_pb2.ListProductsRequest(tag="t" * (1 << 20)),
        catalog_pb2.ListProductsRequest(grade="secret"),
    ],
    ids=["size-0", "size-negative", "size-above-max", "text-1MB", "tag-1MB", "grade"],
)
def test_bad_pages_are_invalid_argument(
    world: LocalSpace, request_: catalog_pb2.ListProductsRequest
) -> None:
    assert code(lambda: catalog(world, "a").ListProducts(request_, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_answers_stay_far_below_the_message_limit(world: LocalSpace) -> None:
    """Products of ~200 KB: a page stops at max_page_bytes (1 MiB) whatever page_size."""
    big = "x" * 200_000
    batch = [
        admin_pb2.ProductDescription(
            description=json.dumps(
                product(i, id=f"large-{i:02d}", title=f"Large {i}", description=big)
            ),
            format="json",
        )
        for i in range(1, 13)
    ]
    for half in (batch[:6], batch[6:]):  # one call carries at most 4 MiB
        admin(world).AddProduct(admin_pb2.AddProductRequest(batch=half), timeout=30)
    seen = []
    for page in pages(catalog(world, "b"), page_size=1000, text="large"):
        assert page.ByteSize() < 1_100_000
        seen += [p.id for p in page.products]
    assert seen == [f"large-{i:02d}" for i in range(1, 13)]


def test_a_batch_with_one_invalid_description_publishes_nothing(world: LocalSpace) -> None:
    good = [
        admin_pb2.ProductDescription(
            description=json.dumps(product(100 + i)), format="json", name=f"good-{i}.json"
        )
        for i in range(3)
    ]
    invalid = {**product(200), "grade": "core"}
    bad = admin_pb2.ProductDescription(
        description=json.dumps(invalid), format="json", name="bad.json"
    )
    own_before = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    before = log_size(world)
    with pytest.raises(grpc.RpcError) as info:
        admin(world).AddProduct(
            admin_pb2.AddProductRequest(batch=[*good[:2], bad, good[2]]), timeout=30
        )
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("bad.json: ") and "core" in err.details()
    assert "nothing was published" in err.details()
    own_after = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert list(own_after.products_json) == list(own_before.products_json)
    assert log_size(world) == before  # not even a publication logged


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (product(1), "appears twice"),  # the same id twice in the batch
        ({**product(301), "source": {"kind": "file", "path": "/etc/passwd"}}, "description 2"),
        ("not json at all", "description 2 of 2"),
    ],
    ids=["duplicate", "outside-roots", "unparsable"],
)
def test_batch_refusals_name_the_description(world: LocalSpace, second: Any, why: str) -> None:
    batch = [
        admin_pb2.ProductDescription(description=json.dumps(product(300)), format="json"),
        admin_pb2.ProductDescription(
            description=second if isinstance(second, str) else json.dumps(second), format="json"
        ),
    ]
    if why == "appears twice":
        batch[0] = admin_pb2.ProductDescription(description=json.dumps(product(1)), format="json")
    with pytest.raises(grpc.RpcError) as info:
        admin(world).AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=30)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in err.details()
    own = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert "item-300" not in {json.loads(p)["id"] for p in own.products_json}


def test_a_batch_with_an_existing_product_publishes_nothing(world: LocalSpace) -> None:
    batch = [
        admin_pb2.ProductDescription(description=json.dumps(product(400)), format="json"),
        admin_pb2.ProductDescription(description=json.dumps(product(3)), format="json"),
    ]
    with pytest.raises(grpc.RpcError) as info:
        admin(world).AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=30)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "item-003" in err.details()
    own = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert "item-400" not in {json.loads(p)["id"] for p in own.products_json}


def test_registry_search_pages_with_one_decision_each(world: LocalSpace) -> None:
    gov_registry, gov_catalog = world.nodes["gov"].registry, world.nodes["gov"].catalog
    assert gov_registry is not None and gov_catalog is not None
    for i in range(14):
        gov_catalog.register(f"item-{i:03d}", False, gov_registry.register_product)
    a = world.nodes["a"].registry
    b = world.nodes["b"].registry
    assert a is not None and b is not None
    seen, token, answers = [], "", 0
    while True:
        resp = a.search_catalog_page(
            registry_pb2.SearchCatalogRequest(page_size=4, page_token=token)
        )
        answers += 1
        seen += [x.product_id for x in resp.listings]
        token = resp.next_page_token
        if not token:
            break
    assert seen == [f"item-{i:03d}" for i in range(14) if i % 7]
    assert answers == 4
    first = a.search_catalog_page(registry_pb2.SearchCatalogRequest(page_size=4))
    with pytest.raises(InvalidRequest):  # a's token, presented by b
        b.search_catalog_page(
            registry_pb2.SearchCatalogRequest(page_size=4, page_token=first.next_page_token)
        )
    for bad in (
        registry_pb2.SearchCatalogRequest(page_size=0),
        registry_pb2.SearchCatalogRequest(page_size=1001),
        registry_pb2.SearchCatalogRequest(text="x" * (1 << 20)),
    ):
        with pytest.raises(InvalidRequest):
            a.search_catalog_page(bad)


def test_cli_adds_many_files_all_or_nothing(
    world: LocalSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    from connector.cli.main import main

    gov = str(world.root / "gov.toml")
    files = []
    for i in (500, 501):
        path = world.root / f"item-{i}.json"
        path.write_text(json.dumps({**product(i), "source": {"kind": "file", "path": "x.csv"}}))
        files.append(str(path))
    bad = world.root / "broken.toml"
    bad.write_text('id = "item-502"\ntitle = "no offers, no source"\n')
    assert main(["product", "add", *files, str(bad), "--config", gov]) == 1
    err = capsys.readouterr().err
    assert "broken.toml" in err and "nothing was published" in err and "Traceback" not in err
    own = admin(world).ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert not {"item-500", "item-501"} & {json.loads(p)["id"] for p in own.products_json}
    assert main(["product", "add", *files, "--config", gov, "--json"]) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == ["item-500", "item-501"]


def test_cli_follows_pages_with_limit(
    world: LocalSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    from connector.cli.main import main

    a = str(world.root / "a.toml")
    expected = [p.id for page in pages(catalog(world, "a"), page_size=3) for p in page.products]
    assert len(expected) > 3
    assert main(["catalog", "list", "--provider", "gov", "--config", a, "--json"]) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == expected
    argv = ["catalog", "list", "--provider", "gov", "--config", a, "--json", "--limit", "3"]
    assert main(argv) == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == expected[:3]
    argv = ["catalog", "list", "--provider", "gov", "--config", a, "--text", "parking", "--json"]
    assert main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown and all("parking" in p["title"].lower() for p in shown)
    gov_registry, gov_catalog = world.nodes["gov"].registry, world.nodes["gov"].catalog
    assert gov_registry is not None and gov_catalog is not None
    for i in (1, 2, 3):
        gov_catalog.register(f"item-{i:03d}", False, gov_registry.register_product)
    assert main(["catalog", "search", "--config", a, "--json", "--limit", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    with pytest.raises(SystemExit):
        main(["catalog", "list", "--provider", "gov", "--config", a, "--limit", "-1"])


MODULE = """package tds.provider.{name}

import rego.v1

deny contains "weekend" if input.context.now_ns < 0
"""


def with_module(i: int, module: str, source: str = "") -> str:
    offer = {
        **OFFER,
        "policy_module": module,
        "policy_source": source or MODULE.format(name=module),
    }
    return json.dumps(product(i, offers=[offer]))


class CountingEngine(EmbeddedEngine):
    """The embedded engine, counting how often its policy set is replaced."""

    updates = 0

    def update(self, policy: PolicySet) -> None:
        self.updates += 1
        super().update(policy)


def twin(world: LocalSpace, engine: EmbeddedEngine) -> Catalog:
    """A second catalog on gov's database: what a replica of gov holds."""
    node = world.nodes["gov"]
    assert node.db is not None and node.policy is not None and node.log is not None
    return Catalog(
        participant="gov",
        store=ProductStore(node.db),
        library=load_library(),
        engine=engine,
        policy=node.policy,
        audit=node.log,
        clock=node.clock,
    )


def test_publishing_changes_the_policy_set_only_for_provider_modules(world: LocalSpace) -> None:
    engine = CountingEngine(load_library())
    catalog_ = twin(world, engine)
    start = engine.updates
    catalog_.publish_many([Description(json.dumps(product(i)), "json") for i in (600, 601)])
    catalog_.publish(json.dumps(product(602)), fmt="json")
    assert engine.updates == start  # no module: nothing recompiled
    catalog_.publish(with_module(603, "night_rule"), fmt="json")
    assert engine.updates == start + 1
    assert "provider/night_rule.rego" in engine._policy.modules
    catalog_.publish(with_module(603, "night_rule"), fmt="json", replace=True)
    assert engine.updates == start + 1  # the same module again: nothing to change
    catalog_.remove("item-603")
    assert engine.updates == start + 2
    assert "provider/night_rule.rego" not in engine._policy.modules


def test_a_module_a_replica_published_is_not_taken_again(world: LocalSpace) -> None:
    replica = twin(world, EmbeddedEngine(load_library()))  # knows nothing published later
    gov_catalog = world.nodes["gov"].catalog
    assert gov_catalog is not None
    gov_catalog.publish(with_module(700, "shared_rule"), fmt="json")
    with pytest.raises(InvalidRequest, match="'shared_rule' is used by another product"):
        replica.publish(with_module(701, "shared_rule"), fmt="json")
    batch = [
        Description(with_module(702, "twin_rule"), "json", name="one.json"),
        Description(with_module(703, "twin_rule"), "json", name="two.json"),
    ]
    with pytest.raises(InvalidRequest, match=r"two\.json: policy module 'twin_rule' is used"):
        replica.publish_many(batch)
    broken = Description(with_module(704, "bad_rule", "package tds.provider.bad_rule\n"), "json")
    with pytest.raises(InvalidRequest, match=r"description 2 of 2: .*deny contains"):
        replica.publish_many([Description(json.dumps(product(705)), "json"), broken])
    own = {p.id for p in gov_catalog.own_products()}
    assert not own & {"item-701", "item-702", "item-703", "item-704", "item-705"}


def test_a_replica_decides_under_the_modules_another_replica_published(
    world: LocalSpace,
) -> None:
    """Issue 21 (replicas): a product module published or replaced through one replica is
    in force on another as soon as that one reads the product for a decision; before, it
    was refused there (``provider_policy_missing``) or, replaced, decided under the old
    version until a restart."""
    first_engine, second_engine = CountingEngine(load_library()), CountingEngine(load_library())
    first, second = twin(world, first_engine), twin(world, second_engine)
    first.publish(with_module(611, "replica_rule"), fmt="json")
    assert second_engine.revision != first_engine.revision
    second.published("item-611", "o")
    assert second_engine.revision == first_engine.revision
    stricter = MODULE.format(name="replica_rule").replace("now_ns < 0", "now_ns > 0")
    first.publish(with_module(611, "replica_rule", stricter), fmt="json", replace=True)
    assert second_engine.revision != first_engine.revision
    second.own("item-611")
    assert second_engine.revision == first_engine.revision
    taken = second_engine.updates
    second.own("item-611")  # nothing new: no reload
    second.published("item-612", "o")  # no such product: nothing to take in
    assert second_engine.updates == taken


def _decisions_watched(
    world: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> tuple[Catalog, list[type]]:
    """gov's catalog with nothing read ahead, and the type of each page decision's
    ``resources`` as the engine gets them (``Prepared``: made ahead; ``list``: made now)."""
    node = world.nodes["gov"]
    assert node.catalog is not None and node.policy is not None
    gov, engine = node.catalog, node.policy.engine
    gov._ahead.close()  # nothing left from other tests
    decided: list[type] = []
    decide = engine.decide
    monkeypatch.setattr(
        engine, "decide", lambda d: decided.append(type(d["resources"])) or decide(d)
    )
    return gov, decided


def test_a_page_read_ahead_is_decided_as_stored_when_asked(
    world: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller following pages has the next page read ahead while the current one is
    decided; a product changed in between is decided as stored when its page is asked for
    (the read-ahead resources are not used), and an unchanged page uses them."""
    gov, decided = _decisions_watched(world, monkeypatch)
    stub = catalog(world, "a")

    def page(token: str) -> catalog_pb2.ListProductsResponse:
        request = catalog_pb2.ListProductsRequest(page_size=10, page_token=token)
        return stub.ListProducts(request, timeout=10)

    def read_ahead() -> None:
        ((_, waiting),) = gov._ahead._waiting.values()
        waiting.result(timeout=10)

    second = page(page("").next_page_token)  # followed with a token: the third read ahead
    read_ahead()
    publish(world, json.dumps(product(22, access={"allow_list": ["b"]})), "json", replace=True)
    try:
        before = log_size(world)
        third = page(second.next_page_token)
        (entry,) = decisions(world, before)
        assert "item-022" in entry["products"] and "item-022" not in entry["visible_ids"]
        shown = [p.id for p in third.products]
        assert shown == [f"item-{i:03d}" for i in range(20, 30) if i % 7 and i != 22]
        assert decided[-1] is list  # made again from what was read when asked
        read_ahead()
        page(third.next_page_token)
        assert decided[-1] is Prepared  # nothing changed: the resources read ahead
    finally:
        publish(world, json.dumps(product(22)), "json", replace=True)


def test_a_caller_asking_for_every_page_has_the_second_read_ahead_at_the_largest_size(
    world: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``all_pages`` (``tds catalog list``): the page after the first is read ahead at the
    provider's largest size while the first is decided, and the request for it uses what
    was read (the same products, decided by that request); a first page asked without the
    hint reads nothing ahead."""
    gov, decided = _decisions_watched(world, monkeypatch)
    stub = catalog(world, "a")
    stub.ListProducts(catalog_pb2.ListProductsRequest(page_size=10), timeout=10)
    assert not gov._ahead._waiting  # no hint, no token: nothing read ahead

    first = stub.ListProducts(
        catalog_pb2.ListProductsRequest(page_size=10, all_pages=True), timeout=10
    )
    ((key, (_, waiting)),) = gov._ahead._waiting.items()
    waiting.result(timeout=10)
    assert key[-1] == first.max_page_size == gov.max_page_size
    second = stub.ListProducts(
        catalog_pb2.ListProductsRequest(
            page_size=first.max_page_size, page_token=first.next_page_token, all_pages=True
        ),
        timeout=10,
    )
    assert decided[-1] is Prepared  # decided with the resources read ahead
    plain = stub.ListProducts(
        catalog_pb2.ListProductsRequest(
            page_size=first.max_page_size, page_token=first.next_page_token
        ),
        timeout=10,
    )
    assert decided[-1] is list
    assert [p.id for p in second.products] == [p.id for p in plain.products]
    assert second.products  # a page of products, the same either way
