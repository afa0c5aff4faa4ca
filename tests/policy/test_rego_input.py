"""The embedded engine's input builder: what rego-cpp sees is exactly the document.

The builder reorders object members so that rego-cpp's linear member lookup finds the
fields the library reads first; these tests check that nothing is lost, added or
changed on the way, whatever the document holds, and that member order never changes
a decision.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import regopy
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.policy import EmbeddedEngine, PolicySet
from connector.policy._rego_c import LOOKUP_ORDER, Prepared, query_entrypoint, to_input
from tests.policy.cases import CASES
from tests.policy.test_catalog_list import NOW, SUBJECTS, resources

ECHO = "package probe\n\nimport rego.v1\n\nseen := input\n"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# Sections named in LOOKUP_ORDER, holding some of the fields it names and some it does not.
known_fields = st.sampled_from(sorted({f for fields in LOOKUP_ORDER.values() for f in fields}))
sections = st.dictionaries(st.one_of(known_fields, st.text(max_size=6)), values, max_size=6)
documents = st.dictionaries(
    st.one_of(st.sampled_from(LOOKUP_ORDER[""]), st.text(max_size=6)),
    st.one_of(sections, values),
    max_size=8,
)


@pytest.fixture(scope="module")
def echo() -> tuple[regopy.Interpreter, regopy.Bundle]:
    rego = regopy.Interpreter()
    rego.add_module("probe.rego", ECHO)
    return rego, rego.build(None, ["probe/seen"])


@settings(max_examples=150, deadline=None)
@given(document=documents)
def test_rego_sees_the_document_unchanged(
    echo: tuple[regopy.Interpreter, regopy.Bundle], document: dict[str, Any]
) -> None:
    rego, bundle = echo
    rego.set_input(to_input(document))
    ok, results = query_entrypoint(rego, bundle, "probe/seen")
    assert ok and results == [[document]]


@settings(max_examples=100, deadline=None)
@given(document=documents, items=st.lists(values, max_size=5), key=st.text(max_size=6))
def test_a_member_converted_ahead_reads_as_the_same_document(
    echo: tuple[regopy.Interpreter, regopy.Bundle],
    document: dict[str, Any],
    items: list[Any],
    key: str,
) -> None:
    rego, bundle = echo
    expected = {**document, key: items}
    prepared = Prepared(key, [*items])
    held = {**document, key: prepared}
    for _ in range(2):  # the conversion made ahead once, then as any list
        rego.set_input(to_input(held))
        ok, results = query_entrypoint(rego, bundle, "probe/seen")
        assert ok and results == [[expected]]
        assert prepared.take() is None


def test_a_member_prepared_under_another_key_is_converted_as_it_stands(
    echo: tuple[regopy.Interpreter, regopy.Bundle],
) -> None:
    rego, bundle = echo
    prepared = Prepared("resources", [{"id": "x"}])
    rego.set_input(to_input({"action": "catalog.list", "other": prepared}))
    ok, results = query_entrypoint(rego, bundle, "probe/seen")
    assert ok and results == [[{"action": "catalog.list", "other": [{"id": "x"}]}]]
    assert prepared.take() is not None  # its own conversion was not used (nor lost)


def test_a_prepared_page_decides_as_the_page(policy_set: PolicySet) -> None:
    engine = EmbeddedEngine(policy_set)
    page = resources(random.Random(7), 60)
    for subject in SUBJECTS:
        document = {
            "action": "catalog.list",
            "subject": subject,
            "resources": page,
            "context": {"now_ns": NOW, "revoked_grants": []},
        }
        as_list = engine.decide(document).as_json()
        prepared = {**document, "resources": engine.prepare("resources", [*page])}
        assert isinstance(prepared["resources"], Prepared)
        ahead = engine.decide(prepared).as_json()
        assert ahead.pop("id") and as_list.pop("id")
        assert ahead == as_list  # the input hash too: the same document
        assert 0 < len(as_list["visible_ids"]) < len(page)


def test_what_rego_cannot_hold_is_refused_when_prepared_too(policy_set: PolicySet) -> None:
    engine = EmbeddedEngine(policy_set)
    resource = {"id": "p", "owner": "gov", "grade": "general", "tags": [], "fields": []}
    resource |= {"registration_code": "", "personal": False, "size": 2**70}
    document = {
        "action": "catalog.list",
        "subject": {"id": "a", "role": "enterprise", "attrs": {}, "grants": []},
        "resources": engine.prepare("resources", [resource]),
        "context": {"now_ns": 1, "revoked_grants": []},
    }
    decision = engine.decide(document)
    assert not decision.allow and decision.deny == ("invalid_input",)


def reversed_members(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reversed_members(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reversed_members(v) for v in value]
    return value


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_member_order_never_changes_a_decision(policy_set: PolicySet, case: Any) -> None:
    engine = EmbeddedEngine(policy_set)
    as_given = engine.decide(case.input).as_json()
    reordered = engine.decide(reversed_members(case.input)).as_json()
    for provenance in ("id", "input_sha256"):
        as_given.pop(provenance), reordered.pop(provenance)
    assert reordered == as_given


def test_remembered_strings_are_bounded_and_converted_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connector.policy import _rego_c

    monkeypatch.setattr(_rego_c, "_TEXT_CACHE", {})
    odd = 'a "quoted"\\ value\n'
    first, again = _rego_c._text(odd), _rego_c._text(odd)  # the second from memory
    assert first == again == b'a \\"quoted\\"\\\\ value\\n'
    for i in range(_rego_c._TEXT_CACHE_ENTRIES + 100):
        _rego_c._text(f"value-{i}")
    assert len(_rego_c._TEXT_CACHE) <= _rego_c._TEXT_CACHE_ENTRIES
    long = "x" * (_rego_c._TEXT_CACHE_LONGEST + 1)
    _rego_c._text(long)
    assert long not in _rego_c._TEXT_CACHE
