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
from collections.abc import Callable
from typing import Any

import regopy

__all__ = ["Prepared", "QueryError", "UnrepresentableInput", "query_entrypoint", "to_input"]

_CDEF = """
void* regoBundleQueryEntrypoint(void*, void*, const char*);
_Bool regoOutputOk(void*);
uint32_t regoOutputJSONSize(void*);
uint32_t regoOutputJSON(void*, char*, uint32_t);
void regoFreeOutput(void*);
"""


def _input_functions(path: str, *, holding_gil: bool = True) -> Any:
    """rego-cpp's input-building functions through ctypes: through ``PyDLL``, which calls
    them holding the GIL, or (``holding_gil=False``) ``CDLL``, which releases it around
    each call.

    A page of a catalog builds its input in some 35,000 calls of a microsecond each.
    Releasing the GIL around every call and taking it back after costs little alone, but
    with any other Python thread of the process running (another request) each call then
    waits for the GIL: measured with one busy thread beside it, a 770-product page's input
    took about four times as long as alone. So a decision builds its input holding the
    GIL (the query, which is long, goes through cffi and releases it). Work done ahead
    (``Prepared``, on a thread of its own) releases it instead: there, waiting is what
    should happen, so that the requests being answered are not held up by it.
    """
    lib = ctypes.PyDLL(path) if holding_gil else ctypes.CDLL(path)
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
    _string, _item, _object = _IN.regoInputString, _IN.regoInputObjectItem, _IN.regoInputObject
    _AHEAD = _input_functions(rego_shared.rego._name, holding_gil=False)

_INT64 = 2**63
_BUFFER_BYTES = 64 * 1024
_buffers = threading.local()


class _Unsupported(Exception):
    pass


class UnrepresentableInput(ValueError):
    """The document holds something rego-cpp cannot hold faithfully (the message says what)."""


class QueryError(Exception):
    """The interpreter refused the query (its error message says why)."""


def _adder(lib: Any) -> Callable[[Any, Any], int]:
    """``add(p, value)``, pushing ``value`` onto the input under construction ``p`` through
    ``lib``'s functions (``_input_functions``); non-zero on a C error."""
    string, boolean, integer = lib.regoInputString, lib.regoInputBoolean, lib.regoInputInt
    item, obj, array = lib.regoInputObjectItem, lib.regoInputObject, lib.regoInputArray

    def add(p: Any, value: Any) -> int:
        t = type(value)
        if t is str:
            return int(string(p, _text(value)))
        if t is dict:
            for k, v in value.items():
                if type(k) is not str:
                    raise _Unsupported("an object key that is not a string")
                if string(p, _text(k)) or add(p, v) or item(p):
                    return 1
            return int(obj(p, len(value)))
        if t is bool:
            return int(boolean(p, value))
        if t is int:
            if not -_INT64 <= value < _INT64:
                raise _Unsupported("an integer outside 64 bits")
            return int(integer(p, value))
        if t is list or t is Prepared:
            for v in value:
                if add(p, v):
                    return 1
            return int(array(p, len(value)))
        if value is None:
            return int(lib.regoInputNull(p))
        if t is float:
            return int(lib.regoInputFloat(p, value))
        raise _Unsupported(f"a value of type {t.__name__}")

    return add


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


class Prepared(list[Any]):
    """A list to be member ``key`` of an input document, converted for rego-cpp when it is
    made (on whichever thread makes it), so that the decision taking it converts only the
    rest of its document (``to_input``). A catalog converts the next page's resources
    while the current page is decided.

    The conversion is of the items as they are when it is made: a ``Prepared`` is never
    changed afterwards (nothing in it is mutated), and a decision uses the conversion once;
    a second document holding the same ``Prepared`` converts it again, as any list.
    """

    def __init__(self, key: str, items: list[Any]) -> None:
        super().__init__(items)
        self.key = key
        self._lock = threading.Lock()
        self._input: int | None = None
        if _C is None:
            return
        p = _AHEAD.regoNewInput()
        if not p:
            return
        try:  # the member's key, its value, and the member: one item on the input's stack
            failed = _add_ahead(p, key) or _add_ahead(p, items) or _AHEAD.regoInputObjectItem(p)
        except (_Unsupported, RecursionError):
            failed = 1  # to_input converts it again and says why
        if failed:
            _IN.regoFreeInput(p)
        else:
            self._input = int(p)

    def take(self) -> int | None:
        """The input under construction holding this member (once; then ``None``)."""
        with self._lock:
            taken, self._input = self._input, None
        return taken

    def __del__(self) -> None:
        left = self.take()
        if left is not None:
            _IN.regoFreeInput(left)


if _C is not None:
    _add = _adder(_IN)
    _add_ahead = _adder(_AHEAD)


def _start(document: dict[Any, Any]) -> tuple[int, str | None]:
    """An input to convert ``document`` onto: one already holding a ``Prepared`` member of
    it and that member's key, or a new one and ``None``."""
    for key, value in document.items():
        if type(value) is Prepared and value.key == key:
            taken = value.take()
            if taken is not None:
                return taken, key
    return int(_IN.regoNewInput() or 0), None


def _add_document(p: Any, document: dict[Any, Any], held: str) -> int:
    """The members of ``document`` but ``held`` (already on the input), then the object."""
    for k, v in document.items():
        if k == held:
            continue
        if type(k) is not str:
            raise _Unsupported("an object key that is not a string")
        if _string(p, _text(k)) or _add(p, v) or _item(p):
            return 1
    return int(_object(p, len(document)))


def to_input(value: Any) -> regopy.Input | Any:
    """A prepared ``regopy.Input`` for ``value`` (without cffi, an escaped copy for regopy).

    A member of ``value`` that is a ``Prepared`` list (under its own key) is not converted
    again. Raises ``UnrepresentableInput`` for what rego-cpp cannot hold faithfully.
    """
    if _C is None:
        try:
            return _escaped(value)
        except _Unsupported as exc:
            raise UnrepresentableInput(str(exc)) from None
    held = None
    if type(value) is dict:
        value = _laid_out(value)
        p, held = _start(value)
    else:
        p = int(_IN.regoNewInput() or 0)
    if not p:
        raise UnrepresentableInput("the policy engine could not start an input")
    try:
        failed = _add(p, value) if held is None else _add_document(p, value, held)
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
