"""Compute-to-data delivery (可用不可见): answers computed where the data lives, never rows.

``rules`` holds what an offer lets a consumer ask, ``query`` parses and validates the
consumer's question, ``engine`` runs it on the source (DuckDB over file tables, or the
source database itself) and ``disclosure`` suppresses small groups and adds calibrated
noise before the answer leaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector import lazy

if TYPE_CHECKING:
    from connector.compute.answer import Answer, answer_query
    from connector.compute.query import Query, parse_query
    from connector.compute.rules import ComputeRules, parse_rules

__all__ = ["Answer", "ComputeRules", "Query", "answer_query", "parse_query", "parse_rules"]

# The engines (DuckDB, OpenDP, SQLAlchemy) load on first use: the CLI and the catalog
# only need the rules.
__getattr__ = lazy.exports(
    __name__,
    {
        "Answer": "answer",
        "answer_query": "answer",
        "Query": "query",
        "parse_query": "query",
        "ComputeRules": "rules",
        "parse_rules": "rules",
    },
)
