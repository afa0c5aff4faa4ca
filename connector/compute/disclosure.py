"""Disclosure control: what of the exact group figures may leave the provider.

Without differential privacy (``rules.privacy is None``):

- a group with fewer than ``k`` contributing rows is suppressed; the answer says how many
  groups were, not which;
- before the query runs, ``check_isolation`` refuses a filter on a dimension whose values
  split off fewer than ``k`` rows: for every filter, the rows matching all *other*
  filters are grouped by the query's dimensions and split by the filtered dimension's
  values; a cell of 1 to ``k - 1`` rows whose group has at least ``k`` rows besides it
  could be read as the difference of two shown answers (``district = 'east'`` and
  ``district = 'east' AND age_band != '65+'``), so the query is refused. Answers that
  differ in one filter then differ by 0 or at least ``k`` rows, never by one person.

With differential privacy (``rules.privacy``): every released figure is noisy, from
OpenDP's measurements; the query's ε is split between its releases by basic composition
(``_releases``: ε per query over ``1 + max(1, c) + s`` equal shares, for ``c`` counts of
measures and ``s`` other statistics), and δ goes to releasing the group keys:

- group counts and the set of groups shown come from ``make_laplace_threshold`` (noisy
  counts, groups below the threshold dropped; one share): the threshold is at least ``k``
  and high enough that a group of one row shows with probability at most δ; suppression
  is decided on the *noisy* count, so whether a group shows is itself private;
- the number of suppressed groups and the counts of non-NULL values of every measure
  counted are one vector of integers through one ``make_laplace`` (``max(1, c)`` shares,
  the vector's L1 sensitivity ``max(1, c)``, so each figure gets the noise a release of
  its own at one share would: scale ``1 / share``). Given the groups shown (the
  threshold's output, composed adaptively), one row either belongs to a group not shown
  — it moves the suppressed count by at most one and no count — or to a shown group,
  where it moves each of the ``c`` counts by at most one and the suppressed count not at
  all: so the suppressed count rides with the counts at no ε of its own when a question
  counts a measure (an ``avg`` does), and takes one share when none does;
- sums of clamped measures (and min, max, quantiles) come from one ``make_laplace`` each
  (one share), with the sensitivity of one row (``max(|lower|, |upper|)``) and OpenDP's
  float noise on a grid of ``2^k`` (``_granularity``: about 2^-40 of the noise's scale,
  which the privacy map accounts for; the finest grid OpenDP defaults to made each
  release of float noise cost about 1 ms more for nothing a cent-rounded answer shows);
  ``avg`` is the noisy sum over the noisy count, clamped to the bounds (post-processing).

The unit of privacy is one row of the source: a person with several rows (admissions) is
protected as several rows, so ``k`` and ε protect them less. Residual risks without DP:
an answer grouped by more dimensions can be subtracted from a coarser one to recover a
suppressed group, and many overlapping queries can be combined (linear reconstruction);
only differential privacy with a finite budget bounds those — offer it for personal data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import opendp.prelude as dp

from connector.audit.canonical import canonical_json
from connector.compute.engine import (
    Cube,
    Executor,
    Group,
    Statistic,
    isolating_groups,
    statistics,
)
from connector.compute.query import Aggregate, Query, Value
from connector.compute.rules import ComputeRules, Measure
from connector.errors import PermissionDenied

__all__ = ["Disclosed", "check_isolation", "disclose"]

# OpenDP puts its measurements behind the "contrib" feature flag until their proofs are
# vetted; the two used here (make_laplace, make_laplace_threshold) have proof documents
# and are the library's standard Laplace mechanisms, and using them is what keeps noise
# generation out of this code base (no home-made sampler).
dp.enable_features("contrib")


@dataclass(frozen=True)
class Disclosed:
    """What leaves: the answer's rows and what producing them cost."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value | None, ...], ...]
    suppressed: int
    """Groups not shown (noisy under differential privacy)."""
    epsilon: float
    """ε spent by this answer (0 without differential privacy)."""
    delta: float


def check_isolation(query: Query, rules: ComputeRules, executor: Executor) -> None:
    """Refuse a filter that singles out fewer than ``k`` rows (no-DP offers only).

    One counting statement on the source for all the filters (one scan).
    ``PermissionDenied`` names the first such filter; nothing else is revealed (not which
    cell, not its size).
    """
    if rules.privacy is not None or not query.filters:
        return  # noise bounds differencing; an exact-count refusal would itself leak
    # The cube of the rules holds the rows' counts by every dimension a filter can name.
    cube = executor.cube(Cube.of(rules))
    counts = isolating_groups(query.dimensions, query.filters, executor, k=rules.k, cube=cube)
    for f, isolated in zip(query.filters, counts, strict=True):
        if isolated:
            raise PermissionDenied(
                f"query refused: the filter on {f.dimension} separates fewer than"
                f" {rules.k} rows from the rest (it could single out individuals); widen it"
                " or drop it"
            )


def disclose(query: Query, rules: ComputeRules, groups: Sequence[Group]) -> Disclosed:
    """Apply suppression (and noise, if the offer asks) to the exact ``groups``."""
    if rules.privacy is None:
        return _exact(query, rules, groups)
    return _private(query, rules, groups)


def _measure(rules: ComputeRules, name: str) -> Measure:
    m = rules.measure(name)
    assert m is not None  # the Query was checked against the rules
    return m


def _cell(a: Aggregate, n: int, values: dict[str, Any], rules: ComputeRules) -> Value | None:
    if a.measure is None:
        return n
    if a.fn == "avg":
        total, count = values[f"sum({a.measure})"], values[f"count({a.measure})"]
        if total is None or not count or count <= 0:
            return None
        m = _measure(rules, a.measure)
        avg: float = min(max(total / count, m.lower), m.upper)  # noise can leave the bounds
        return avg
    v = values[Statistic(a.fn, a.measure, a.q).key]
    if a.fn == "count":
        return None if v is None else int(v)
    return v  # type: ignore[no-any-return]


def _exact(query: Query, rules: ComputeRules, groups: Sequence[Group]) -> Disclosed:
    shown = [g for g in groups if g.n >= rules.k]
    rows = tuple(
        g.key + tuple(_cell(a, g.n, g.values, rules) for a in query.aggregates) for g in shown
    )
    return Disclosed(
        columns=query.columns,
        rows=rows,
        suppressed=len(groups) - len(shown),
        epsilon=0.0,
        delta=0.0,
    )


# -- differential privacy (OpenDP) ----------------------------------------------------------

_KEYS = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T=int))
_KEYS_METRIC = dp.l01inf_distance(dp.absolute_distance(T=int))
_ONE_ROW = (1, 1, 1)  # one row changes one group's count by one


def _privacy_map(m: Any, d_in: Any) -> Any:
    """The measurement's privacy loss for input distance ``d_in`` (OpenDP's map)."""
    return m.map(d_in)


@lru_cache(maxsize=64)
def _threshold(epsilon: float, delta: float, k: int) -> Any:
    """A noisy-count-and-threshold measurement spending at most (ε, δ) for one row."""
    scale = 1.0 / epsilon
    lo, hi = k, k
    while True:  # grow until δ holds, then bisect down to the smallest threshold
        m = dp.m.make_laplace_threshold(_KEYS, _KEYS_METRIC, scale=scale, threshold=hi)
        eps, d = _privacy_map(m, _ONE_ROW)
        if eps > epsilon:
            scale *= max(eps / epsilon, 1 + 1e-12)  # float rounding in the map: more noise
            continue
        if d <= delta:
            break
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        m = dp.m.make_laplace_threshold(_KEYS, _KEYS_METRIC, scale=scale, threshold=mid)
        if _privacy_map(m, _ONE_ROW)[1] <= delta:
            hi = mid
        else:
            lo = mid + 1
    m = dp.m.make_laplace_threshold(_KEYS, _KEYS_METRIC, scale=scale, threshold=hi)
    eps, d = _privacy_map(m, _ONE_ROW)
    assert eps <= epsilon and d <= delta
    return m


def _granularity(scale: float) -> int:
    """``k`` of OpenDP's float noise (a grid of 2^k): about 2^-40 of ``scale``."""
    return math.floor(math.log2(scale)) - 40


@lru_cache(maxsize=256)
def _laplace(epsilon: float, sensitivity: float, integer: bool, n: int) -> Any:
    """Laplace noise on a vector of ``n`` figures, one row moving them by at most
    ``sensitivity`` in L1; spends at most ε (OpenDP's privacy map says so)."""
    t = int if integer else float
    atom = dp.atom_domain(T=t) if integer else dp.atom_domain(T=float, nan=False)
    domain = dp.vector_domain(atom, size=n)
    scale = sensitivity / epsilon
    d_in = int(sensitivity) if integer else float(sensitivity)
    while True:
        k = None if integer else _granularity(scale)
        m = dp.m.make_laplace(domain, dp.l1_distance(T=t), scale=scale, k=k)
        spent = _privacy_map(m, d_in)
        if spent <= epsilon:
            return m
        # Float rounding, or the grid's, in the map: a hair more noise.
        scale *= max(spent / epsilon, 1 + 1e-12)


@dataclass(frozen=True)
class _Release:
    """One noisy release after the threshold: the figures it carries, and its measurement
    with the L1 distance one row moves them by (``d_in`` of its privacy map)."""

    stats: tuple[Statistic, ...]
    """The statistics whose per-group figures it carries (counts: after the suppressed
    count, which the counts' release carries first)."""
    measurement: Any
    d_in: int | float


def _shares(stats: Sequence[Statistic]) -> tuple[int, int]:
    """(counts of measures, other statistics) of a question."""
    counts = sum(s.fn == "count" for s in stats)
    return counts, len(stats) - counts


def _share(epsilon: float, stats: Sequence[Statistic]) -> float:
    """ε of one share: the threshold, ``max(1, c)`` for the counts and the suppressed
    count, one per other statistic."""
    c, s = _shares(stats)
    return epsilon / (1 + max(1, c) + s)


def _releases(
    epsilon: float, stats: Sequence[Statistic], rules: ComputeRules, shown: int
) -> tuple[_Release, ...]:
    """The releases after the threshold for ``shown`` groups; with the threshold's
    share their privacy maps add up to ``epsilon`` (tested)."""
    share = _share(epsilon, stats)
    counts = tuple(s for s in stats if s.fn == "count")
    width = max(1, len(counts))
    out = [
        _Release(
            counts,
            _laplace(share * width, float(width), True, 1 + len(counts) * shown),
            width,
        )
    ]
    if shown:
        for s in stats:
            if s.fn != "count":
                sens = _measure(rules, s.measure).sensitivity
                out.append(_Release((s,), _laplace(share, sens, False, shown), sens))
    return tuple(out)


def _counted(
    counts: Sequence[Statistic], groups: Sequence[Group], shown: Sequence[Group]
) -> list[int]:
    """The exact vector of the counts' release: the number of groups not shown, then each
    counted measure's figure group by group (one row moves it by at most
    ``max(1, len(counts))`` in L1, given the groups shown: tested)."""
    out = [len(groups) - len(shown)]
    for s in counts:
        out.extend(int(g.values[s.key] or 0) for g in shown)
    return out


def _private(query: Query, rules: ComputeRules, groups: Sequence[Group]) -> Disclosed:
    privacy = rules.privacy
    assert privacy is not None
    stats = statistics(query.aggregates)
    share = _share(privacy.epsilon_per_query, stats)
    by_key = {canonical_json(list(g.key)).decode(): g for g in groups}
    noisy_counts: dict[str, int] = _threshold(share, privacy.delta, rules.k)(
        {key: g.n for key, g in by_key.items()}
    )
    # Sort like the exact groups, so the same release prints the same way.
    released = [key for key in by_key if key in noisy_counts]
    shown = [by_key[key] for key in released]
    releases = _releases(privacy.epsilon_per_query, stats, rules, len(shown))
    values: dict[str, list[float]] = {s.key: [] for s in stats}
    noisy_suppressed = 0
    for r in releases:
        if r.stats and r.stats[0].fn != "count":
            (s,) = r.stats
            exact_float = [g.values[s.key] or 0.0 for g in shown]
            values[s.key] = list(r.measurement(exact_float))
            continue
        noisy = r.measurement(_counted(r.stats, groups, shown))
        noisy_suppressed = noisy[0]
        w = len(shown)
        for i, s in enumerate(r.stats):
            values[s.key] = [float(v) for v in noisy[1 + i * w : 1 + (i + 1) * w]]
    rows = []
    for i, g in enumerate(shown):
        cells = {k: v[i] for k, v in values.items()}
        n = max(0, int(noisy_counts[released[i]]))
        rows.append(g.key + tuple(_post(a, n, cells, rules) for a in query.aggregates))
    return Disclosed(
        columns=query.columns,
        rows=tuple(rows),
        suppressed=max(0, int(noisy_suppressed)),
        epsilon=privacy.epsilon_per_query,
        delta=privacy.delta,
    )


def _post(a: Aggregate, n: int, cells: dict[str, float], rules: ComputeRules) -> Value | None:
    """Post-processing of the noisy figures (free under differential privacy)."""
    if a.measure is not None and a.fn == "count":
        return max(0, round(cells[f"count({a.measure})"]))
    if a.measure is not None and a.fn == "sum":
        m = _measure(rules, a.measure)
        # A sum of non-negative clamped values is non-negative; round to a cent.
        total = cells[f"sum({a.measure})"]
        return round(max(total, 0.0) if m.lower >= 0 else total, 2)
    value = _cell(a, n, cells, rules)
    return round(value, 2) if isinstance(value, float) and math.isfinite(value) else value
