"""Disclosure control: k-suppression, differencing protection, OpenDP noise."""

from __future__ import annotations

import csv
import statistics as st
from collections.abc import Iterator

import pytest

from connector.compute.disclosure import Disclosed, _threshold, check_isolation, disclose
from connector.compute.embedded import DuckDBTable
from connector.compute.engine import compute_groups
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
    assert eps <= share * (1 + 1e-9) and delta <= DP.privacy.delta


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
            # four releases share ε = 1: count noise has scale 4, avg is near the truth
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
