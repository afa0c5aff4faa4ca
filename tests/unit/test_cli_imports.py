"""``tds --help`` and the client commands start without the server stack.

Every ``tds`` command builds the full parser; importing the database, policy-engine and
server modules for it took ``tds --help`` from 0.3 s to over 1 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "sqlalchemy",
    "alembic",
    "sqlmodel",
    "opa_client",
    "aiohttp",
    "connector.node.node",
    "connector.audit.log",
    "connector.store.database",
    "connector.policy.embedded",
)


def loaded_after(code: str, modules: list[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter holds after running ``code``."""
    report = f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    probe = f"import json, sys\n{code}\n{report}\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(out.stdout.splitlines()[-1]))


def test_building_the_parser_imports_nothing_of_the_server_stack() -> None:
    code = "from connector.cli.main import build_parser\nbuild_parser()"
    assert loaded_after(code, list(HEAVY)) == []


def test_the_lazy_package_names_still_resolve() -> None:
    from connector.audit import TransparencyLog
    from connector.catalog import Catalog
    from connector.node import Node
    from connector.policy import EmbeddedEngine, OpaServerEngine, load_library

    assert all((TransparencyLog, Catalog, Node, EmbeddedEngine, OpaServerEngine, load_library))
    import connector.policy

    with pytest.raises(AttributeError, match="NoSuchThing"):
        connector.policy.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_the_server_stack_leaves_the_optional_engines_until_they_are_used() -> None:
    """A connector that publishes no database source, asks no compute question and decides
    on the embedded engine does not carry sqlglot (about 30 MB resident), the compute
    engines or the OPA client with aiohttp (13 MB): every process stays under 200 MB."""
    code = (
        "from connector.node import Node\n"
        "from connector.policy.factory import engine_from_config\n"
        "from connector.sources.sql import SqlSources"
    )
    optional = ["sqlglot", "duckdb", "opendp", "opa_client", "aiohttp", "pyld"]
    assert loaded_after(code, optional) == []
    # And the checks load them when asked for.
    from connector import compute
    from connector.sources.sql import SqlConnection, SqlSources

    assert compute.parse_query is not None
    query = SqlSources({"db": SqlConnection("db", "postgresql://u@h/d")}).check(
        "db", "SELECT id FROM t", ["id"]
    )
    assert query.columns == ("id",)
