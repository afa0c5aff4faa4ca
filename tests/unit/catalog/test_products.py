"""Product descriptions: the example parses; everything malformed is refused by name."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from connector.catalog.products import MAX_DESCRIPTION_BYTES, parse_description
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
