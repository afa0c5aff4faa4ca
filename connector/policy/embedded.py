"""The embedded engine: Rego evaluated in-process by regopy (rego-cpp).

The policy set is compiled once per revision and thread (a shared interpreter would mix
inputs across threads); each decision sets the input and queries the prepared entrypoint.
Strict builtin errors are on, and every error is a deny.
"""

from __future__ import annotations

import threading
from typing import Any

import regopy

from connector.policy._rego_c import (
    Prepared,
    QueryError,
    UnrepresentableInput,
    query_entrypoint,
    to_input,
)
from connector.policy.decision import ENGINE_ERROR, INVALID_INPUT, UNDEFINED
from connector.policy.engine import EngineBase, Failure, evaluating
from connector.policy.library import ENTRYPOINT, PolicySet

__all__ = ["EmbeddedEngine"]


class _Prepared:
    def __init__(self, policy: PolicySet) -> None:
        self.revision = policy.revision
        self.rego = regopy.Interpreter()
        self.rego.strict_built_in_errors = True
        for name, source in policy.modules.items():
            self.rego.add_module(name, source)
        self.bundle = self.rego.build(None, [ENTRYPOINT])


class EmbeddedEngine(EngineBase):
    """``PolicyEngine`` on regopy, no server."""

    name = "embedded"

    def __init__(self, policy: PolicySet) -> None:
        super().__init__(policy)
        self._local = threading.local()

    def update(self, policy: PolicySet) -> None:
        """Switch to a new policy set; each thread recompiles on its next decision."""
        self._policy = policy

    def prepare(self, key: str, items: list[Any]) -> list[Any]:
        """``items`` converted for rego-cpp now (``Prepared``), on the calling thread: a
        decision whose document holds it under ``key`` converts only the rest."""
        return Prepared(key, items)

    def _prepared(self) -> _Prepared:
        prepared: _Prepared | None = getattr(self._local, "prepared", None)
        if prepared is None or prepared.revision != self._policy.revision:
            prepared = _Prepared(self._policy)
            self._local.prepared = prepared
        return prepared

    def _evaluate(self, document: dict[str, Any]) -> Any:
        prepared = self._prepared()
        if not prepared.bundle.ok():
            return Failure(ENGINE_ERROR, "the policy set did not compile")
        try:
            document_input = to_input(document)
        except UnrepresentableInput as exc:
            return Failure(INVALID_INPUT, f"the embedded engine cannot hold the input: {exc}")
        evaluating()  # the GIL is released from here to the result
        try:
            prepared.rego.set_input(document_input)
            ok, results = query_entrypoint(prepared.rego, prepared.bundle, ENTRYPOINT)
        except (regopy.RegoError, QueryError) as exc:
            return Failure(ENGINE_ERROR, str(exc)[:300])
        if not ok:
            return Failure(ENGINE_ERROR, "policy evaluation failed (builtin or runtime error)")
        if not results or not results[0]:
            return Failure(UNDEFINED, "the policy gave no decision for this input")
        return results[0][0]

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
