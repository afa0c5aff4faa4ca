"""Internal: the regopy calls on the decision path, made directly.

Per decision, regopy's own wrappers cost about as much as evaluating the policy: its
input conversion walks the value with abstract-base-class checks and one ctypes call per
scalar (each releasing the GIL), and its ``Output`` serialises the result to JSON four
times (size and text, twice). Here the input is built with exact type dispatch through
functions declared once that keep the GIL (``_input_functions``), the query goes through
cffi, and the result is serialised once into a reused buffer.

Strings are handed over escaped. rego-cpp holds a string as the text between the quotes
of its JSON form (that is what its own JSON reader stores) and writes results by pasting
that text between quotes, while its C input functions store what they are given as is.
A string with a quote, a backslash or a control character given raw would come back as
broken JSON, or as JSON with different structure: a purpose a consumer chose, echoed in a
provider module's denial, could turn that denial into an allow. Escaped, every string
reads and compares as rego-cpp's own JSON input does, and results parse to the text that
went in.
"""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

import regopy

__all__ = ["QueryError", "UnrepresentableInput", "query_entrypoint", "to_input"]

_CDEF = """
void* regoBundleQueryEntrypoint(void*, void*, const char*);
_Bool regoOutputOk(void*);
uint32_t regoOutputJSONSize(void*);
uint32_t regoOutputJSON(void*, char*, uint32_t);
void regoFreeOutput(void*);
"""


def _input_functions(path: str) -> Any:
    """rego-cpp's input-building functions through ctypes' ``PyDLL``, which calls them
    holding the GIL.

    A page of a catalog builds its input in some 35,000 calls of a microsecond each. cffi
    releases the GIL around every call and takes it back after: with any other Python
    thread of the process running (another request), each call then waits for the GIL,
    and measured with one busy thread beside it, a 770-product page's input took about
    four times as long as alone. These calls are too short to be worth releasing it for;
    the query, which is long, still goes through cffi and releases it. Alone, the two
    cost the same CPU (43-47 ms against 46-54 ms for that page here).
    """
    lib = ctypes.PyDLL(path)
    p, text, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32
    for name, args in (
        ("regoNewInput", ()),
        ("regoInputString", (p, text)),
        ("regoInputInt", (p, ctypes.c_int64)),
        ("regoInputFloat", (p, ctypes.c_double)),
        ("regoInputBoolean", (p, ctypes.c_bool)),
        ("regoInputNull", (p,)),
        ("regoInputObjectItem", (p,)),
        ("regoInputObject", (p, size)),
        ("regoInputArray", (p, size)),
        ("regoFreeInput", (p,)),
    ):
        function = getattr(lib, name)
        function.argtypes = args
        function.restype = p if name == "regoNewInput" else size
    lib.regoFreeInput.restype = None
    return lib


try:  # the library regopy itself loaded; without it, regopy does the work as usual
    import cffi
    from regopy import rego_shared

    _ffi = cffi.FFI()
    _ffi.cdef(_CDEF)
    _C: Any = _ffi.dlopen(rego_shared.rego._name)
except (ImportError, AttributeError, OSError):  # pragma: no cover - depends on the build
    _C = None
else:
    _IN = _input_functions(rego_shared.rego._name)
    _string, _boolean, _int = _IN.regoInputString, _IN.regoInputBoolean, _IN.regoInputInt
    _item, _object, _array = _IN.regoInputObjectItem, _IN.regoInputObject, _IN.regoInputArray

_INT64 = 2**63
_BUFFER_BYTES = 64 * 1024
_buffers = threading.local()


class _Unsupported(Exception):
    pass


class UnrepresentableInput(ValueError):
    """The document holds something rego-cpp cannot hold faithfully (the message says what)."""


class QueryError(Exception):
    """The interpreter refused the query (its error message says why)."""


def _add(p: Any, value: Any) -> int:
    """Push ``value`` onto the input under construction; non-zero on a C error."""
    t = type(value)
    if t is str:
        return int(_string(p, _text(value)))
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Unsupported("an object key that is not a string")
            if _string(p, _text(k)) or _add(p, v) or _item(p):
                return 1
        return int(_object(p, len(value)))
    if t is bool:
        return int(_boolean(p, value))
    if t is int:
        if not -_INT64 <= value < _INT64:
            raise _Unsupported("an integer outside 64 bits")
        return int(_int(p, value))
    if t is list:
        for v in value:
            if _add(p, v):
                return 1
        return int(_array(p, len(value)))
    if value is None:
        return int(_IN.regoInputNull(p))
    if t is float:
        return int(_IN.regoInputFloat(p, value))
    raise _Unsupported(f"a value of type {t.__name__}")


# Keys and most values (field names, purposes, grades, ids) recur from one decision to the
# next: their converted form is kept, bounded, rather than worked out again.
_TEXT_CACHE: dict[str, bytes] = {}
_TEXT_CACHE_ENTRIES = 4096
_TEXT_CACHE_LONGEST = 128


def _text(value: str) -> bytes:
    """``value`` as rego-cpp holds a string: its JSON form without the quotes, UTF-8."""
    held = _TEXT_CACHE.get(value)
    if held is not None:
        return held
    text = value
    if '"' in text or "\\" in text or not text.isprintable():
        text = json.dumps(text, ensure_ascii=False)[1:-1]
    try:
        converted = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: not text JSON can carry
        raise _Unsupported("a string that is not valid Unicode") from None
    if len(value) <= _TEXT_CACHE_LONGEST and len(_TEXT_CACHE) < _TEXT_CACHE_ENTRIES:
        _TEXT_CACHE[value] = converted
    return converted


def _escaped(value: Any) -> Any:
    """A copy of ``value`` with every string as ``_text`` gives it (for regopy's converter)."""
    if isinstance(value, str):
        return _text(value).decode()
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


# rego-cpp finds an object's member by comparing keys one by one, in the order they were
# added, and each comparison formats both keys as text: looking up the last of eight keys
# costs about eight times the first. So a document's sections, and each section's fields,
# go in the order the library reads them on its hottest paths (a transfer's usage check,
# then catalog reads); members not named here follow in their own order. Order carries no
# meaning in a JSON object, so decisions are the same either way.
LOOKUP_ORDER: dict[str, tuple[str, ...]] = {
    "": ("action", "contract", "context", "resource", "offer", "subject"),
    "contract": (
        "revoked",
        "valid_from_ns",
        "valid_until_ns",
        "max_transfers",
        "max_bytes",
        "permitted_fields",
        "masks",
        "obligations",
        "purpose",
    ),
    "context": ("now_ns", "transfers_used", "bytes_used", "revoked", "request_bytes", "consent"),
    "resource": ("grade", "fields", "registration_code", "personal", "owner", "access", "tags"),
    "offer": ("policy_module", "purposes", "valid_from_ns", "valid_until_ns", "obligations"),
    "subject": ("id", "role", "attrs", "grants"),
}


def _ordered(value: dict[Any, Any], first: tuple[str, ...]) -> dict[Any, Any]:
    """``value`` with the members named in ``first`` ahead of the rest."""
    ordered = {k: value[k] for k in first if k in value}
    ordered.update(value)  # the rest follow; the members already placed keep their place
    return ordered


def _laid_out(document: dict[Any, Any]) -> dict[Any, Any]:
    """``document`` in ``LOOKUP_ORDER``: its sections, and each section's fields."""
    laid = _ordered(document, LOOKUP_ORDER[""])
    for section, first in LOOKUP_ORDER.items():
        if section and type(laid.get(section)) is dict:
            laid[section] = _ordered(laid[section], first)
    return laid


def to_input(value: Any) -> regopy.Input | Any:
    """A prepared ``regopy.Input`` for ``value`` (without cffi, an escaped copy for regopy).

    Raises ``UnrepresentableInput`` for what rego-cpp cannot hold faithfully.
    """
    if _C is None:
        try:
            return _escaped(value)
        except _Unsupported as exc:
            raise UnrepresentableInput(str(exc)) from None
    p = _IN.regoNewInput()
    if not p:
        raise UnrepresentableInput("the policy engine could not start an input")
    try:
        failed = _add(p, _laid_out(value) if type(value) is dict else value)
    except (_Unsupported, RecursionError) as exc:
        _IN.regoFreeInput(p)
        raise UnrepresentableInput(str(exc) or "a document nested too deeply") from None
    if failed:
        _IN.regoFreeInput(p)
        raise UnrepresentableInput("the policy engine refused the document")
    prepared = regopy.Input.__new__(regopy.Input)
    prepared._impl = int(p)  # regopy frees it (Input.__del__)
    return prepared


def query_entrypoint(
    rego: regopy.Interpreter, bundle: regopy.Bundle, entrypoint: str
) -> tuple[bool, list[Any]]:
    """Query a prepared entrypoint: (evaluation ok, the result expressions).

    Raises ``QueryError`` when the interpreter refuses the query itself.
    """
    if _C is None:
        try:
            output = rego.query_bundle_entrypoint(bundle, entrypoint)
        except regopy.RegoError as exc:
            raise QueryError(str(exc)) from None
        if not output.ok():
            return False, []
        return True, [r.expressions for r in output.results]
    out = _C.regoBundleQueryEntrypoint(
        _ffi.cast("void*", rego._impl), _ffi.cast("void*", bundle._impl), entrypoint.encode()
    )
    if out == _ffi.NULL:
        raise QueryError(regopy.rego_shared.rego_get_error(rego._impl))
    try:
        if not _C.regoOutputOk(out):
            return False, []
        text = _output_json(out)
    finally:
        _C.regoFreeOutput(out)
    if text == "undefined":
        return True, []
    # strict=False: a policy's raw (backquoted) strings can hold control characters as is.
    results = json.loads(text, strict=False)
    if not isinstance(results, list):
        results = [results]
    return True, [r.get("expressions", []) for r in results if isinstance(r, dict)]


def _output_json(out: Any) -> str:
    """The output as JSON text, written once into this thread's buffer when it fits."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = _ffi.new("char[]", _BUFFER_BYTES)
    if _C.regoOutputJSON(out, buffer, _BUFFER_BYTES) != 0:  # too big for the buffer
        size = _C.regoOutputJSONSize(out)
        buffer = _ffi.new("char[]", size)
        if _C.regoOutputJSON(out, buffer, size) != 0:
            raise QueryError("could not read the policy's output")
    return str(_ffi.string(buffer).decode())
