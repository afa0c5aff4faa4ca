"""DSP messages as JSON-LD: local contexts, expansion, compaction and schema validation.

Every incoming message is expanded with the bundled contexts (no document is ever fetched
from the network: a context the bundle does not hold refuses the message), its expanded
``@type`` checked, then compacted again with the DSP 2025-1 context and validated against
the protocol's JSON Schema — all before any handler sees it. Handlers read the compacted
form, so a sender's choice of prefixes or term spellings cannot change what is read.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any, cast

import jsonschema_rs
from frozendict import frozendict
from pyld import jsonld
from pyld.context_resolver import ContextResolver
from pyld.resolved_context import ResolvedContext

from connector.errors import InvalidRequest
from connector.negotiation.dsp import CONTEXT

__all__ = [
    "CONTEXT",
    "CONTEXT_URL",
    "DSPACE",
    "check_outgoing",
    "read_message",
    "schema_for",
]

CONTEXT_URL = CONTEXT[0]  # the renderings' context (connector.negotiation.dsp)
DSPACE = "https://w3id.org/dspace/2025/1/"
_ODRL_PROFILE_URL = "https://w3id.org/dspace/2025/1/odrl-profile.jsonld"
_RESOURCES = resources.files("connector.dsp") / "resources"
_CONTEXT_FILES = {CONTEXT_URL: "context/dspace.jsonld", _ODRL_PROFILE_URL: "context/odrl.jsonld"}

# Which schema each message type is validated against (the schemas' own file names).
_SCHEMAS = {
    "CatalogRequestMessage": "catalog/catalog-request-message-schema.json",
    "DatasetRequestMessage": "catalog/dataset-request-message-schema.json",
    "Catalog": "catalog/catalog-schema.json",
    "Dataset": "catalog/dataset-schema.json",
    "CatalogError": "catalog/catalog-error-schema.json",
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": (
        "negotiation/contract-agreement-verification-message-schema.json"
    ),
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractNegotiationTerminationMessage": (
        "negotiation/contract-negotiation-termination-message-schema.json"
    ),
    "ContractNegotiation": "negotiation/contract-negotiation-schema.json",
    "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
    "TransferRequestMessage": "transfer/transfer-request-message-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferCompletionMessage": "transfer/transfer-completion-message-schema.json",
    "TransferSuspensionMessage": "transfer/transfer-suspension-message-schema.json",
    "TransferTerminationMessage": "transfer/transfer-termination-message-schema.json",
    "TransferProcess": "transfer/transfer-process-schema.json",
    "TransferError": "transfer/transfer-error-schema.json",
    "VersionResponse": "common/protocol-version-schema.json",
}


def _bundled(url: str) -> dict[str, Any]:
    name = _CONTEXT_FILES.get(url.rstrip("#"))
    if name is None:
        raise InvalidRequest(
            f"JSON-LD context {url!r} is not one this connector resolves: use "
            f"{CONTEXT_URL!r} (the DSP 2025-1 context)"
        )
    return cast(dict[str, Any], json.loads((_RESOURCES / name).read_text()))


@functools.cache
def _context_text(url: str) -> str:
    """A bundled context as served to pyld (JSON text: each load parses a fresh copy).

    The DSP context's scoped contexts ``@import`` the ODRL profile; here each import is
    resolved once, as JSON-LD 1.1 defines it (Context Processing, 5.6: the imported
    context's entries, replaced by the importing context's own where both have one).
    pyld would do the same merge on every message, and does it badly: it writes the
    importing scope's terms into the imported document it holds, so every scope's terms
    reached every other (a ContractAgreementMessage kept a ``callbackAddress``, which its
    scope does not define), and it keys a merged result by the active context alone, so
    the DSP context could not be kept processed between messages (a shared import handed
    one scope's terms to another). With no import left, the whole DSP context is a static
    document pyld processes once and keeps. ``tests/unit/dsp/test_jsonld.py`` checks every
    example reads the same as with pyld's own import, uncached.
    """
    document = _bundled(url)
    if url.rstrip("#") == CONTEXT_URL:
        profile = _bundled(_ODRL_PROFILE_URL)["@context"]
        for definition in document["@context"].values():
            scoped = definition.get("@context") if isinstance(definition, dict) else None
            if isinstance(scoped, dict) and "@import" in scoped:
                if scoped["@import"] != _ODRL_PROFILE_URL:
                    raise AssertionError(f"the bundled DSP context imports {scoped['@import']}")
                merged = {**profile, **scoped}
                del merged["@import"]
                definition["@context"] = merged
    return json.dumps(document)


def _load_document(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """pyld document loader: bundled contexts only, never the network.

    The DSP context (its imports resolved, see ``_context_text``) is tagged ``static``,
    so pyld resolves and processes it once and keeps it between messages (its shared
    cache takes only tagged remote contexts); untagged, every expansion and compaction
    canonicalised and processed the whole document again. The ODRL profile, named
    directly by a message, is small and loaded per operation. Every load is a fresh
    copy: pyld writes into the documents it is given.
    """
    document = {
        "contextUrl": None,
        "documentUrl": url,
        "document": json.loads(_context_text(url)),
    }
    if url.rstrip("#") == CONTEXT_URL:
        document["tag"] = "static"
    return document


class _Resolver(ContextResolver):  # type: ignore[misc]
    """pyld's context resolver, keying an inline context by ``json.dumps`` of it.

    pyld keys each context object it resolves (the DSP context's type-scoped contexts,
    resolved again for every node of those types, every message) by its JCS
    canonicalisation, done in pure Python: a fifth of reading a message went there.
    Sorted-key JSON from the C encoder names the same objects the same way (a cache key
    only; the resolved context is pyld's own, and kept in pyld's cache as before).
    """

    def resolve(
        self, active_ctx: Any, context: Any, base: Any, cycles: Any = None
    ) -> list[ResolvedContext]:
        if isinstance(context, dict) and "@context" in context:
            context = context["@context"]
        contexts = context if isinstance(context, list) else [context]
        resolved: list[ResolvedContext] = []
        for ctx in contexts:
            if not isinstance(ctx, dict):  # URLs, null, errors: as pyld does
                resolved.extend(super().resolve(active_ctx, [ctx], base, cycles))
                continue
            try:
                key = json.dumps(ctx, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            except (TypeError, ValueError):  # not plain JSON: as pyld does
                resolved.extend(super().resolve(active_ctx, [ctx], base, cycles))
                continue
            found = self._get(key)
            if not found:
                found = ResolvedContext(ctx)
                self._cache_resolved_context(key, found, "static")
            resolved.append(found)
        return resolved


_COMPACTED_IRIS: dict[tuple[Any, ...], Any] = {}
"""``_Processor``'s memory: (context id, IRI, flags) -> the compacted IRI."""

_SCOPE_BASES: dict[str, dict[str, Any]] = {}
"""``_Processor``'s memory: processed context id -> its child for a type-scoped context
(a clone remembering it as ``previousContext``, with an id of its own)."""


class _Processor(jsonld.JsonLdProcessor):  # type: ignore[misc]
    """pyld's processor, remembering how an IRI with no value compacts in a context, and
    keeping the type-scoped contexts it processes.

    A type-scoped context (each DSP message type has one) does not propagate: pyld
    processes it on a clone of the active context that remembers the context to return
    to, and gives that clone a fresh id. Processed contexts are kept by the id of the
    context they were processed on, so a fresh id each time meant the scoped context was
    processed again for every message whose node reached it with such a context (an
    event message or a ``ContractNegotiation``: four clones and ten term definitions
    each), and the inverse context compaction needs built again for the result. Here
    the clone of a processed (frozen) context is made once and kept (bounded), so its id
    is stable and pyld's own cache finds what it processed on it before: the same
    clone, the same scoped context, the same result (``_process_context`` below).

    Compacting an IRI (a type, an ``@id``, a vocabulary value) that no term names walks
    every term of the context twice (the DSP context with its ODRL profile has 92), and a
    message's types and vocabulary values are the same every time. Without a value the
    result depends only on the active context (by pyld's own id of it), the IRI and the
    flags, so it is kept (bounded); calls with a value are pyld's, unchanged.
    """

    def _compact_iri(
        self,
        active_ctx: Any,
        iri: Any,
        value: Any = None,
        vocab: bool = False,
        base: Any = None,
        reverse: bool = False,
    ) -> Any:
        if (
            value is not None
            or not isinstance(iri, str)
            or not isinstance(base, str | None)
            # Processed contexts only: frozen, and named by their _uuid (as pyld's own
            # inverse contexts are kept by it).
            or not isinstance(active_ctx, frozendict)
            or "_uuid" not in active_ctx
        ):
            return super()._compact_iri(active_ctx, iri, value, vocab, base, reverse)
        key = (active_ctx["_uuid"], iri, vocab, base, reverse)
        known = _COMPACTED_IRIS.get(key)
        if known is None:
            known = super()._compact_iri(active_ctx, iri, value, vocab, base, reverse)
            if len(_COMPACTED_IRIS) >= 8192:
                _COMPACTED_IRIS.clear()
            _COMPACTED_IRIS[key] = known
        return known

    def _process_context(
        self, active_ctx: Any, local_ctx: Any, options: Any, *args: Any, **kwargs: Any
    ) -> Any:
        propagate = kwargs.get("propagate", args[1] if len(args) > 1 else True)
        if (
            propagate is False
            and isinstance(active_ctx, frozendict)
            and "_uuid" in active_ctx
            and not active_ctx.get("previousContext")
            and local_ctx  # none: pyld clones the context as it is
            # Inline contexts only, none saying @propagate (which decides otherwise).
            and all(_silent_on_propagation(c) for c in _contexts(local_ctx))
        ):
            # What pyld would process it on: a clone remembering ``active_ctx`` (given its
            # previousContext, pyld clones no more and processes on this one), but the
            # same clone each time, under one id.
            base = _SCOPE_BASES.get(active_ctx["_uuid"])
            if base is None:
                base = self._clone_active_context(active_ctx)
                base["previousContext"] = active_ctx
                base["_uuid"] = f"{active_ctx['_uuid']}/scope"
                if len(_SCOPE_BASES) >= 4096:
                    _SCOPE_BASES.clear()
                _SCOPE_BASES[active_ctx["_uuid"]] = base
            active_ctx = base
        return super()._process_context(active_ctx, local_ctx, options, *args, **kwargs)


def _silent_on_propagation(context: Any) -> bool:
    """Whether ``context`` is an inline context object that does not say ``@propagate``."""
    if not isinstance(context, dict | frozendict) or "@propagate" in context:
        return False
    inner = context.get("@context", context)
    return isinstance(inner, dict | frozendict) and "@propagate" not in inner


def _contexts(local_ctx: Any) -> list[Any]:
    """A local context as the list of contexts pyld processes (``_process_context``)."""
    if isinstance(local_ctx, dict | frozendict) and isinstance(local_ctx.get("@context"), list):
        return list(local_ctx["@context"])
    return list(local_ctx) if isinstance(local_ctx, list) else [local_ctx]


def _options() -> dict[str, Any]:
    """pyld options of one read: bundled contexts only, the faster resolver, sharing
    pyld's cache of resolved contexts (module-private in pyld, hence the attribute)."""
    return {
        "documentLoader": _load_document,
        "contextResolver": _Resolver(jsonld._resolved_context_cache, _load_document),
    }


@functools.cache
def _type_iri(name: str) -> str:
    """The IRI the DSP context gives a type's compact name (``Catalog`` is ``dcat:Catalog``)."""
    node = jsonld.expand({"@context": CONTEXT, "@type": name}, {"documentLoader": _load_document})
    return cast(str, node[0]["@type"][0])


def _schema_text(name: str) -> dict[str, Any]:
    # The published schemas write some references '#definitions/…' (no slash): a JSON
    # Pointer needs '#/definitions/…'.
    text = re.sub(r"#definitions/", "#/definitions/", (_RESOURCES / name).read_text())
    return cast(dict[str, Any], json.loads(text))


@functools.cache
def _registry() -> jsonschema_rs.Registry:
    schemas = [
        _schema_text(f"{folder}/{entry.name}")
        for folder in ("catalog", "common", "negotiation", "transfer")
        for entry in (_RESOURCES / folder).iterdir()
        if entry.name.endswith("-schema.json")
    ]
    return jsonschema_rs.Registry([(s["$id"], s) for s in schemas])


@functools.cache
def schema_for(message_type: str) -> jsonschema_rs.Draft201909Validator:
    """The validator of one DSP message type (``Catalog``, ``ContractRequestMessage``…),
    compiled once.

    jsonschema-rs, not the pure-Python ``jsonschema``: the schemas are ``allOf`` and
    ``$ref`` all the way down, and ``jsonschema`` resolved every reference again on every
    message (an agreement message took about 1.5 ms of CPU to validate, against microseconds
    compiled). ``offline``: every reference resolves within the bundled schemas, or the
    validator cannot be built — nothing is fetched. ``tests/unit/dsp/test_jsonld.py``
    checks it agrees with ``jsonschema`` on the specification's examples and on broken
    ones.
    """
    return jsonschema_rs.Draft201909Validator(
        _schema_text(_SCHEMAS[message_type]), registry=_registry(), offline=True
    )


def _schema_errors(message_type: str, document: dict[str, Any]) -> list[str]:
    validator = schema_for(message_type)
    if validator.is_valid(document):
        return []
    errors = sorted(
        validator.iter_errors(document), key=lambda e: [str(p) for p in e.instance_path]
    )
    # A message is cut short: some validators echo the whole instance.
    return [
        f"{'/'.join(str(p) for p in e.instance_path) or '(message)'}: "
        + (
            e.message
            if len(e.message) <= 160
            else f"fails '{e.schema_path[-1] if e.schema_path else 'schema'}' ({e.message[-80:]})"
        )
        for e in errors[:3]
    ]


def check_outgoing(message_type: str, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` if it validates as ``message_type``; a bug of ours otherwise."""
    errors = _schema_errors(message_type, document)
    if errors:
        raise AssertionError(f"tds built a {message_type} that fails its schema: {errors}")
    return document


def _refusal_in(exc: BaseException) -> InvalidRequest | None:
    """The loader's refusal, however deep pyld wrapped it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, InvalidRequest):
            return current
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def read_message(body: Any, *expected: str) -> dict[str, Any]:
    """An incoming message, expanded, type-checked, compacted with the DSP context and
    validated against its schema; ``InvalidRequest`` saying what is wrong otherwise.

    ``expected``: the message types this endpoint takes (compact names).
    """
    if not isinstance(body, dict):
        raise InvalidRequest("a DSP message is a JSON object")
    if "@context" not in body:
        raise InvalidRequest(f"the message has no @context; give {CONTEXT!r}")
    options = _options()
    try:
        expanded = _Processor().expand(body, options)
    except InvalidRequest:
        raise
    except jsonld.JsonLdError as exc:
        refusal = _refusal_in(exc)
        if refusal is not None:  # our document loader refused a context
            raise refusal from None
        raise InvalidRequest(f"the message is not valid JSON-LD: {exc.type}") from None
    if len(expanded) != 1:
        raise InvalidRequest("a DSP message is one JSON-LD node")
    types = expanded[0].get("@type", [])
    wanted = {_type_iri(name): name for name in expected}
    found = [wanted[t] for t in types if t in wanted]
    if len(types) != 1 or not found:
        raise InvalidRequest(
            f"this endpoint takes {' or '.join(expected)}; the message's @type is "
            f"{', '.join(types) or 'missing'}"
        )
    message_type = found[0]
    try:
        # ``skipExpansion``: the input is pyld's own expansion, just made; left to itself
        # ``compact`` expands it again (a third of its time, for nothing).
        compacted = _Processor().compact(expanded, CONTEXT_URL, {**options, "skipExpansion": True})
    except jsonld.JsonLdError as exc:
        raise InvalidRequest(f"the message cannot be compacted: {exc.type}") from None
    compacted["@context"] = CONTEXT
    errors = _schema_errors(message_type, compacted)
    if errors:
        raise InvalidRequest(f"the {message_type} fails its DSP 2025-1 schema: {'; '.join(errors)}")
    return cast(dict[str, Any], compacted)
