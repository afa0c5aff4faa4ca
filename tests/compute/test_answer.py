"""The answer: canonical JSON, its hash, and the computation receipt's fields."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from connector.audit.canonical import canonical_json, parse_canonical
from connector.compute import answer_query, parse_rules
from connector.compute.embedded import DuckDBTable
from connector.errors import InvalidRequest, PermissionDenied
from tests.compute.conftest import hospital, write_csv

RULES = parse_rules(hospital())
ASK = (
    "SELECT district, age_band, count(*), avg(cost) FROM product WHERE year = 2026"
    " GROUP BY district, age_band"
)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckDBTable]:
    t = DuckDBTable(write_csv(tmp_path_factory.mktemp("t") / "a.csv"), "csv")
    yield t
    t.close()


def test_answer_is_canonical_json_with_its_hash(table: DuckDBTable) -> None:
    a = answer_query(ASK, RULES, table)
    data = a.canonical()
    doc = parse_canonical(data, "answer")  # raises unless RFC 8785 canonical
    assert doc == a.document()
    assert doc["columns"] == ["district", "age_band", "count", "avg_cost"]
    assert doc["suppressed"] == 2 and doc["epsilon"] == 0.0
    assert ["north", "18-64", 13, 2351.0] in doc["rows"]
    assert a.sha256() == hashlib.sha256(data).hexdigest()
    # the same question, written differently, on the same data: the same bytes
    again = answer_query(
        {
            "dimensions": ["district", "age_band"],
            "filters": [{"dimension": "year", "op": "=", "value": 2026}],
            "aggregates": [{"fn": "count"}, {"fn": "avg", "measure": "cost"}],
        },
        RULES,
        table,
    )
    assert again.canonical() == data


def test_receipt_names_query_rules_state_answer_and_budget(table: DuckDBTable) -> None:
    a = answer_query(ASK, RULES, table)
    r = a.receipt("sha256:abc")
    assert r == {
        "query": a.query.canonical_text(),
        "query_sha256": hashlib.sha256(a.query.canonical_text().encode()).hexdigest(),
        "rules_sha256": RULES.sha256(),
        "source_state": "sha256:abc",
        "answer_sha256": a.sha256(),
        "rows": 11,
        "suppressed": 2,
        "epsilon_spent": 0.0,
        "delta": 0.0,
    }
    assert parse_canonical(canonical_json(r), "receipt") == r


def test_refusals_come_before_any_execution(table: DuckDBTable) -> None:
    with pytest.raises(InvalidRequest, match="patient_id is not a declared dimension"):
        answer_query("SELECT patient_id, count(*) FROM product GROUP BY patient_id", RULES, table)
    with pytest.raises(PermissionDenied, match="filter on age_band"):
        answer_query(
            "SELECT sum(cost) FROM product WHERE district = 'east' AND age_band != '65+'",
            parse_rules(hospital(k=3)),
            table,
        )
