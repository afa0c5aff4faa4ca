"""The consumer's question: parsed with a real SQL parser, refused with the reason."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.compute.query import MAX_QUERY_CHARS, Aggregate, Filter, parse_query
from connector.compute.rules import parse_rules
from connector.errors import InvalidRequest
from tests.compute.conftest import hospital, hospital_dp

RULES = parse_rules(hospital())

ASK = (
    "SELECT district, age_band, count(*), avg(cost) FROM product"
    " WHERE year = 2026 GROUP BY district, age_band"
)


def test_parses_the_example_question() -> None:
    q = parse_query(ASK, RULES)
    assert q.dimensions == ("district", "age_band")
    assert q.filters == (Filter("year", "=", (2026,)),)
    assert q.aggregates == (Aggregate("count"), Aggregate("avg", "cost"))
    assert q.columns == ("district", "age_band", "count", "avg_cost")
    assert q.canonical_text() == (
        "SELECT district, age_band, COUNT(*), AVG(cost) FROM product"
        " WHERE year = 2026 GROUP BY district, age_band"
    )
    assert len(q.sha256()) == 64


def test_equivalent_questions_have_one_canonical_form() -> None:
    variants = [
        ASK,
        "select DISTRICT, age_band, COUNT(*), Avg(product.cost) from product "
        "where 2026 = year group by age_band, district",
        {
            "dimensions": ["district", "age_band"],
            "filters": [{"dimension": "year", "op": "=", "value": 2026}],
            "aggregates": [{"fn": "count"}, {"fn": "avg", "measure": "cost"}],
        },
    ]
    texts = {parse_query(v, RULES).canonical_text() for v in variants}
    assert len(texts) == 1
    # filter order and IN-list order do not matter either
    a = parse_query(
        "SELECT count(*) FROM product WHERE district IN ('b', 'a', 'a') AND year >= 2020", RULES
    )
    b = parse_query(
        "SELECT count(*) FROM product WHERE (year >= 2020) AND district IN ('a', 'b')", RULES
    )
    assert a == b and a.sha256() == b.sha256()


def test_canonical_text_is_the_text_sqlglots_builder_prints() -> None:
    # Receipts carry the canonical text and each side compares it with its own: the
    # tree built node by node must print exactly as the builder's did (its nested
    # conjuncts included), or connectors of two versions would refuse each other.
    from sqlglot import exp

    from connector.compute.query import aggregate_expression, filter_expression, literal

    def builders(q: Any) -> str:
        select = exp.select(
            *(exp.column(d) for d in q.dimensions),
            *(
                aggregate_expression(a, exp.column(a.measure) if a.measure else None)
                for a in q.aggregates
            ),
        ).from_("product")
        for f in q.filters:
            select = select.where(filter_expression(f, [literal(v) for v in f.values]))
        if q.dimensions:
            select = select.group_by(*(exp.column(d) for d in q.dimensions))
        return str(select.sql())

    texts = [
        ASK,
        "SELECT count(*) FROM product",
        "SELECT sum(days), quantile_cont(cost, 0.9) FROM product WHERE district = 'a''b'",
        "SELECT district, count(*), min(cost) FROM product WHERE age_band NOT IN ('65+')"
        " AND year < -3 AND district != 'x' AND year IN (2021, 2020) GROUP BY district",
    ]
    for text in texts:
        q = parse_query(text, RULES)
        assert q.canonical_text() == builders(q), text
    assert parse_query(texts[-1], RULES).canonical_text() == (
        "SELECT district, COUNT(*), MIN(cost) FROM product WHERE ((NOT age_band IN ('65+')"
        " AND district <> 'x') AND year < -3) AND year IN (2020, 2021) GROUP BY district"
    )


def test_quantile_spellings_and_json_round_trip() -> None:
    texts = [
        "SELECT quantile_cont(cost, 0.5) FROM product",
        "SELECT quantile(cost, 0.5) FROM product",
        "SELECT median(cost) FROM product",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY cost) FROM product",
    ]
    queries = {parse_query(t, RULES) for t in texts}
    assert queries == {
        parse_query({"aggregates": [{"fn": "quantile", "measure": "cost", "q": 0.5}]}, RULES)
    }
    q = parse_query(
        "SELECT district, count(*), min(cost), max(cost), quantile_cont(cost, 0.9), sum(days)"
        " FROM product WHERE age_band NOT IN ('65+') AND year < -3 AND district != 'x''y'"
        " GROUP BY district",
        RULES,
    )
    assert parse_query(q.canonical_text(), RULES) == q
    assert parse_query(q.to_dict(), RULES) == q
    assert q.shape(RULES) == {
        "dimensions": ["district"],
        "filtered": ["age_band", "district", "year"],
        "measures": ["cost", "days"],
        "aggregates": ["count", "min(cost)", "max(cost)", "quantile(cost,0.9)", "sum(days)"],
        "epsilon": 0.0,
    }
    assert (
        parse_query(ASK, parse_rules(hospital_dp())).shape(parse_rules(hospital_dp()))["epsilon"]
        == 1.0
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("SELECT * FROM product", "SELECT * is not allowed"),
        ("SELECT cost FROM product", "measure cost cannot be used as a dimension"),
        (
            "SELECT patient_id, count(*) FROM product GROUP BY patient_id",
            "patient_id is not a declared dimension",
        ),
        (
            "SELECT count(*) FROM product WHERE cost > 9000",
            "measure cost cannot be used in a filter",
        ),
        ("SELECT cost, count(*) FROM product GROUP BY cost", "measure cost cannot be used"),
        ("SELECT stddev(cost) FROM product", "only count, sum, avg, min, max and quantiles"),
        ("SELECT sum(days) FROM product WHERE year = 1; DROP TABLE product", "one statement only"),
        ("SELECT count(*) FROM product; SELECT 1", "one statement only"),
        ("DELETE FROM product", "only SELECT is allowed"),
        ("INSERT INTO product VALUES (1)", "only SELECT is allowed"),
        ("SELECT count(*) FROM product UNION SELECT count(*) FROM product", "only SELECT"),
        ("SELECT count(*) FROM product JOIN people ON true", "a join is not allowed"),
        ("SELECT count(*) FROM product, people", "a join is not allowed"),
        ("SELECT count(*) FROM (SELECT * FROM product) AS product", "subqueries are not allowed"),
        ("WITH p AS (SELECT 1) SELECT count(*) FROM product", "WITH (common table expressions)"),
        ("SELECT count(*) FROM product WHERE district IN (SELECT 'a')", "subqueries"),
        ("SELECT sum(cost) OVER () FROM product", "window functions are not allowed"),
        ("SELECT count(*) FROM read_csv('/etc/passwd')", "table functions are not allowed"),
        ("SELECT count(*) FROM patients", "the only table is product"),
        ("SELECT count(*) FROM other.product", "the only table is product"),
        ("SELECT count(*) FROM product p", "takes no alias"),
        ("SELECT count(*) FROM product HAVING count(*) > 1", "HAVING is not allowed"),
        ("SELECT count(*) FROM product ORDER BY 1", "ORDER BY is not allowed"),
        ("SELECT count(*) FROM product LIMIT 1", "LIMIT is not allowed"),
        ("SELECT DISTINCT district FROM product", "DISTINCT is not allowed"),
        ("SELECT count(*) FROM product FOR UPDATE", "a locking clause (FOR UPDATE"),
        ("SELECT count(*) AS n FROM product", "aliases are not supported"),
        ("SELECT sum(cost + 1) FROM product", "aggregate a bare measure column"),
        ("SELECT sum(abs(cost)) FROM product", "aggregate a bare measure column"),
        ("SELECT count(DISTINCT cost) FROM product", "count(DISTINCT ...) is not allowed"),
        ("SELECT count(*) FILTER (WHERE year = 1) FROM product", "FILTER on an aggregate"),
        ("SELECT min(district) FROM product", "dimension district cannot be aggregated"),
        ("SELECT quantile_cont(days, 0.5) FROM product", "quantile(days) is not allowed"),
        ("SELECT quantile_cont(cost, 0.25) FROM product", "quantile 0.25 of cost is not allowed"),
        ("SELECT district FROM product GROUP BY district", "at least one aggregate"),
        ("SELECT district, count(*) FROM product", "must be the same"),
        ("SELECT count(*) FROM product GROUP BY district", "must be the same"),
        ("SELECT district, count(*) FROM product GROUP BY 1", "name the dimension"),
        ("SELECT district, count(*) FROM product GROUP BY ROLLUP (district)", "name the dim"),
        ("SELECT count(*) FROM product WHERE year = 1 OR year = 2", "OR is not supported"),
        ("SELECT count(*) FROM product WHERE year BETWEEN 1 AND 2", "BETWEEN is not supported"),
        ("SELECT count(*) FROM product WHERE district LIKE 'a%'", "WHERE takes only comparisons"),
        ("SELECT count(*) FROM product WHERE NOT year = 1", "WHERE takes only comparisons"),
        ("SELECT count(*) FROM product WHERE year = year", "literal values only"),
        ("SELECT count(*) FROM product WHERE 1 = 2", "compare a dimension with a literal"),
        ("SELECT count(*) FROM product WHERE year = lower('a')", "literal values only"),
        ("SELECT count(*) FROM product WHERE year = '2026'", "not a integer value"),
        ("SELECT count(*) FROM product WHERE district > 'a'", "district is text"),
        ("SELECT count(*) FROM product WHERE age_band = '90+'", "not an allowed value of age_band"),
        ("SELECT count(*) FROM product WHERE year IS NULL", "WHERE takes only comparisons"),
        ("SELECT count(*), count(*) FROM product", "an aggregate is asked twice"),
        ("SELECT district, district, count(*) FROM product GROUP BY district", "named twice"),
        ("SELECT pg_read_file('/etc/passwd') FROM product", "only count, sum, avg"),
        ("SELECT count(*) FROM product WHERE district = pg_sleep(10)", "literal values only"),
        ("SELECT count(*) FROM product WHERE", "not valid SQL"),
        ("SELECT count(* FROM product", "not valid SQL"),
        ("SELECT count(*) FROM product WHERE district = 'a\x00'", "NUL byte"),
        (
            "SELECT count(*) FROM product WHERE " + " AND ".join(["year = 1"] * 400),  # noqa: S608
            f"longer than {MAX_QUERY_CHARS} characters",
        ),
        (
            "SELECT count(*) FROM product WHERE " + "(" * 1000 + "year = 1" + ")" * 1000,
            "query refused",
        ),
    ],
)
def test_refuses_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_query(text, RULES)
    assert "query refused" in str(err.value) or "query." in str(err.value)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"dimensions": ["district"], "aggregates": [{"fn": "count"}], "x": 1}, "query.x is not"),
        ({"aggregates": [{"fn": "median", "measure": "cost"}]}, "median(cost) is not allowed"),
        (
            {
                "aggregates": [{"fn": "count"}],
                "filters": [{"dimension": "cost", "op": "=", "value": 1}],
            },
            "measure cost cannot",
        ),
        (
            {
                "aggregates": [{"fn": "count"}],
                "filters": [{"dimension": "year", "op": "like", "value": 1}],
            },
            "op must be one of",
        ),
        (
            {
                "aggregates": [{"fn": "count"}],
                "filters": [{"dimension": "year", "op": "in", "values": []}],
            },
            "IN takes 1 to",
        ),
        ({"aggregates": [{"fn": "sum"}]}, "sum needs a measure"),
        ({"aggregates": "count"}, "query.aggregates must be a list"),
        (
            {
                "aggregates": [{"fn": "count"}],
                "filters": [{"dimension": "year", "op": "=", "value": None}],
            },
            "must be a string",
        ),
    ],
)
def test_json_form_refuses_with_the_reason(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_query(doc, RULES)
    assert reason in str(err.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_filter_values_round_trip_through_canonical_text(value: str) -> None:
    """Any text value (quotes, backslashes, comment markers) stays a literal."""
    value = value.replace("\x00", "")
    q = parse_query(
        {
            "aggregates": [{"fn": "count"}],
            "filters": [{"dimension": "district", "op": "=", "value": value}],
        },
        RULES,
    )
    assert parse_query(q.canonical_text(), RULES) == q


def test_a_question_asked_again_is_checked_against_the_rules_it_is_asked_under() -> None:
    """A checked question is kept for the same text under equal rules (not parsed again);
    under other rules it is checked against those, and a refusal is never kept."""
    text = "SELECT district, avg(days) FROM product WHERE year = 2026 GROUP BY district"
    rules = parse_rules(hospital())
    first = parse_query(text, rules)
    assert parse_query(text, parse_rules(hospital())) is first  # equal rules: kept
    no_days = hospital()
    del no_days["measures"]["days"]
    with pytest.raises(InvalidRequest, match="days"):
        parse_query(text, parse_rules(no_days))
    with pytest.raises(InvalidRequest, match="days"):
        parse_query(text, parse_rules(no_days))  # refused again, not kept
    assert parse_query(text, rules) is first
    assert parse_query(text + " ", rules) == first  # other text: parsed, the same query
