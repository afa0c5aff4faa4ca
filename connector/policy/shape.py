"""The shape every policy input must have before any engine sees it.

The Rego library reads these fields without re-checking them: a field a rule needs but
the input lacks, or has with the wrong type, would make that rule silently not apply
(Rego's *undefined*), and a deny that does not apply is an allow. So the connector checks
the fields first, for every engine, and a document that fails is denied with
``invalid_input`` and the list of fields to fix. Checking here costs a few microseconds;
the same checks written in Rego cost about a third of a usage decision in rego-cpp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["input_problems"]

GRADES = ("general", "important", "core")
"""Product grades (数据分级): core data never leaves, important data needs approval."""


def _string(value: Any) -> bool:
    return type(value) is str


def _number(value: Any) -> bool:
    return type(value) in (int, float)  # bool is not a number here, as in JSON


def _boolean(value: Any) -> bool:
    return type(value) is bool


def _array(value: Any) -> bool:
    return type(value) is list


def _grade(value: Any) -> bool:
    return type(value) is str and value in GRADES


_Checks = tuple[tuple[str, str, Any], ...]

# (section, field, check) the library's rules rely on, for every action ...
_COMMON: _Checks = (
    ("subject", "id", _string),
    ("subject", "role", _string),
    ("resource", "id", _string),
    ("resource", "owner", _string),
    ("resource", "grade", _grade),
    ("resource", "registration_code", _string),
    ("resource", "tags", _array),
    ("resource", "fields", _array),
    ("resource", "personal", _boolean),
    ("context", "now_ns", _number),
)

# ... and for each action, the fields its own rules read.
_OWN: dict[str, _Checks] = {
    "catalog.read": (),
    "contract.request": (
        ("offer", "purposes", _array),
        ("offer", "valid_from_ns", _number),
        ("offer", "valid_until_ns", _number),
        ("contract", "purpose", _string),
    ),
    "transfer.start": (
        ("contract", "purpose", _string),
        ("contract", "valid_from_ns", _number),
        ("contract", "valid_until_ns", _number),
        ("contract", "max_transfers", _number),
        ("contract", "max_bytes", _number),
        ("contract", "revoked", _boolean),
        ("context", "transfers_used", _number),
        ("context", "bytes_used", _number),
        ("context", "revoked_grants", _array),
    ),
    "compute.run": (
        ("contract", "purpose", _string),
        ("contract", "valid_from_ns", _number),
        ("contract", "valid_until_ns", _number),
        ("contract", "revoked", _boolean),
        ("contract", "delivery", _array),
        ("context", "epsilon_spent", _number),
        ("context", "epsilon_left", _number),
        ("context", "computations_used", _number),
        ("context", "revoked_grants", _array),
        ("query", "dimensions", _array),
        ("query", "filtered", _array),
        ("query", "measures", _array),
        ("query", "aggregates", _array),
        ("query", "epsilon", _number),
    ),
    # A stream, at subscribe and again at least every 0.25 s while it runs.
    "stream.continue": (
        ("contract", "purpose", _string),
        ("contract", "valid_from_ns", _number),
        ("contract", "valid_until_ns", _number),
        ("contract", "max_bytes", _number),
        ("contract", "max_messages", _number),
        ("contract", "period_max_messages", _number),
        ("contract", "period_max_bytes", _number),
        ("contract", "revoked", _boolean),
        ("context", "bytes_used", _number),
        ("context", "messages_used", _number),
        ("context", "period_messages_used", _number),
        ("context", "period_bytes_used", _number),
        ("context", "revoked_grants", _array),
    ),
}
_BY_ACTION = {action: _COMMON + own for action, own in _OWN.items()}

# A page of a catalog (catalog.list) carries its products as ``resources``, each with the
# fields of a ``resource``.
_SUBJECT_CONTEXT: _Checks = tuple(c for c in _COMMON if c[0] != "resource")
_RESOURCE: _Checks = tuple(c for c in _COMMON if c[0] == "resource")


def input_problems(document: Mapping[str, Any]) -> list[str]:
    """The fields of ``document`` that are missing or mistyped (empty when it is usable).

    An action the library does not know is not a problem of shape: the policy gives no
    decision for it, which is a deny of its own (``undefined``).
    """
    action = document.get("action")
    if type(action) is not str:
        return ["action"]
    if action == "catalog.list":
        return _batch_problems(document)
    problems = []
    for section, name, check in _BY_ACTION.get(action, _COMMON):
        part = document.get(section)
        if type(part) is not dict or not check(part.get(name)):
            problems.append(f"{section}.{name}")
    return problems


def _batch_problems(document: Mapping[str, Any]) -> list[str]:
    """``input_problems`` for a page of resources: the subject, the context, and each
    resource (named by its position)."""
    problems = []
    for section, name, check in _SUBJECT_CONTEXT:
        part = document.get(section)
        if type(part) is not dict or not check(part.get(name)):
            problems.append(f"{section}.{name}")
    resources = document.get("resources")
    if not isinstance(resources, list):  # a list the engine prepared ahead is one too
        return [*problems, "resources"]
    for i, resource in enumerate(resources):
        for _, name, check in _RESOURCE:
            if type(resource) is not dict or not check(resource.get(name)):
                problems.append(f"resources[{i}].{name}")
    return problems
