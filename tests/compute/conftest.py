"""Shared compute rules for the compute tests: hospital admissions, as in the city scenario."""

from __future__ import annotations

import copy
from typing import Any

import pytest

HOSPITAL: dict[str, Any] = {
    "k": 5,
    "max_groups": 100,
    "dimensions": {
        "district": {"type": "text"},
        "age_band": {"type": "text", "values": ["0-17", "18-64", "65+"]},
        "year": {"type": "integer"},
    },
    "measures": {
        "cost": {
            "aggregates": ["count", "sum", "avg", "min", "max", "quantile"],
            "lower": 0,
            "upper": 10000,
            "quantiles": [0.5, 0.9],
        },
        "days": {"aggregates": ["sum", "avg"], "lower": 0, "upper": 60},
    },
}

PRIVACY: dict[str, Any] = {"epsilon_per_query": 1.0, "epsilon_budget": 3.0, "delta": 1e-6}


def hospital(**changes: Any) -> dict[str, Any]:
    """A deep copy of the hospital rules with top-level fields replaced."""
    spec = copy.deepcopy(HOSPITAL)
    spec.update(changes)
    return spec


def hospital_dp() -> dict[str, Any]:
    """The hospital rules with differential privacy (count, sum, avg only)."""
    spec = hospital(privacy=dict(PRIVACY))
    spec["measures"]["cost"] = {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 10000}
    return spec


@pytest.fixture
def rules_spec() -> dict[str, Any]:
    """The hospital rules without differential privacy."""
    return hospital()
