"""The policy engine interface, and the one call the connector makes."""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from connector.policy.decision import (
    ENGINE_ERROR,
    INVALID_INPUT,
    Decision,
    input_digest,
    parse_decision,
)
from connector.policy.library import PolicySet
from connector.policy.shape import input_problems

__all__ = ["EngineBase", "Failure", "PolicyEngine", "evaluating", "meanwhile"]

log = logging.getLogger(__name__)

_meanwhile = threading.local()


def meanwhile(work: Callable[[], None] | None) -> None:
    """Give the next decision on this thread ``work`` to start when its evaluation starts
    (``evaluating``); ``None`` gives none."""
    _meanwhile.work = work


def evaluating() -> None:
    """Called by an engine once it holds the document and starts evaluating it: starts the
    work the decision's caller gave to overlap the evaluation (``meanwhile``), once, on
    this thread. That work only saves time later: should it fail, the decision does not
    (nor is it told)."""
    work = getattr(_meanwhile, "work", None)
    if work is not None:
        _meanwhile.work = None
        try:
            work()
        except Exception:  # see above: nothing depends on it
            log.debug("work beside an evaluation failed to start", exc_info=True)


class PolicyEngine(Protocol):
    """Evaluates the tds policy set; never raises for engine trouble, it denies."""

    name: str

    @property
    def revision(self) -> str:
        """The revision of the policy set in force."""
        ...

    def decide(self, document: Mapping[str, Any]) -> Decision:
        """The decision for one input document (DESIGN §5)."""
        ...

    def update(self, policy: PolicySet) -> None:
        """Put a new policy set in force (for example with a provider's module)."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...


@dataclass(frozen=True)
class Failure:
    """Why an engine produced no result: a deny reason and a detail for the logs."""

    reason: str
    detail: str = ""


class EngineBase(ABC):
    """What every engine does around its evaluation: provenance, input checks, deny on error."""

    name = "base"

    def __init__(self, policy: PolicySet) -> None:
        self._policy = policy

    @property
    def revision(self) -> str:
        """The revision of the policy set in force."""
        return self._policy.revision

    def prepare(self, key: str, items: list[Any]) -> list[Any]:
        """``items``, to be member ``key`` of a document decided later, in whatever form
        this engine takes it fastest (the same list's content: the decision and its input
        hash are those of ``items``). Here, as it is."""
        return items

    @abstractmethod
    def _evaluate(self, document: dict[str, Any]) -> Any:
        """The raw decision document, or a ``Failure`` (each engine evaluates its own way)."""

    def decide(self, document: Mapping[str, Any]) -> Decision:
        """The decision for ``document``; any failure is a deny with its reason."""
        revision = self._policy.revision
        try:
            digest = input_digest(document)  # also the check that the input is JSON
        except (TypeError, ValueError) as exc:
            return Decision.refuse(
                INVALID_INPUT,
                revision=revision,
                engine=self.name,
                input_sha256=hashlib.sha256(repr(document).encode()).hexdigest(),
                detail=str(exc),
            )
        problems = input_problems(document)
        if problems:
            return Decision.refuse(
                INVALID_INPUT,
                revision=revision,
                engine=self.name,
                input_sha256=digest,
                detail="missing or mistyped in the policy input: " + ", ".join(problems),
            )
        try:
            outcome = self._evaluate(dict(document))
        except Exception as exc:  # an engine fault must deny, whatever it is
            outcome = Failure(ENGINE_ERROR, f"{exc.__class__.__name__}: {exc}"[:300])
        if isinstance(outcome, Failure):
            return Decision.refuse(
                outcome.reason,
                revision=revision,
                input_sha256=digest,
                engine=self.name,
                detail=outcome.detail,
            )
        return parse_decision(outcome, revision=revision, input_sha256=digest, engine=self.name)
