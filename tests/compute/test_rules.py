"""An offer's compute rules: every field validated, errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from connector.compute.rules import parse_rules
from connector.errors import InvalidRequest
from tests.compute.conftest import PRIVACY, hospital, hospital_dp


def test_parses_the_hospital_rules() -> None:
    rules = parse_rules(hospital())
    assert rules.k == 5 and rules.max_groups == 100 and rules.privacy is None
    assert [d.name for d in rules.dimensions] == ["age_band", "district", "year"]
    age = rules.dimension("age_band")
    assert age is not None and age.values == ("0-17", "18-64", "65+")
    cost = rules.measure("cost")
    assert cost is not None and cost.quantiles == (0.5, 0.9) and cost.sensitivity == 10000
    assert rules.dimension("cost") is None and rules.measure("district") is None


def test_round_trips_and_hash_is_stable_and_sensitive() -> None:
    rules = parse_rules(hospital_dp())
    assert parse_rules(rules.to_dict()) == rules
    assert rules.sha256() == parse_rules(hospital_dp()).sha256()
    assert rules.sha256() != parse_rules(hospital_dp() | {"k": 6}).sha256()
    assert rules.privacy is not None and rules.privacy.epsilon_budget == 3.0


def _measure(**m: Any) -> dict[str, Any]:
    return hospital(measures={"cost": {"aggregates": ["sum"], "lower": 0, "upper": 1} | m})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ([], "compute must be a table"),
        (hospital(extra=1), "compute.extra is not a known field"),
        ({k: v for k, v in hospital().items() if k != "k"}, "compute.k is required"),
        (hospital(k=1), "compute.k must be an integer"),
        (hospital(k=True), "compute.k must be an integer"),
        (hospital(max_groups=0), "compute.max_groups must be an integer"),
        (hospital(dimensions={"Bad Name": {"type": "text"}}), "compute.dimensions: 'Bad Name'"),
        (hospital(dimensions={"product": {"type": "text"}}), "compute.dimensions: 'product'"),
        (hospital(dimensions={"tds_n": {"type": "text"}}), "compute.dimensions: 'tds_n'"),
        (hospital(dimensions={"d": {"type": "date"}}), "compute.dimensions.d.type must be"),
        (hospital(dimensions={"d": {"type": "text", "x": 1}}), "compute.dimensions.d.x is not"),
        (hospital(dimensions={"d": {"type": "integer", "values": ["a"]}}), "d.values[0] must"),
        (hospital(dimensions={"d": {"type": "text", "values": []}}), "compute.dimensions.d.values"),
        (hospital(dimensions={"d": {"type": "text", "values": ["a", "a"]}}), "value twice"),
        (_measure(aggregates=["median"]), "compute.measures.cost.aggregates: 'median'"),
        (_measure(aggregates=[]), "compute.measures.cost.aggregates must be"),
        (_measure(aggregates=["sum", "sum"]), "aggregate twice"),
        (_measure(lower=5, upper=5), "compute.measures.cost: lower must be less than upper"),
        (_measure(lower=float("nan")), "compute.measures.cost.lower must be a finite"),
        (_measure(upper="9"), "compute.measures.cost.upper must be a finite"),
        (_measure(aggregates=["quantile"]), "compute.measures.cost.quantiles is required"),
        (_measure(aggregates=["quantile"], quantiles=[1.0]), "cost.quantiles[0] must be"),
        (_measure(quantiles=[0.5]), "quantile is not an allowed aggregate"),
        (
            hospital(measures={"district": {"aggregates": ["sum"], "lower": 0, "upper": 1}}),
            "compute: district is both a dimension and a measure",
        ),
        (hospital(privacy=PRIVACY), "compute.measures.cost.aggregates: max cannot be released"),
        (hospital_dp() | {"privacy": PRIVACY | {"delta": 0}}, "compute.privacy.delta must be"),
        (
            hospital_dp() | {"privacy": PRIVACY | {"epsilon_per_query": 0}},
            "compute.privacy.epsilon_per_query must be",
        ),
        (
            hospital_dp() | {"privacy": PRIVACY | {"epsilon_budget": 0.5}},
            "compute.privacy.epsilon_budget must be",
        ),
        (
            hospital_dp() | {"privacy": {"epsilon_per_query": 1, "epsilon_budget": 2}},
            "compute.privacy.delta is required",
        ),
    ],
)
def test_refuses_bad_rules_naming_the_field(spec: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_rules(spec)
    assert field in str(err.value)
