"""sql sources between two connectors, against the real PostgreSQL and MariaDB servers.

The provider ("gov") publishes orders tables straight from each database, a consumer ("a")
pulls them under an agreement: only the permitted fields leave, masked; a resumed pull gets
the bytes and hash fixed when the transfer started, whatever the database does meanwhile.
Bad input is refused with the reason and changes nothing: an unconfigured connection, a
query that writes, locks, reads files or smuggles a second statement, fields that are not
the query's output, a database that is down, a table changed since publish.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlmodel import select

from connector._proto.tds.v1 import admin_pb2, transfer_pb2, transfer_pb2_grpc
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.sources.sql_connection import SqlConnection
from connector.store.models import CatalogListingRow
from tests.conftest import POSTGRES_URL
from tests.sources.conftest import MARIADB_URL, Database, mariadb_database, postgres_database
from tests.support.exchange import admin, agree, entries, offer, publish

FIELDS = ["id", "customer_name", "customer_phone", "city", "amount", "ordered"]
PERMITTED = ["id", "customer_name", "city", "amount", "ordered"]
CONNECTION = {"postgres": "shop_pg", "mysql": "shop_maria"}

# Port 1 on the loopback: nothing listens, so every connection is refused at once.
DOWN_URL = "postgresql://postgres@127.0.0.1:1/test"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("sql")
    (root / "provider-data").mkdir()
    sources = {
        "shop_pg": SqlConnection("shop_pg", POSTGRES_URL, pool_size=2),
        "shop_maria": SqlConnection("shop_maria", MARIADB_URL, pool_size=2),
        "down": SqlConnection("down", DOWN_URL, connect_timeout_seconds=2),
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
def orders(database: Database) -> Iterator[str]:
    """An orders table with three rows, dropped after the test."""
    name = database.table()
    database.run(
        f"CREATE TABLE {name} (id INT PRIMARY KEY, customer_name VARCHAR(80), "
        "customer_phone VARCHAR(20), city VARCHAR(40), amount DECIMAL(10,2), ordered DATE)"
    )
    rows = (
        "(1, 'Li Wei', '13800000001', 'Shanghai', 12.50, '2026-03-01'), "
        "(2, '张敏', '13800000002', 'Beijing', 7.05, '2026-03-02'), "
        "(3, 'Anna Berg', '13800000003', 'Shenzhen', 100.00, '2026-03-03')"
    )
    database.run(f"INSERT INTO {name} VALUES {rows}")  # noqa: S608 (the test's own table)
    try:
        yield name
    finally:
        database.run(f"DROP TABLE IF EXISTS {name}")


def _product(pid: str, connection: str, query: str, **source: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "title": f"Orders {pid}",
        "grade": "important",
        "fields": FIELDS,
        "source": {
            "kind": "sql",
            "connection": connection,
            "query": query,
            "format": "csv",
            **source,
        },
        "offers": [offer(permitted_fields=PERMITTED, masks={"customer_name": "hash"})],
    }


def _publish(space: LocalSpace, pid: str, connection: str, query: str, **source: Any) -> None:
    publish(space, "gov", _product(pid, connection, query, **source), space.root)


def _query(table: str) -> str:
    return f"SELECT {', '.join(FIELDS)} FROM {table} ORDER BY id"  # noqa: S608


def _member(space: LocalSpace) -> transfer_pb2_grpc.TransferServiceStub:
    return transfer_pb2_grpc.TransferServiceStub(space.nodes["a"]._member_channel("gov"))


def _metering(space: LocalSpace, agreement: str) -> tuple[int, int]:
    report = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    found = [(m.transfers, m.bytes) for m in report.agreements if m.agreement_id == agreement]
    return found[0] if found else (0, 0)


def _provider_transfers(space: LocalSpace, agreement: str) -> list[admin_pb2.TransferInfo]:
    listed = admin(space, "gov").ListTransfers(
        admin_pb2.ListTransfersRequest(role="provider"), timeout=10
    )
    return [t for t in listed.transfers if t.agreement_id == agreement]


def _staged(space: LocalSpace) -> set[str]:
    where = space.nodes["gov"].cfg.data_dir / "transfers"
    return {p.name for p in where.iterdir()} if where.exists() else set()


def test_an_orders_table_is_delivered_projected_and_masked(
    space: LocalSpace, database: Database, orders: str
) -> None:
    pid = f"orders-{orders[-12:]}"
    _publish(space, pid, CONNECTION[database.dialect], _query(orders))
    agreement = agree(space, "gov", "a", pid, approve=True)
    receiver = space.nodes["a"].receiver
    assert receiver is not None
    t = receiver.run(agreement)
    assert t.state == "completed"
    text = Path(t.path).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == PERMITTED  # the phone number never leaves
    assert "138000000" not in text
    for name in ("Li Wei", "张敏", "Anna Berg"):
        assert name not in text
    assert all(len(r["customer_name"]) == 64 for r in rows)  # keyed pseudonyms
    assert [(r["id"], r["city"], r["amount"], r["ordered"]) for r in rows] == [
        ("1", "Shanghai", "12.50", "2026-03-01"),
        ("2", "Beijing", "7.05", "2026-03-02"),
        ("3", "Shenzhen", "100.00", "2026-03-03"),
    ]
    assert hashlib.sha256(text.encode()).hexdigest() == t.sha256
    # The provider's log says what the delivery was made from: the query and its rows.
    started = [
        e for e in entries(space, "gov", "transfer.started") if e["data"]["transfer"] == t.id
    ]
    assert started[0]["data"]["source_state"].startswith("sql:sha256:")
    assert started[0]["data"]["fields"] == PERMITTED
    # Both sides logged the dual-signed receipt.
    for who in ("gov", "a"):
        assert [e for e in entries(space, who, "transfer.receipt") if e["data"]["transfer"] == t.id]


def test_a_resumed_pull_gets_the_bytes_fixed_at_start(
    space: LocalSpace, database: Database, orders: str
) -> None:
    pid = f"resume-{orders[-12:]}"
    _publish(space, pid, CONNECTION[database.dialect], _query(orders))
    agreement = agree(space, "gov", "a", pid, approve=True)
    member = _member(space)
    m = member.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=20)
    whole = b"".join(
        c.data for c in member.Pull(transfer_pb2.PullRequest(transfer_id=m.transfer_id), timeout=20)
    )
    assert hashlib.sha256(whole).hexdigest() == m.sha256 and len(whole) == m.size
    # The database changes under the running transfer; a resumed pull does not see it.
    database.run(f"UPDATE {orders} SET city = 'Changed' WHERE id = 2")  # noqa: S608
    new = "(4, 'New', '1', 'Hangzhou', 1.00, '2026-03-04')"
    database.run(f"INSERT INTO {orders} VALUES {new}")  # noqa: S608
    resumed = b"".join(
        c.data
        for c in member.Pull(
            transfer_pb2.PullRequest(transfer_id=m.transfer_id, offset=17), timeout=20
        )
    )
    assert resumed == whole[17:]
    # A new transfer reads the database as it is now.
    fresh = member.StartTransfer(
        transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=20
    )
    assert fresh.sha256 != m.sha256
    states = {
        e["data"]["transfer"]: e["data"]["source_state"]
        for e in entries(space, "gov", "transfer.started")
    }
    assert states[m.transfer_id] != states[fresh.transfer_id]


def test_a_replica_runs_the_query_again_and_serves_only_the_recorded_bytes(
    space: LocalSpace, database: Database, orders: str
) -> None:
    """Issue 21, item 4: a pull resumed on a replica that holds no staged copy runs the
    query again; the same rows give the same bytes, changed rows fail the transfer."""
    pid = f"replica-{orders[-12:]}"
    _publish(space, pid, CONNECTION[database.dialect], _query(orders))
    agreement = agree(space, "gov", "a", pid, approve=True)
    member = _member(space)
    m = member.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=20)
    staged = space.nodes["gov"].cfg.data_dir / "transfers" / f"{m.transfer_id}.csv"
    whole = staged.read_bytes()
    staged.unlink()  # as on a replica that did not start the transfer

    def pull(offset: int) -> bytes:
        request = transfer_pb2.PullRequest(transfer_id=m.transfer_id, offset=offset)
        return b"".join(c.data for c in member.Pull(request, timeout=20))

    assert pull(17) == whole[17:]
    assert hashlib.sha256(whole).hexdigest() == m.sha256
    staged.unlink()
    # Two pulls resumed at once on the replica make it once between them, the same bytes.
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(pull, (0, 5))) == [whole, whole[5:]]
    staged.unlink()
    database.run(f"UPDATE {orders} SET city = 'Changed' WHERE id = 2")  # noqa: S608
    with pytest.raises(grpc.RpcError) as err:
        pull(17)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "source changed since it started" in (err.value.details() or "")
    (refused,) = _provider_transfers(space, agreement)
    assert refused.state == "failed" and m.sha256 in refused.reason
    assert not staged.exists()


@pytest.mark.parametrize(
    "query, fields, reason",
    [
        ("DELETE FROM {t}", ["id"], "must be a SELECT"),
        ("SELECT id FROM {t}; DROP TABLE {t}", ["id"], "exactly one statement"),
        ("SELECT id FROM {t} FOR UPDATE", ["id"], "locking clause"),
        ("SELECT id, pg_read_file('/etc/passwd') AS f FROM {t}", ["id", "f"], "PG_READ_FILE"),
        ("SELECT id, LOAD_FILE('/etc/passwd') AS f FROM {t}", ["id", "f"], "LOAD_FILE"),
        ("SELECT id, SLEEP(10) AS f FROM {t}", ["id", "f"], "SLEEP"),
        ("WITH gone AS (DELETE FROM {t} RETURNING id) SELECT id FROM gone", ["id"], "DELETE"),
        ("SELECT id, city FROM {t}", FIELDS, "fields must equal the query's output columns"),
        # No parser knows the provider's tables: the database is asked, for no rows, and
        # its own words name what is wrong.
        ("SELECT id, nosuch AS x FROM {t}", ["id", "x"], "nosuch"),
        ("SELECT id FROM {t}_gone", ["id"], "_gone"),
    ],
)
def test_a_query_that_is_not_one_plain_select_the_database_can_run_is_refused_at_publish(
    space: LocalSpace,
    database: Database,
    orders: str,
    query: str,
    fields: list[str],
    reason: str,
) -> None:
    before = len(entries(space, "gov", "catalog.product_published"))
    description = _product("bad", CONNECTION[database.dialect], query.format(t=orders))
    description["fields"] = fields
    description["grade"] = "general"
    description["offers"] = [offer()]
    with pytest.raises(grpc.RpcError) as err:
        publish(space, "gov", description, space.root)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or ""), err.value.details()
    assert len(entries(space, "gov", "catalog.product_published")) == before
    own = admin(space, "gov").ListOwnProducts(admin_pb2.ListOwnProductsRequest(), timeout=10)
    assert "bad" not in {json.loads(p)["id"] for p in own.products_json}


def test_an_unconfigured_connection_is_refused_at_publish(space: LocalSpace) -> None:
    before = len(entries(space, "gov", "catalog.product_published"))
    with pytest.raises(grpc.RpcError) as err:
        _publish(space, "nowhere", "crm", "SELECT id FROM customers")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[sources.crm]" in (err.value.details() or "")
    assert len(entries(space, "gov", "catalog.product_published")) == before


def test_a_source_database_that_is_down_refuses_the_transfer_and_counts_nothing(
    space: LocalSpace,
) -> None:
    # A server that cannot be reached at publish does not stop it (the query is run at the
    # first transfer): the product is there, its data is not.
    _publish(space, "down-orders", "down", _query("orders"))
    agreement = agree(space, "gov", "a", "down-orders", approve=True)
    staged = _staged(space)
    with pytest.raises(grpc.RpcError) as err:
        _member(space).StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "'down' is unreachable" in (err.value.details() or "")
    assert "postgres@" not in (err.value.details() or "")  # no URL, no credentials
    assert _metering(space, agreement) == (0, 0)
    assert _provider_transfers(space, agreement) == []
    assert _staged(space) == staged


def test_a_table_changed_since_publish_fails_the_precondition(
    space: LocalSpace, database: Database, orders: str
) -> None:
    pid = f"changed-{orders[-12:]}"
    _publish(space, pid, CONNECTION[database.dialect], _query(orders))
    agreement = agree(space, "gov", "a", pid, approve=True)
    database.run(f"ALTER TABLE {orders} RENAME COLUMN customer_phone TO phone")
    staged = _staged(space)
    with pytest.raises(grpc.RpcError) as err:
        _member(space).StartTransfer(
            transfer_pb2.StartTransferRequest(agreement_id=agreement), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "refused the query" in (err.value.details() or "")
    # The database's own words (they name the provider's columns) are not the consumer's.
    assert "customer_phone" not in (err.value.details() or ""), err.value.details()
    assert _metering(space, agreement) == (0, 0)
    assert _provider_transfers(space, agreement) == []
    assert _staged(space) == staged


def test_the_registry_listing_has_no_connection_or_query(
    space: LocalSpace, database: Database, orders: str
) -> None:
    pid = f"listed-{orders[-12:]}"
    _publish(space, pid, CONNECTION[database.dialect], _query(orders))
    admin(space, "gov").RegisterProduct(
        admin_pb2.RegisterOwnProductRequest(product_id=pid, public=True), timeout=10
    )
    registry = space.nodes[space.manifest.operator_id].db
    assert registry is not None
    with registry.session() as s:
        body = s.exec(
            select(CatalogListingRow.body).where(CatalogListingRow.product_id == pid)
        ).one()
    listed = json.loads(body)["source"]
    assert listed == {"kind": "sql", "format": "csv", "path": "", "connection": "", "query": ""}
    assert orders not in body and CONNECTION[database.dialect] not in body


def test_general_data_is_masked_as_its_offer_says(
    space: LocalSpace, database: Database, orders: str
) -> None:
    """An offer's masks hold whatever the grade: before, only important data's were applied
    and a general product's masked fields left in clear."""
    pid = f"general-{orders[-12:]}"
    description = _product(pid, CONNECTION[database.dialect], _query(orders))
    description["grade"] = "general"
    description["offers"] = [offer(masks={"customer_name": "hash", "customer_phone": "redact"})]
    publish(space, "gov", description, space.root)
    agreement = agree(space, "gov", "a", pid)
    receiver = space.nodes["a"].receiver
    assert receiver is not None
    text = Path(receiver.run(agreement).path).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == FIELDS  # no field list: every field, masked as the offer says
    assert "Li Wei" not in text and "138000000" not in text
    assert all(len(r["customer_name"]) == 64 and r["customer_phone"] == "" for r in rows)
