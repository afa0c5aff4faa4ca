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


def test_building_the_parser_imports_nothing_of_the_server_stack() -> None:
    probe = (
        "import json, sys\n"
        "from connector.cli.main import build_parser\n"
        "build_parser()\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_the_lazy_package_names_still_resolve() -> None:
    from connector.audit import TransparencyLog
    from connector.catalog import Catalog
    from connector.node import Node
    from connector.policy import EmbeddedEngine, OpaServerEngine, load_library

    assert all((TransparencyLog, Catalog, Node, EmbeddedEngine, OpaServerEngine, load_library))
    import connector.policy

    with pytest.raises(AttributeError, match="NoSuchThing"):
        connector.policy.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
