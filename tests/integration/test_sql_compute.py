"""Compute-to-data on sql products, against the real PostgreSQL and MariaDB servers: the
question runs on the provider's database (read-only, statement timeout), the answer comes
back with a receipt naming the query's hash; a database that is down is UNAVAILABLE and
nothing is spent; the connector's own state can live on PostgreSQL, where two replicas
share the metering row and the budget still holds."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import compute_pb2, compute_pb2_grpc
from connector.compute.receipt import verify_computation_receipt
from connector.compute.store import ComputationStore
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node import Node
from connector.node.clients import admin_channel
from connector.sources.sql_connection import SqlConnection
from tests.conftest import POSTGRES_URL
from tests.integration.test_replicas import channel
from tests.sources.conftest import MARIADB_URL, Database, mariadb_database, postgres_database
from tests.support.exchange import agree, entries, offer, publish

FIELDS = ["id", "district", "age_band", "cost"]
CONNECTION = {"postgres": "hospital_pg", "mysql": "hospital_maria"}
RULES: dict[str, Any] = {
    "k": 3,
    "dimensions": {"district": {"type": "text"}, "age_band": {"type": "text"}},
    "measures": {"cost": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 10000}},
}
DP_RULES = {**RULES, "privacy": {"epsilon_per_query": 0.5, "epsilon_budget": 1.0, "delta": 1e-6}}


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("sql-compute")
    (root / "provider-data").mkdir()
    sources = {
        "hospital_pg": SqlConnection("hospital_pg", POSTGRES_URL, pool_size=2),
        "hospital_maria": SqlConnection("hospital_maria", MARIADB_URL, pool_size=2),
        "down": SqlConnection("down", "postgresql://postgres@127.0.0.1:1/test"),
    }
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        sp.start_connector("gov", sources=sources)
        sp.start_connector("a")
        yield sp


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database(request: pytest.FixtureRequest) -> Iterator[Database]:
    yield from (postgres_database() if request.param == "postgres" else mariadb_database())


@pytest.fixture
def admissions(database: Database) -> Iterator[str]:
    name = database.table()
    database.run(
        f"CREATE TABLE {name} (id INT PRIMARY KEY, district VARCHAR(20), "
        "age_band VARCHAR(8), cost DECIMAL(10,2))"
    )
    rows = ", ".join(
        f"({i}, '{d}', '{('0-17', '18-64')[i % 2]}', {100 + i}.50)"
        for i, d in enumerate(["north"] * 6 + ["south"] * 5 + ["island"] * 2)
    )
    database.run(f"INSERT INTO {name} VALUES {rows}")  # noqa: S608 (the test's own table)
    try:
        yield name
    finally:
        database.run(f"DROP TABLE IF EXISTS {name}")


def _publish(space: LocalSpace, pid: str, connection: str, query: str, rules: Any) -> None:
    publish(
        space,
        "gov",
        {
            "id": pid,
            "title": pid,
            "grade": "important",
            "fields": FIELDS,
            "source": {"kind": "sql", "connection": connection, "query": query, "format": "csv"},
            "offers": [offer(delivery=["compute"], compute=rules)],
        },
        space.root,
    )


def ask(space: LocalSpace, agreement: str, question: str) -> compute_pb2.ComputeResponse:
    stub = compute_pb2_grpc.ComputeServiceStub(admin_channel(space.configs["a"]))
    response: compute_pb2.ComputeResponse = stub.Ask(
        compute_pb2.ComputeRequest(agreement_id=agreement, question=question), timeout=60
    )
    return response


def spent(space: LocalSpace, agreement: str) -> tuple[int, int]:
    db = space.nodes["gov"].db
    assert db is not None
    used = ComputationStore(db).usage(agreement)
    return used.computations, used.spent_micro


def test_a_question_is_answered_on_the_source_database(
    space: LocalSpace, database: Database, admissions: str
) -> None:
    pid = f"adm-{admissions[-12:]}"
    query = f"SELECT {', '.join(FIELDS)} FROM {admissions}"  # noqa: S608
    _publish(space, pid, CONNECTION[database.dialect], query, RULES)
    agreement = agree(space, "gov", "a", pid, approve=True)
    r = ask(
        space,
        agreement,
        "SELECT district, count(*), sum(cost) FROM product GROUP BY district",
    )
    answer = json.loads(r.answer)
    rows = {row[0]: row[1:] for row in answer["rows"]}
    assert set(rows) == {"north", "south"} and answer["suppressed"] == 1  # island: 2 < k
    assert rows["north"][0] == 6
    assert rows["north"][1] == pytest.approx(sum(100 + i + 0.5 for i in range(6)))
    receipt = verify_computation_receipt(r.receipt, space.nodes["gov"]._signing_key_of)
    assert receipt.source_state.startswith("sql:sha256:")
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, agreement, "SELECT id, count(*) FROM product GROUP BY id")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_database_that_is_down_is_unavailable_and_nothing_is_spent(space: LocalSpace) -> None:
    _publish(space, "adm-down", "down", "SELECT id, district, age_band, cost FROM t", DP_RULES)
    agreement = agree(space, "gov", "a", "adm-down", approve=True)
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, agreement, "SELECT district, count(*) FROM product GROUP BY district")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "unreachable" in (caught.value.details() or "")
    assert "postgres@" not in (caught.value.details() or "")  # no URL, no credentials
    assert spent(space, agreement) == (0, 0)
    failed = [
        e for e in entries(space, "gov", "compute.failed") if e["data"]["agreement"] == agreement
    ]
    assert len(failed) == 1


@pytest.mark.postgres
def test_replicas_on_one_postgresql_database_cannot_overspend(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> None:
    """Two replicas of the provider share one PostgreSQL database; the consumer asks both at
    once under one agreement: the budget (ε 1 at 0.5 a question) allows two answers in all."""
    root = tmp_path_factory.mktemp("compute-replicas")
    data = root / "provider-data"
    data.mkdir()
    lines = ["district,age_band,cost"] + [f"n,18-64,{100 + i}" for i in range(40)]
    (data / "t.csv").write_text("\n".join(lines) + "\n")
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        first = sp.start_connector("gov", database_url=postgres_url)
        sp.start_connector("a")
        publish(
            sp,
            "gov",
            {
                "id": "t",
                "title": "t",
                "grade": "general",
                "fields": ["district", "age_band", "cost"],
                "source": {"kind": "table", "format": "csv", "path": str(data / "t.csv")},
                "offers": [offer(delivery=["compute"], compute=DP_RULES)],
            },
            data,
        )
        agreement = agree(sp, "gov", "a", "t")
        second = Node(sp.write_config("gov", "127.0.0.1:0", sp.registry_address, postgres_url))
        second.start()
        sp.nodes["gov-2"] = second
        assert second.wait_ready(10)
        stubs = [
            compute_pb2_grpc.ComputeServiceStub(channel(sp, node, "a", "tls", True))
            for node in (first, second)
        ]
        barrier = threading.Barrier(8)

        def one(n: int) -> bool:
            barrier.wait()
            try:
                stubs[n % 2].Compute(
                    compute_pb2.ComputeRequest(
                        agreement_id=agreement, question="SELECT count(*) FROM product"
                    ),
                    timeout=60,
                )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
                assert "privacy_budget_exhausted" in (exc.details() or "")
                return False
            return True

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(one, range(8))) == 2
        assert first.db is not None
        used = ComputationStore(first.db).usage(agreement)
        assert (used.computations, used.spent_micro) == (2, 1_000_000)
