"""sql sources as users run them: `tds serve` connectors whose provider's configuration
names a MariaDB and a PostgreSQL database, `tds product add`, `tds negotiate`, `tds
transfer`; refusals at publish and a database that is down, each a one-line error."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_URL
from tests.e2e.test_cli import Served, tds
from tests.sources.conftest import MARIADB_URL, Database, mariadb_database, postgres_database
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.mariadb, pytest.mark.postgres]

FIELDS = ["id", "customer", "phone", "city", "amount"]


@pytest.fixture(scope="module")
def maria() -> Iterator[Database]:
    yield from mariadb_database()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Database]:
    yield from postgres_database()


@pytest.fixture(scope="module")
def orders(maria: Database) -> Iterator[str]:
    name = maria.table()
    maria.run(
        f"CREATE TABLE {name} (id INT PRIMARY KEY, customer VARCHAR(40), phone VARCHAR(20), "
        "city VARCHAR(40), amount DECIMAL(8,2))"
    )
    rows = "(1, 'Li Wei', '13900000001', 'Shanghai', 10.50), (2, 'Anna', '139000002', 'Xian', 3.00)"
    maria.run(f"INSERT INTO {name} VALUES {rows}")  # noqa: S608 (the test's own table)
    try:
        yield name
    finally:
        maria.run(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, postgres: Database, orders: str
) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("sql-cli")
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "gov:government", "--participant", "a:enterprise",
        cwd=root,
    )  # fmt: skip
    ports = {"operator": free_port(), "gov": free_port(), "a": free_port()}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        tds(
            "init", "--pki", "pki", "--participant", pid, "--listen", f"127.0.0.1:{port}",
            "--out", f"{pid}.toml", *extra,
            cwd=root,
        )  # fmt: skip
    # The provider's databases, as its operator adds them to the configuration.
    with (root / "gov.toml").open("a") as f:
        f.write(
            f'\n[sources.shop]\nurl = "{MARIADB_URL}"\npool_size = 2\n'
            f'\n[sources.warehouse]\nurl = "{POSTGRES_URL}"\n'
            '\n[sources.down]\nurl = "postgresql://reader:hunter2@127.0.0.1:1/test"\n'
            "connect_timeout_seconds = 2\n"
        )
    servers = {"operator": Served(root / "operator.toml", root)}
    try:
        for pid in ("gov", "a"):
            tds(
                "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki",
                cwd=root,
            )  # fmt: skip
            servers[pid] = Served(root / f"{pid}.toml", root)
        for pid in ("gov", "a"):
            _wait_ready(root, f"{pid}.toml")
        yield root
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def _wait_ready(root: Path, config: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = tds("status", "--config", config, "--json", cwd=root, check=False)
        if out.returncode == 0 and json.loads(out.stdout).get("revocation_list_issued_at"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{config} never became ready")


def _description(
    root: Path, pid: str, connection: str, query: str, fields: list[str], fmt: str = "csv"
) -> Path:
    path = root / f"{pid}.json"
    path.write_text(
        json.dumps(
            {
                "id": pid,
                "title": pid,
                "grade": "general",
                "fields": fields,
                "source": {
                    "kind": "sql",
                    "connection": connection,
                    "query": query,
                    "format": fmt,
                },
                "offers": [
                    {
                        "id": "o1",
                        "purposes": ["research"],
                        "valid_from_ns": 0,
                        "valid_until_ns": 4_000_000_000_000_000_000,
                        "permitted_fields": ["id", "customer", "city", "amount"],
                        "masks": {"customer": "hash"},
                    }
                ],
            }
        )
    )
    return path


def _agree(root: Path, product: str) -> str:
    neg = tds(
        "negotiate", "--config", "a.toml", "--provider", "gov", "--product", product,
        "--offer", "o1", "--purpose", "research", "--wait", "--json",
        cwd=root,
    )  # fmt: skip
    agreement: str = json.loads(neg.stdout)["agreement_id"]
    return agreement


def _refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode != 0, result.stdout
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return str(result.stderr)


def test_a_mariadb_table_is_pulled_projected_and_masked(world: Path, orders: str) -> None:
    query = f"SELECT {', '.join(FIELDS)} FROM {orders} ORDER BY id"  # noqa: S608
    description = _description(world, "orders", "shop", query, FIELDS)
    tds("product", "add", description, "--config", "gov.toml", cwd=world)
    agreement = _agree(world, "orders")
    out = tds(
        "transfer", "--agreement", agreement, "--out", "orders.csv", "--config", "a.toml",
        "--json",
        cwd=world,
    )  # fmt: skip
    result = json.loads(out.stdout)
    received = (world / "orders.csv").read_bytes()
    assert result["state"] == "completed"
    assert hashlib.sha256(received).hexdigest() == result["sha256"]
    rows = list(csv.DictReader(io.StringIO(received.decode())))
    assert list(rows[0]) == ["id", "customer", "city", "amount"]
    assert [(r["id"], r["city"], r["amount"]) for r in rows] == [
        ("1", "Shanghai", "10.50"),
        ("2", "Xian", "3.00"),
    ]
    assert b"Li Wei" not in received and b"13900" not in received
    # The provider's own listing shows the query (it is the admin's); the consumer's
    # catalog view has no source at all.
    seen = tds("catalog", "list", "--config", "a.toml", "--provider", "gov", "--json", cwd=world)
    assert orders not in seen.stdout and "shop" not in seen.stdout


def test_bad_queries_and_connections_are_refused_at_publish(world: Path, orders: str) -> None:
    rest = ", ".join(FIELDS[1:])
    cases = [
        ("warehouse", "SELECT pg_read_file('/etc/passwd') AS id, {rest} FROM t", "PG_READ_FILE"),
        ("shop", "SELECT id, {rest} FROM {t} LOCK IN SHARE MODE", "locking clause"),
        ("shop", "SELECT id, {rest} FROM {t}; DELETE FROM {t}", "exactly one statement"),
        ("crm", "SELECT id, {rest} FROM customers", "[sources.crm]"),
    ]
    for i, (connection, query, reason) in enumerate(cases):
        text = query.format(t=orders, rest=rest)
        description = _description(world, f"bad-{i}", connection, text, FIELDS)
        result = tds("product", "add", description, "--config", "gov.toml", cwd=world, check=False)
        _refused(result, reason)
    listed = tds("product", "list", "--config", "gov.toml", "--json", cwd=world).stdout
    assert "bad-" not in listed
    assert maria_rows(orders) == 2


def maria_rows(table: str) -> int:
    for db in mariadb_database():
        return int(db.run(f"SELECT count(*) FROM {table}")[0][0])  # noqa: S608
    raise AssertionError("unreachable")


def test_a_database_that_is_down_is_unavailable_and_counts_nothing(world: Path) -> None:
    query = "SELECT id, customer, phone, city, amount FROM t"
    description = _description(world, "down-orders", "down", query, FIELDS, "jsonl")
    tds("product", "add", description, "--config", "gov.toml", cwd=world)
    agreement = _agree(world, "down-orders")
    result = tds(
        "transfer", "--agreement", agreement, "--out", "down.jsonl", "--config", "a.toml",
        cwd=world, check=False,
    )  # fmt: skip
    message = _refused(result, "source connection 'down' is unreachable", "try again later")
    assert "hunter2" not in message and "reader" not in message
    assert not (world / "down.jsonl").exists()
    metering = json.loads(
        tds("report", "metering", "--config", "gov.toml", "--json", cwd=world).stdout
    )
    mine = [a for a in metering["agreements"] if a["agreement"] == agreement]
    assert all(a["transfers"] == 0 and a["bytes"] == 0 for a in mine), mine
    # The password is in the provider's configuration and nowhere in its logs, which name
    # the connection with the password hidden.
    logged = (world / "gov.log").read_text()
    assert "hunter2" not in logged
    assert "postgresql://reader:***@127.0.0.1:1/test" in logged
