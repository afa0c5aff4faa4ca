"""Disclosure control: k-suppression, differencing protection, OpenDP noise."""

from __future__ import annotations

import csv
import random
import statistics as st
from collections.abc import Iterator

import pytest

from connector.compute.disclosure import (
    _ONE_ROW,
    Disclosed,
    _counted,
    _releases,
    _share,
    _threshold,
    check_isolation,
    disclose,
)
from connector.compute.embedded import DuckDBTable
from connector.compute.engine import Group, Statistic, compute_groups, statistics
from connector.compute.query import parse_query
from connector.compute.rules import ComputeRules, parse_rules
from connector.errors import PermissionDenied
from tests.compute.conftest import COLUMNS, PRIVACY, hospital, hospital_dp, write_csv

K3 = parse_rules(hospital(k=3))
DP = parse_rules(hospital_dp())
LONE_COST = 9876.0


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDBTable]:
    t = DuckDBTable(write_csv(tmp_path_factory.mktemp("small") / "a.csv"), "csv")
    yield t
    t.close()


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDBTable]:
    """400 admissions per district and age band in 2026, and p-lone, the only 65+ in east."""
    path = tmp_path_factory.mktemp("large") / "a.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        i = 0
        for district in ("north", "south", "east", "west"):
            for band in ("0-17", "18-64") + (("65+",) if district != "east" else ()):
                for _ in range(400):
                    i += 1
                    w.writerow([f"p-{i}", district, band, 2026, 100 + (i * 37) % 4000, i % 20])
        w.writerow(["p-lone", "east", "65+", 2026, LONE_COST, 30])
    t = DuckDBTable(path, "csv")
    yield t
    t.close()


def _answer(
    text: str, rules: ComputeRules, table: DuckDBTable, *, isolation: bool = True
) -> Disclosed:
    q = parse_query(text, rules)
    if isolation:
        check_isolation(q, rules, table)
    return disclose(q, rules, compute_groups(q, rules, table))


def test_small_groups_are_suppressed_and_counted_not_named(small: DuckDBTable) -> None:
    rules = parse_rules(hospital())  # k = 5
    d = _answer(
        "SELECT district, age_band, count(*), avg(cost) FROM product WHERE year = 2026"
        " GROUP BY district, age_band",
        rules,
        small,
    )
    shown = {(r[0], r[1]) for r in d.rows}
    assert ("east", "65+") not in shown and ("harbour", "18-64") not in shown
    assert d.suppressed == 2 and d.epsilon == 0.0
    assert all(isinstance(r[2], int) and r[2] >= 5 for r in d.rows)
    assert d.columns == ("district", "age_band", "count", "avg_cost")
    # a query whose only group is small is answered with no rows, one suppressed
    d = _answer(
        "SELECT count(*) FROM product WHERE district = 'harbour'", rules, small, isolation=False
    )
    assert d.rows == () and d.suppressed == 1


Q1 = "SELECT sum(cost) FROM product WHERE district = 'east' AND year = 2026"
Q2 = Q1 + " AND age_band != '65+'"


def test_k_suppression_alone_leaks_by_differencing(small: DuckDBTable) -> None:
    """The attack: both answers have many rows, their difference is one patient's cost."""
    a = _answer(Q1, K3, small, isolation=False)
    b = _answer(Q2, K3, small, isolation=False)
    assert a.suppressed == b.suppressed == 0
    assert a.rows[0][0] - b.rows[0][0] == LONE_COST  # p-lone's cost, disclosed


def test_isolation_check_refuses_the_differencing_query(small: DuckDBTable) -> None:
    assert _answer(Q1, K3, small).rows  # the wide question is fine
    for narrower in (
        Q2,
        Q1 + " AND age_band IN ('0-17', '18-64')",
        Q1 + " AND age_band NOT IN ('65+')",
        "SELECT district, sum(cost) FROM product WHERE year = 2026 AND age_band != '65+'"
        " GROUP BY district",
    ):
        with pytest.raises(PermissionDenied, match="filter on age_band separates fewer than 3"):
            _answer(narrower, K3, small)
    # a filter whose cells are all large or alone in their group passes
    assert _answer(
        "SELECT district, age_band, count(*) FROM product WHERE year = 2026"
        " GROUP BY district, age_band",
        K3,
        small,
    ).rows


def test_residual_without_dp_marginal_differencing(small: DuckDBTable) -> None:
    """Documented residual risk: without DP, a finer grouping subtracted from a coarser one
    recovers a suppressed group (no filter differs, so the isolation check cannot see it).
    Only differential privacy bounds this; see the next tests."""
    coarse = _answer(
        "SELECT district, sum(cost) FROM product WHERE year = 2026 GROUP BY district", K3, small
    )
    fine = _answer(
        "SELECT district, age_band, sum(cost) FROM product WHERE year = 2026"
        " GROUP BY district, age_band",
        K3,
        small,
    )
    east = next(r[1] for r in coarse.rows if r[0] == "east")
    shown = sum(r[2] for r in fine.rows if r[0] == "east")
    assert fine.suppressed == 1 and east - shown == LONE_COST


def test_dp_calibration_spends_what_the_offer_says() -> None:
    assert DP.privacy is not None
    share = DP.privacy.epsilon_per_query / 3  # count+keys, suppressed count, sum(cost)
    m = _threshold(share, DP.privacy.delta, DP.k)
    eps, delta = m.map((1, 1, 1))
    assert eps <= share and delta <= DP.privacy.delta


TWO_MEASURES = parse_rules(
    hospital(
        privacy=dict(PRIVACY),
        measures={
            "cost": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 10000},
            "days": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 60},
        },
    )
)


@pytest.mark.parametrize(
    ("text", "shares"),
    [
        # threshold; suppressed count alone; sum(cost)
        ("SELECT district, sum(cost) FROM product GROUP BY district", 3),
        # threshold; the suppressed count with count(cost); sum(cost)
        ("SELECT district, count(*), avg(cost) FROM product GROUP BY district", 3),
        ("SELECT district, count(cost) FROM product GROUP BY district", 2),
        ("SELECT district, count(*) FROM product GROUP BY district", 2),
        # threshold; the suppressed count with count(cost) and count(days) (2 shares);
        # sum(cost); sum(days)
        ("SELECT district, avg(cost), avg(days) FROM product GROUP BY district", 5),
    ],
)
@pytest.mark.parametrize("shown", [1, 7, 40])
def test_dp_releases_spend_exactly_the_query_epsilon(text: str, shares: int, shown: int) -> None:
    """The ε charged is what OpenDP's privacy maps say the releases spend: the threshold
    and every release after it, at the distance one row moves each, add up to
    ``epsilon_per_query`` (never more; less only by the maps' float rounding)."""
    rules = TWO_MEASURES
    assert rules.privacy is not None
    epsilon = rules.privacy.epsilon_per_query
    stats = statistics(parse_query(text, rules).aggregates)
    share = _share(epsilon, stats)
    assert share == epsilon / shares
    eps_threshold, delta = _threshold(share, rules.privacy.delta, rules.k).map(_ONE_ROW)
    assert delta <= rules.privacy.delta
    releases = _releases(epsilon, stats, rules, shown)
    spent = eps_threshold + sum(r.measurement.map(r.d_in) for r in releases)
    assert epsilon * (1 - 1e-6) <= spent <= epsilon * (1 + 1e-12)
    # each figure gets the noise of a release of its own at one share: one row moving
    # one figure alone (a count by 1, a sum by its bound) costs one share
    for r in releases:
        alone = 1 if r.stats == () or r.stats[0].fn == "count" else r.d_in
        assert r.measurement.map(alone) == pytest.approx(share, rel=1e-6)
    counts = [s for s in stats if s.fn == "count"]
    assert releases[0].stats == tuple(counts) and releases[0].d_in == max(1, len(counts))


def _group(key: str, n: int, cost: int, days: int) -> Group:
    return Group(key=(key,), n=n, values={"count(cost)": cost, "count(days)": days})


def test_dp_one_row_moves_the_counts_vector_by_its_sensitivity_at_most() -> None:
    """The counts' release claims L1 sensitivity ``max(1, c)``: given the groups shown (the
    threshold's output), adding one row anywhere — to a shown group, a suppressed one or
    a new one, with its measures present or NULL — moves the exact vector (the suppressed
    count, then each counted measure's figures) by at most that."""
    rng = random.Random(19)
    for _ in range(300):
        groups = [
            _group(f"g{i}", n, rng.randint(0, n), rng.randint(0, n))
            for i, n in enumerate(rng.randint(1, 30) for _ in range(rng.randint(1, 12)))
        ]
        keys = [g.key for g in groups]
        shown_keys = {k for k in keys if rng.random() < 0.6}
        for counts in (
            [],
            [Statistic("count", "cost")],
            [Statistic("count", "cost"), Statistic("count", "days")],
        ):
            width = max(1, len(counts))
            before = _counted(counts, groups, [g for g in groups if g.key in shown_keys])
            target = rng.randint(0, len(groups))  # len(groups): a new group
            cost, days = rng.random() < 0.7, rng.random() < 0.7
            if target == len(groups):
                after_groups = [*groups, _group("new", 1, int(cost), int(days))]
            else:
                g = groups[target]
                after_groups = list(groups)
                after_groups[target] = _group(
                    g.key[0],
                    g.n + 1,
                    int(g.values["count(cost)"] or 0) + cost,
                    int(g.values["count(days)"] or 0) + days,
                )
            after = _counted(counts, after_groups, [g for g in after_groups if g.key in shown_keys])
            assert len(after) == len(before)
            assert sum(abs(a - b) for a, b in zip(after, before, strict=True)) <= width


def test_dp_makes_the_differencing_attack_noisy(large: DuckDBTable) -> None:
    """The same two queries under DP: the difference no longer reveals p-lone's cost.

    (The test runs the pair 200 times to measure the attacker's error; a real agreement's
    ε budget allows only epsilon_budget / epsilon_per_query queries in all.)"""
    errors = []
    for _ in range(200):
        a = _answer(Q1, DP, large)
        b = _answer(Q2, DP, large)
        assert a.epsilon == b.epsilon == PRIVACY["epsilon_per_query"]
        errors.append(a.rows[0][0] - b.rows[0][0] - LONE_COST)
    # Laplace scale per sum: 10000 / (1/3) = 30000; the difference has sd ~ 60000
    assert st.pstdev(errors) > 20000
    assert sum(abs(e) < 500 for e in errors) < 10  # the exact cost is rarely within 500


def test_dp_hides_single_row_groups_and_keeps_large_ones_useful(large: DuckDBTable) -> None:
    text = "SELECT district, age_band, count(*), avg(cost) FROM product GROUP BY district, age_band"
    exact = {(r[0], r[1]): r for r in _answer(text, parse_rules(hospital(k=5)), large).rows}
    for _ in range(50):
        d = _answer(text, DP, large)
        shown = {(r[0], r[1]): r for r in d.rows}
        assert ("east", "65+") not in shown  # one row: below the noisy threshold
        assert len(shown) >= 9  # 400-row groups pass the threshold
        for key, row in shown.items():
            # three shares of ε = 1: count noise has scale 3, avg is near the truth
            assert abs(row[2] - 400) < 60
            assert 0 <= row[3] <= 10000
            assert abs(row[3] - exact[key][3]) < 1500
        assert d.suppressed >= 0 and d.epsilon == 1.0 and d.delta == 1e-6


def test_dp_offers_skip_the_exact_isolation_check(large: DuckDBTable) -> None:
    """Under DP an exact-count refusal would itself leak; the noise covers differencing."""
    check_isolation(parse_query(Q2, DP), DP, large)  # does not raise
    with pytest.raises(PermissionDenied):
        check_isolation(
            parse_query(Q2, parse_rules(hospital(k=3))), parse_rules(hospital(k=3)), large
        )
