"""Store contract tests: each runs once per supported database (``database_url``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector.store.database import Database, open_database


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A freshly migrated database of the kind under test, closed afterwards."""
    database = open_database(database_url)
    yield database
    database.close()
