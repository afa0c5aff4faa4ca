"""What an offer lets a consumer compute: its compute rules.

The rules appear in a product description's offer (TOML or JSON) as a table, for example::

    [offers.compute]
    k = 10
    max_groups = 500

    [offers.compute.dimensions.district]
    type = "text"
    values = ["north", "south", "east", "west"]

    [offers.compute.dimensions.year]
    type = "integer"

    [offers.compute.measures.cost]
    aggregates = ["count", "sum", "avg"]
    lower = 0
    upper = 50000

    [offers.compute.privacy]
    epsilon_per_query = 0.5
    epsilon_budget = 5.0
    delta = 1e-7

Every field is validated before anything is stored: unknown fields, wrong types, bounds that
are inverted, a measure that is also a dimension, differential privacy asked together with
an aggregate it cannot release are refused with the field named.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from connector.audit.canonical import canonical_json
from connector.errors import InvalidRequest

__all__ = [
    "AGGREGATES",
    "DIMENSION_TYPES",
    "ComputeRules",
    "Dimension",
    "Measure",
    "Privacy",
    "agreed_rules",
    "parse_rules",
]

AGGREGATES = ("count", "sum", "avg", "min", "max", "quantile")
"""Aggregates a measure may allow. ``count(*)`` is always allowed (it is what ``k`` counts)."""

DIMENSION_TYPES = ("text", "integer", "number")

_DP_AGGREGATES = frozenset({"count", "sum", "avg"})
"""Aggregates released with calibrated noise. min, max and quantiles of a group are values
of single rows; a DP release of them needs the rows themselves (exponential mechanism), not
an aggregate from the source, so a DP offer may not declare them."""

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
"""Lower-case SQL identifiers: unquoted in SQL they mean the same thing in every dialect."""
_RESERVED = frozenset({"product", "count", "sum", "avg", "min", "max", "quantile"})

MAX_DIMENSIONS = 32
MAX_MEASURES = 32
MAX_VALUES = 1000
MAX_K = 1_000_000
MAX_GROUPS_LIMIT = 100_000


@dataclass(frozen=True)
class Dimension:
    """A column a query may group or filter by."""

    name: str
    type: str
    """``text``, ``integer`` or ``number``: the type of literals a filter may compare with."""
    values: tuple[str | int | float, ...] | None = None
    """If set, the only values a filter may name (``None``: any value of the type)."""


@dataclass(frozen=True)
class Measure:
    """A column a query may aggregate, never see."""

    name: str
    aggregates: tuple[str, ...]
    lower: float
    """Clamping bound: every value is raised to at least this before aggregating."""
    upper: float
    """Clamping bound: every value is lowered to at most this before aggregating."""
    quantiles: tuple[float, ...] = ()
    """Quantile levels a query may ask for (required iff ``quantile`` is allowed)."""

    @property
    def sensitivity(self) -> float:
        """How much one row can move this measure's clamped sum."""
        return max(abs(self.lower), abs(self.upper))


@dataclass(frozen=True)
class Privacy:
    """Differential privacy for every answer under the offer."""

    epsilon_per_query: float
    """ε one query spends (split between the noisy statistics it releases)."""
    epsilon_budget: float
    """ε one agreement may spend in total."""
    delta: float
    """δ of each query: the chance that a group too small to show passes the noisy
    threshold (the group keys come from the data, so their release needs a δ)."""


@dataclass(frozen=True)
class ComputeRules:
    """An offer's compute rules, validated."""

    dimensions: tuple[Dimension, ...]
    measures: tuple[Measure, ...]
    k: int
    """Minimum contributing rows of any group shown, and of the query's whole population."""
    max_groups: int = 1000
    """Most groups one answer may hold (a larger answer is refused, not truncated)."""
    privacy: Privacy | None = None

    def dimension(self, name: str) -> Dimension | None:
        """The declared dimension called ``name``, if any."""
        for d in self.dimensions:
            if d.name == name:
                return d
        return None

    def measure(self, name: str) -> Measure | None:
        """The declared measure called ``name``, if any."""
        for m in self.measures:
            if m.name == name:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        """The rules as a plain mapping, in the shape ``parse_rules`` reads."""
        out: dict[str, Any] = {
            "k": self.k,
            "max_groups": self.max_groups,
            "dimensions": {
                d.name: {"type": d.type}
                | ({"values": list(d.values)} if d.values is not None else {})
                for d in self.dimensions
            },
            "measures": {
                m.name: {
                    "aggregates": list(m.aggregates),
                    "lower": m.lower,
                    "upper": m.upper,
                }
                | ({"quantiles": list(m.quantiles)} if m.quantiles else {})
                for m in self.measures
            },
        }
        if self.privacy is not None:
            out["privacy"] = {
                "epsilon_per_query": self.privacy.epsilon_per_query,
                "epsilon_budget": self.privacy.epsilon_budget,
                "delta": self.privacy.delta,
            }
        return out

    def sha256(self) -> str:
        """Hex SHA-256 of the rules' canonical JSON (RFC 8785): the rules in force."""
        return self._sha256

    @cached_property
    def _sha256(self) -> str:
        # Made once per rules object: every receipt names it, on both sides.
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where} must be a table")
    return value


def _only(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InvalidRequest(f"{where}.{unknown[0]} is not a known field")


def _int(d: Mapping[str, Any], key: str, where: str, lo: int, hi: int, default: int | None) -> int:
    if key not in d:
        if default is None:
            raise InvalidRequest(f"{where}.{key} is required")
        return default
    v = d[key]
    if type(v) is not int or not lo <= v <= hi:
        raise InvalidRequest(f"{where}.{key} must be an integer from {lo} to {hi}")
    return v


def _number(d: Mapping[str, Any], key: str, where: str) -> float:
    if key not in d:
        raise InvalidRequest(f"{where}.{key} is required")
    v = d[key]
    if type(v) not in (int, float) or not math.isfinite(v) or abs(v) > 1e15:
        raise InvalidRequest(f"{where}.{key} must be a finite number (|x| <= 1e15)")
    return float(v)


def _name(name: Any, where: str) -> str:
    if (
        not isinstance(name, str)
        or not _NAME.match(name)
        or name in _RESERVED
        or name.startswith("tds_")  # the engine's own column aliases
    ):
        raise InvalidRequest(
            f"{where}: {name!r} is not a usable column name (lower-case letters, digits and _,"
            f" starting with a letter or _, at most 63 characters, not starting with tds_,"
            f" not one of"
            f" {', '.join(sorted(_RESERVED))})"
        )
    return name


def _literal(v: Any, type_: str, where: str) -> str | int | float:
    if type_ == "text" and isinstance(v, str) and "\x00" not in v and len(v) <= 256:
        return v
    if type_ == "integer" and type(v) is int and abs(v) <= 2**53 - 1:
        return v
    if type_ == "number" and type(v) in (int, float) and math.isfinite(v):
        return float(v)
    raise InvalidRequest(f"{where} must be a {type_} value")


def _dimension(name: str, spec: Any, where: str) -> Dimension:
    d = _table(spec, where)
    _only(d, {"type", "values"}, where)
    type_ = d.get("type")
    if type_ not in DIMENSION_TYPES:
        raise InvalidRequest(f"{where}.type must be one of {', '.join(DIMENSION_TYPES)}")
    values: tuple[str | int | float, ...] | None = None
    if "values" in d:
        raw = d["values"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_VALUES:
            raise InvalidRequest(f"{where}.values must be a list of 1 to {MAX_VALUES} values")
        values = tuple(_literal(v, type_, f"{where}.values[{i}]") for i, v in enumerate(raw))
        if len(set(values)) != len(values):
            raise InvalidRequest(f"{where}.values has a value twice")
    return Dimension(name=name, type=type_, values=values)


def _measure(name: str, spec: Any, where: str) -> Measure:
    d = _table(spec, where)
    _only(d, {"aggregates", "lower", "upper", "quantiles"}, where)
    aggs = d.get("aggregates")
    if not isinstance(aggs, list) or not aggs:
        raise InvalidRequest(f"{where}.aggregates must be a non-empty list of {AGGREGATES}")
    for a in aggs:
        if a not in AGGREGATES:
            raise InvalidRequest(f"{where}.aggregates: {a!r} is not one of {', '.join(AGGREGATES)}")
    if len(set(aggs)) != len(aggs):
        raise InvalidRequest(f"{where}.aggregates names an aggregate twice")
    lower = _number(d, "lower", where)
    upper = _number(d, "upper", where)
    if not lower < upper:
        raise InvalidRequest(f"{where}: lower must be less than upper")
    quantiles: tuple[float, ...] = ()
    if "quantile" in aggs:
        raw = d.get("quantiles")
        if not isinstance(raw, list) or not raw:
            raise InvalidRequest(f"{where}.quantiles is required when quantile is allowed")
        for i, q in enumerate(raw):
            if type(q) not in (int, float) or not 0 < q < 1:
                raise InvalidRequest(f"{where}.quantiles[{i}] must be a number between 0 and 1")
        quantiles = tuple(sorted({float(q) for q in raw}))
    elif "quantiles" in d:
        raise InvalidRequest(f"{where}.quantiles is set but quantile is not an allowed aggregate")
    return Measure(
        name=name,
        aggregates=tuple(a for a in AGGREGATES if a in aggs),
        lower=lower,
        upper=upper,
        quantiles=quantiles,
    )


def _privacy(spec: Any, where: str) -> Privacy:
    d = _table(spec, where)
    _only(d, {"epsilon_per_query", "epsilon_budget", "delta"}, where)
    eps = _number(d, "epsilon_per_query", where)
    budget = _number(d, "epsilon_budget", where)
    delta = _number(d, "delta", where)
    if not 0 < eps <= 10:
        raise InvalidRequest(f"{where}.epsilon_per_query must be > 0 and <= 10")
    if not eps <= budget <= 1000:
        raise InvalidRequest(f"{where}.epsilon_budget must be >= epsilon_per_query and <= 1000")
    if not 0 < delta <= 1e-3:
        raise InvalidRequest(f"{where}.delta must be > 0 and <= 0.001")
    return Privacy(epsilon_per_query=eps, epsilon_budget=budget, delta=delta)


def parse_rules(spec: Any, where: str = "compute") -> ComputeRules:
    """Validate an offer's ``compute`` table; ``InvalidRequest`` names the first bad field."""
    d = _table(spec, where)
    _only(d, {"dimensions", "measures", "k", "max_groups", "privacy"}, where)
    k = _int(d, "k", where, 2, MAX_K, None)
    max_groups = _int(d, "max_groups", where, 1, MAX_GROUPS_LIMIT, 1000)
    dims_spec = _table(d.get("dimensions", {}), f"{where}.dimensions")
    meas_spec = _table(d.get("measures", {}), f"{where}.measures")
    if len(dims_spec) > MAX_DIMENSIONS or len(meas_spec) > MAX_MEASURES:
        raise InvalidRequest(
            f"{where}: at most {MAX_DIMENSIONS} dimensions and {MAX_MEASURES} measures"
        )
    dims = tuple(
        _dimension(_name(n, f"{where}.dimensions"), s, f"{where}.dimensions.{n}")
        for n, s in sorted(dims_spec.items())
    )
    measures = tuple(
        _measure(_name(n, f"{where}.measures"), s, f"{where}.measures.{n}")
        for n, s in sorted(meas_spec.items())
    )
    both = sorted(set(dims_spec) & set(meas_spec))
    if both:
        raise InvalidRequest(f"{where}: {both[0]} is both a dimension and a measure")
    privacy = _privacy(d["privacy"], f"{where}.privacy") if "privacy" in d else None
    if privacy is not None:
        for m in measures:
            extra = sorted(set(m.aggregates) - _DP_AGGREGATES)
            if extra:
                raise InvalidRequest(
                    f"{where}.measures.{m.name}.aggregates: {extra[0]} cannot be released with"
                    " differential privacy here (only count, sum and avg); drop it or the"
                    " privacy table"
                )
    return ComputeRules(
        dimensions=dims, measures=measures, k=k, max_groups=max_groups, privacy=privacy
    )


def agreed_rules(spec: Any) -> ComputeRules:
    """``parse_rules`` of an agreement's compute table, validated once per process.

    The table is part of a signed agreement and never changes, and both parties check every
    question under it against it: the validated rules (and their hash, made once) are kept,
    keyed by the table's JSON text, so an equal table gives the same ``ComputeRules`` and any
    other table is parsed anew. A table that is not JSON is parsed as it is (and refused).
    """
    try:
        key = json.dumps(spec, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return parse_rules(spec)
    return _agreed(key)


@lru_cache(maxsize=256)
def _agreed(key: str) -> ComputeRules:
    return parse_rules(json.loads(key))
