"""Product descriptions: the example parses; everything malformed is refused by name."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from connector.catalog import products
from connector.catalog.products import (
    MAX_DESCRIPTION_BYTES,
    PeriodLimits,
    Product,
    Source,
    parse_description,
)
from connector.errors import InvalidRequest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "products" / "traffic-flow.toml"


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


def test_example_parses_as_toml_and_json() -> None:
    product = parse_description(EXAMPLE.read_text(), owner="city-gov")
    assert product.owner == "city-gov" and product.grade == "important"
    assert product.offer("planning-2026").max_transfers == 12
    again = parse_description(json.dumps(example()), owner="city-gov")
    assert again == product
    assert product.resource()["registration_code"] == "SH-PD-2026-000123"


def mutate(**changes: Any) -> str:
    data = example()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text, message",
    [
        (mutate(grade="core"), "core data"),
        (mutate(grade="secret"), "product.grade"),
        (mutate(id="Traffic Flow"), "product.id"),
        (mutate(title=None), "product.title is required"),
        (mutate(colour="red"), "unknown field product.colour"),
        (mutate(offers=[]), "at least one offer"),
        (mutate(source={"kind": "table", "path": "x"}), "table source"),
        (mutate(owner="ent-a"), "product.owner"),
        (mutate(personal="yes"), "product.personal"),
        ("{not json", "not valid JSON"),
        ("id = ", "not valid TOML"),
    ],
)
def test_bad_descriptions_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_description(text, owner="city-gov")


@pytest.mark.parametrize(
    "offer, message",
    [
        ({"purposes": []}, "at least one purpose"),
        ({"valid_until_ns": 1}, "after valid_from_ns"),
        ({"max_transfers": -1}, "non-negative"),
        ({"policy_module": "mine"}, "go together"),
        ({"id": "planning-2026", "extra": 1}, "unknown field"),
    ],
)
def test_bad_offers_are_refused(offer: dict[str, Any], message: str) -> None:
    data = example()
    data["offers"][0].update(offer)
    with pytest.raises(InvalidRequest, match=message):
        parse_description(json.dumps(data), owner="city-gov")


def test_oversized_description_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="larger than"):
        parse_description("x" * (MAX_DESCRIPTION_BYTES + 1), owner="city-gov")


RULES = {
    "k": 10,
    "dimensions": {"road": {"type": "text"}},
    "measures": {"speed": {"aggregates": ["count", "avg"], "lower": 0, "upper": 200}},
}


def compute_offer(**changes: Any) -> str:
    data = example()
    offer = {**data["offers"][0], "delivery": ["compute"], "compute": RULES}
    offer.pop("permitted_fields", None)
    offer.pop("masks", None)
    for key, value in changes.items():
        if value is None:
            offer.pop(key, None)
        else:
            offer[key] = value
    data["offers"] = [offer]
    return json.dumps(data)


def test_a_compute_only_offer_parses_and_round_trips() -> None:
    product = parse_description(compute_offer(), owner="city-gov")
    offer = product.offers[0]
    assert offer.delivery == ("compute",)
    assert offer.compute is not None and offer.compute.k == 10
    # important data: a compute-only offer needs no field list (only answers leave)
    assert product.grade == "important" and offer.permitted_fields is None
    assert type(product).from_json(product.to_json()) == product


def test_offers_default_to_copy() -> None:
    product = parse_description(EXAMPLE.read_text(), owner="city-gov")
    assert all(o.delivery == ("copy",) and o.compute is None for o in product.offers)


@pytest.mark.parametrize(
    "text, message",
    [
        (compute_offer(compute=None), r"compute is required when delivery includes 'compute'"),
        (compute_offer(delivery=["copy"]), "delivery does not include 'compute'"),
        (compute_offer(delivery=["mail"]), "delivery must list"),
        (compute_offer(delivery=[]), "delivery must list"),
        (compute_offer(delivery=["compute", "compute"]), "delivery must list"),
        (
            compute_offer(compute={**RULES, "dimensions": {"plate_no": {"type": "text"}}}),
            "'plate_no' is not a product field",
        ),
        (compute_offer(compute={**RULES, "k": 1}), r"compute.k must be"),
        # copy besides compute: important data needs its field list again
        (compute_offer(delivery=["copy", "compute"]), "permitted_fields is required"),
    ],
)
def test_bad_delivery_terms_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_description(text, owner="city-gov")


SQL = {"kind": "sql", "connection": "traffic", "query": "SELECT a FROM t", "format": "csv"}


def test_an_sql_source_names_a_connection_and_a_query() -> None:
    product = parse_description(mutate(source=SQL), owner="city-gov")
    assert (product.source.kind, product.source.connection, product.source.query) == (
        "sql",
        "traffic",
        "SELECT a FROM t",
    )
    assert product.source.path == ""
    # The stored form reads back to the same product.
    assert Product.from_json(product.to_json()) == product


@pytest.mark.parametrize(
    "source, message",
    [
        ({**SQL, "connection": ""}, "an sql source needs source.connection"),
        ({k: v for k, v in SQL.items() if k != "query"}, "product.source.query is required"),
        ({**SQL, "query": ""}, "an sql source needs source.connection"),
        ({**SQL, "path": "x.csv"}, "source.path does not apply to an sql source"),
        ({**SQL, "format": "parquet"}, "a sql source needs format"),
        ({**SQL, "url": "postgresql://u:p@h/db"}, "unknown field product.source.url"),
        ({"kind": "file", "path": "x", "query": "SELECT 1"}, "query applies to sql and stream"),
        ({"kind": "table", "path": "x", "format": "csv", "connection": "c"}, "sql and stream"),
        ({"kind": "kafka", "path": "x"}, "kind must be one of file, table, sql, stream"),
        ({**SQL, "subject": "rain"}, "source.subject applies to stream sources only"),
    ],
)
def test_bad_sql_sources_are_refused(source: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_description(mutate(source=source), owner="city-gov")


def test_the_listing_form_of_an_sql_product_has_no_connection_or_query() -> None:
    """What the registry receives (Catalog.register blanks them) still parses there."""
    product = parse_description(mutate(source=SQL), owner="city-gov")
    listed = dataclasses.replace(
        product, source=dataclasses.replace(product.source, connection="", query="")
    )
    assert Product.from_json(listed.to_json()).source == Source(kind="sql", format="csv")


STREAM = {"kind": "stream", "connection": "weather", "subject": "rain.gauges"}


def mutate_stream(source: dict[str, Any], fields: list[str], **offer: Any) -> str:
    """The example as a stream product of ``fields`` (its offer without field policy)."""
    base = {
        k: v for k, v in example()["offers"][0].items() if k not in ("permitted_fields", "masks")
    }
    return mutate(source=source, fields=fields, grade="general", offers=[{**base, **offer}])


def test_a_stream_source_names_a_connection_and_a_subject_or_topic() -> None:
    product = parse_description(
        mutate_stream(STREAM, ["station", "operator", "mm"]), owner="city-gov"
    )
    assert product.source == Source(
        kind="stream", format="jsonl", connection="weather", subject="rain.gauges"
    )
    assert Product.from_json(product.to_json()) == product
    mqtt = {"kind": "stream", "connection": "sensors", "topic": "city/air/+/pm25"}
    product = parse_description(mutate_stream(mqtt, ["pm25"]), owner="city-gov")
    assert (product.source.topic, product.source.subject) == ("city/air/+/pm25", "")


def test_a_stream_offer_may_deliver_by_push_and_only_a_stream_offer_with_copy() -> None:
    fields = ["station", "operator", "mm"]
    product = parse_description(
        mutate_stream(STREAM, fields, delivery=["push", "copy"]), owner="city-gov"
    )
    assert product.offers[0].delivery == ("copy", "push")
    assert Product.from_json(product.to_json()) == product
    with pytest.raises(InvalidRequest, match="'push' is how a copy is delivered"):
        parse_description(mutate_stream(STREAM, fields, delivery=["push"]), owner="city-gov")
    table = {"kind": "table", "path": "x.csv", "format": "csv"}
    with pytest.raises(InvalidRequest, match="'push' applies to stream products"):
        parse_description(mutate_stream(table, fields, delivery=["copy", "push"]), owner="city-gov")


def test_stream_offers_take_field_lists_and_masks() -> None:
    text = mutate_stream(
        STREAM,
        ["station", "operator", "mm"],
        permitted_fields=["station", "mm"],
        masks={"station": "hash"},
    )
    product = parse_description(text, owner="city-gov")
    assert product.offers[0].permitted_fields == ("station", "mm")


@pytest.mark.parametrize(
    "source, fields, message",
    [
        ({**STREAM, "connection": ""}, ["a"], "a stream source needs source.connection"),
        ({**STREAM, "subject": ""}, ["a"], "a stream source needs source.connection"),
        ({**STREAM, "topic": "a/b"}, ["a"], "a subject .* or a topic .*, not both"),
        ({**STREAM, "path": "x"}, ["a"], "source.path does not apply to a stream source"),
        ({**STREAM, "query": "SELECT 1"}, ["a"], "source.query does not apply to a stream"),
        ({**STREAM, "format": "csv"}, ["a"], "delivered as JSON Lines"),
        (STREAM, [], "a stream source needs the product's fields"),
        (STREAM, ["a", "a"], "each named once"),
        ({"kind": "table", "path": "x", "format": "csv", "topic": "t"}, ["a"], "stream sources"),
    ],
)
def test_bad_stream_sources_are_refused(
    source: dict[str, Any], fields: list[str], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_description(mutate_stream(source, fields), owner="city-gov")


def test_the_listing_form_of_a_stream_product_has_no_connection_or_subject() -> None:
    product = parse_description(mutate_stream(STREAM, ["a"]), owner="city-gov")
    listed = dataclasses.replace(
        product, source=dataclasses.replace(product.source, connection="", subject="")
    )
    assert Product.from_json(listed.to_json()).source == Source(kind="stream", format="jsonl")


def test_stream_offers_take_a_message_limit_and_limits_per_period() -> None:
    text = mutate_stream(
        STREAM,
        ["station", "mm"],
        max_messages=1000,
        per_period={"period": "hour", "max_messages": 100, "max_bytes": 20000},
    )
    product = parse_description(text, owner="city-gov")
    offer = product.offers[0]
    assert offer.max_messages == 1000
    assert offer.per_period == PeriodLimits("hour", 100, 20000)
    assert offer.per_period.seconds == 3600
    assert Product.from_json(product.to_json()) == product
    # The stored form read back without checks keeps the limits (they bound every stream
    # under the agreement: losing them on the way out of the store would lift them).
    assert Product.from_stored(product.to_json()) == product


def test_an_offer_without_stream_limits_is_stored_as_before() -> None:
    product = parse_description(mutate_stream(STREAM, ["a"]), owner="city-gov")
    stored = json.loads(product.to_json())["offers"][0]
    assert "max_messages" not in stored and "per_period" not in stored


@pytest.mark.parametrize(
    "terms, message",
    [
        ({"per_period": {"period": "week", "max_messages": 1}}, "period must be one of"),
        ({"per_period": {"period": "day"}}, "must set max_messages, max_bytes or both"),
        ({"per_period": {"period": "day", "max_messages": -1}}, "non-negative"),
        ({"per_period": {"period": "day", "max_messages": 1, "x": 1}}, "unknown field"),
        ({"per_period": "day"}, "per_period must be a table"),
        ({"max_messages": True}, "non-negative integer"),
    ],
)
def test_bad_stream_limits_are_refused(terms: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_description(mutate_stream(STREAM, ["a"], **terms), owner="city-gov")


@pytest.mark.parametrize(
    "terms", [{"max_messages": 5}, {"per_period": {"period": "day", "max_bytes": 5}}]
)
def test_stream_limits_on_a_product_that_is_not_a_stream_are_refused(
    terms: dict[str, Any],
) -> None:
    data = example()
    data["offers"][0].update(terms)
    with pytest.raises(InvalidRequest, match="limit streams"):
        parse_description(json.dumps(data), owner="city-gov")


def stored_forms() -> list[Product]:
    """Products of every form a connector stores: plain, a field list, masks, compute
    rules, a provider module, sql and stream sources, access rules."""
    plain = parse_description(EXAMPLE.read_text(), owner="city-gov")
    return [
        plain,
        dataclasses.replace(
            plain,
            grade="general",
            offers=tuple(dataclasses.replace(o, masks={}) for o in plain.offers),
        ),
        parse_description(compute_offer(), owner="city-gov"),
        parse_description(
            mutate_stream(
                STREAM, ["station", "mm"], permitted_fields=["mm"], masks={"station": "hash"}
            ),
            owner="city-gov",
        ),
        parse_description(mutate_stream(STREAM, ["station", "mm"]), owner="city-gov"),
        parse_description(
            mutate(
                grade="general",
                source={
                    "kind": "sql",
                    "connection": "db",
                    "query": "SELECT a FROM t",
                    "format": "csv",
                },
                fields=["a"],
                offers=[
                    {"id": "o", "purposes": ["research"], "valid_from_ns": 1, "valid_until_ns": 2}
                ],
                access={"roles": ["enterprise"], "allow_list": ["ent-a"], "attrs": {"k": "v"}},
            ),
            owner="city-gov",
        ),
    ]


@pytest.mark.parametrize("product", stored_forms(), ids=lambda p: p.id)
def test_a_stored_product_reads_back_as_the_checking_parser_reads_it(product: Product) -> None:
    stored = product.to_json()
    assert Product.from_stored(stored) == Product.from_json(stored) == product
    if not any(o.masks or o.compute for o in product.offers):  # built directly, unchecked
        assert products._stored_product(json.loads(stored)) == product


def test_a_stored_form_it_does_not_build_goes_through_the_checks() -> None:
    """An older form (no delivery), an unknown field or a wrong type: read as from_json
    reads it, defaults filled in or refused by name, never built half-checked."""
    product = parse_description(EXAMPLE.read_text(), owner="city-gov")
    older = json.loads(product.to_json())
    for offer in older["offers"]:
        del offer["delivery"]
    assert Product.from_stored(json.dumps(older)) == product
    unknown = {**json.loads(product.to_json()), "colour": "red"}
    with pytest.raises(InvalidRequest, match=r"unknown field product\.colour"):
        Product.from_stored(json.dumps(unknown))
    mistyped = json.loads(product.to_json())
    mistyped["source"] = "file"
    with pytest.raises(InvalidRequest, match=r"product\.source is required"):
        Product.from_stored(json.dumps(mistyped))
