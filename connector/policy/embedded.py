"""The embedded engine: Rego evaluated in-process by regopy (rego-cpp).

The policy set is compiled once per revision and thread (a shared interpreter would mix
inputs across threads); each decision sets the input and queries the prepared entrypoint.
Strict builtin errors are on, and every error is a deny.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import regopy

from connector.policy._fast_input import to_input
from connector.policy.decision import (
    ENGINE_ERROR,
    INVALID_INPUT,
    UNDEFINED,
    Decision,
    input_digest,
    parse_decision,
)
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


class EmbeddedEngine:
    """``PolicyEngine`` on regopy, no server."""

    name = "embedded"

    def __init__(self, policy: PolicySet) -> None:
        self._policy = policy
        self._local = threading.local()

    @property
    def revision(self) -> str:
        """The revision in force."""
        return self._policy.revision

    def update(self, policy: PolicySet) -> None:
        """Switch to a new policy set; each thread recompiles on its next decision."""
        self._policy = policy

    def _prepared(self) -> _Prepared:
        prepared: _Prepared | None = getattr(self._local, "prepared", None)
        if prepared is None or prepared.revision != self._policy.revision:
            prepared = _Prepared(self._policy)
            self._local.prepared = prepared
        return prepared

    def decide(self, document: Mapping[str, Any]) -> Decision:
        """Evaluate ``data.tds.main.decision`` for ``document``."""
        digest = input_digest(document)
        revision = self._policy.revision

        def refuse(reason: str, detail: str = "") -> Decision:
            return Decision.refuse(
                reason, revision=revision, input_sha256=digest, engine=self.name, detail=detail
            )

        try:
            json.dumps(document, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return refuse(INVALID_INPUT, str(exc))
        try:
            prepared = self._prepared()
            if not prepared.bundle.ok():
                return refuse(ENGINE_ERROR, "the policy set did not compile")
            prepared.rego.set_input(to_input(dict(document)))
            output = prepared.rego.query_bundle_entrypoint(prepared.bundle, ENTRYPOINT)
        except regopy.RegoError as exc:
            return refuse(ENGINE_ERROR, str(exc)[:300])
        except Exception as exc:  # an engine fault must deny, whatever it is
            return refuse(ENGINE_ERROR, f"{exc.__class__.__name__}: {exc}"[:300])
        if not output.ok():
            return refuse(ENGINE_ERROR, str(output)[:300])
        if not output.results or not output.results[0].expressions:
            return refuse(UNDEFINED, "the policy gave no decision for this input")
        return parse_decision(
            output.results[0].expressions[0],
            revision=revision,
            input_sha256=digest,
            engine=self.name,
        )

    def close(self) -> None:
        """Nothing to release beyond what garbage collection frees."""
