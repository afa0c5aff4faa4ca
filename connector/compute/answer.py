"""The answer that leaves, and what a computation receipt says about it.

``answer_query`` is the whole provider-side path of one question: parse and check it
against the offer's rules, refuse filters that would isolate individuals (offers without
differential privacy), compute the exact groups on the source, apply disclosure control,
and return an ``Answer``: canonical JSON (RFC 8785), its SHA-256, and the fields of the
computation receipt both parties sign (the usage decision, metering of ε and the logs are
the caller's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from connector.audit.canonical import canonical_json
from connector.compute.disclosure import Disclosed, check_isolation, disclose
from connector.compute.engine import Executor, compute_groups
from connector.compute.query import Query, parse_query
from connector.compute.rules import ComputeRules

__all__ = ["Answer", "answer_query"]


@dataclass(frozen=True)
class Answer:
    """A disclosed answer to one validated query under one set of rules."""

    query: Query
    rules: ComputeRules
    disclosed: Disclosed

    def document(self) -> dict[str, Any]:
        """The answer as the consumer receives it."""
        d = self.disclosed
        return {
            "columns": list(d.columns),
            "rows": [list(r) for r in d.rows],
            "suppressed": d.suppressed,
            "epsilon": d.epsilon,
            "delta": d.delta,
        }

    def canonical(self) -> bytes:
        """The answer's canonical JSON (RFC 8785): the bytes that are hashed and sent."""
        return self._canonical

    @cached_property
    def _canonical(self) -> bytes:
        # Made once: the receipt hashes the bytes that are sent.
        return canonical_json(self.document())

    def sha256(self) -> str:
        """Hex SHA-256 of ``canonical()``."""
        return hashlib.sha256(self._canonical).hexdigest()

    def receipt(self, source_state: str) -> dict[str, Any]:
        """The computation receipt's content (``ComputationReceipt``), before signatures.

        ``source_state``: the source's state when it was read (a file's hash, a database's
        version or snapshot marker), as the source reports it.
        """
        return {
            "query": self.query.canonical_text(),
            "query_sha256": self.query.sha256(),
            "rules_sha256": self.rules.sha256(),
            "source_state": source_state,
            "answer_sha256": self.sha256(),
            "rows": len(self.disclosed.rows),
            "suppressed": self.disclosed.suppressed,
            "epsilon_spent": self.disclosed.epsilon,
            "delta": self.disclosed.delta,
        }


def answer_query(
    question: str | Mapping[str, Any] | Query, rules: ComputeRules, executor: Executor
) -> Answer:
    """Answer ``question`` (SQL or the JSON form) on ``executor`` under ``rules``.

    A ``Query`` is taken as ``parse_query`` made it under these same ``rules`` (the
    provider parses a question once, for the usage decision and the answer alike).

    ``InvalidRequest``: the question is refused (the reason says why); ``PermissionDenied``:
    a filter would isolate fewer than ``k`` rows; ``Unavailable``: the source did not
    answer. Nothing is spent in any of these cases.
    """
    query = question if isinstance(question, Query) else parse_query(question, rules)
    check_isolation(query, rules, executor)
    groups = compute_groups(query, rules, executor)
    return Answer(query=query, rules=rules, disclosed=disclose(query, rules, groups))
