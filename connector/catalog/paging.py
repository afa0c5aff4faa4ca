"""Pages of a catalog: filters, sizes, page tokens, and one access decision per page.

A catalog is read in pages in a stable order (product id; provider then product id in the
registry's index). Each page takes at most ``page_size`` candidates matching the filters,
fewer when their stored size would pass ``max_page_bytes`` (so an answer never approaches
the message limit), decides them in one policy evaluation, and shows those the caller may
see: a page can be short, or even empty, and still have a next one. The caller follows
``next_page_token`` until it is empty.

A page token is opaque and bound to its caller and filters: AES-GCM (``cryptography``) over
the position, with the caller and the filters as associated data, under a key only the
connector holds. It reveals nothing (not even the last id the page considered, which the
caller may not be allowed to see), and a token edited, made up, or taken from another
caller or another filter is refused with ``InvalidRequest``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from connector.catalog.products import Product
from connector.clock import Clock
from connector.config import CatalogConfig
from connector.errors import InvalidRequest
from connector.policy.inputs import build_page_input
from connector.policy.point import PolicyPoint
from connector.policy.shape import GRADES
from connector.rpc.auth import Caller

__all__ = [
    "MAX_FILTER_CHARS",
    "Filters",
    "Listed",
    "Lookahead",
    "PageLimits",
    "PageTokens",
    "PreparedPage",
    "Row",
    "decide_page",
    "page_bound",
    "page_limits",
    "page_resources",
    "page_rows",
    "page_size",
    "prepare_page",
    "read_page",
    "take_page",
    "within_bytes",
]

MAX_FILTER_CHARS = 256
"""The longest tag, domain or text a filter may hold."""
_MAX_TOKEN_CHARS = 2048
_NONCE_BYTES = 12


@dataclass(frozen=True)
class PageLimits:
    """How large a page may be (``[catalog]`` in the configuration)."""

    default_size: int = 100
    """Products per page when the caller does not say."""
    max_size: int = 1000
    """The most products a caller may ask for in one page."""
    max_page_bytes: int = 1024 * 1024
    """Stored size of a page's candidates, summed: a page stops short of it (at least one
    product is always taken), so answers stay far below the gRPC message limit."""
    read_ahead: bool = True
    """Whether a catalog reads the next page ahead for a caller following pages
    (``Lookahead``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.default_size <= self.max_size:
            raise ValueError("catalog page sizes: need 1 <= page_size <= max_page_size")
        if self.max_page_bytes < 1024:
            raise ValueError("catalog.max_page_bytes must be at least 1024")


def page_limits(cfg: CatalogConfig) -> PageLimits:
    """The limits ``[catalog]`` sets."""
    return PageLimits(cfg.page_size, cfg.max_page_size, cfg.max_page_bytes, cfg.read_ahead)


def page_size(requested: int | None, limits: PageLimits) -> int:
    """The page size to use: ``limits.default_size`` when not given; ``InvalidRequest`` for
    0, a negative size or one above the maximum."""
    if requested is None:
        return limits.default_size
    if not 1 <= requested <= limits.max_size:
        raise InvalidRequest(
            f"page_size must be between 1 and {limits.max_size} (got {requested}); "
            "leave it out for the default"
        )
    return requested


_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Filters:
    """What a caller asks a catalog for: every given filter must match."""

    tag: str = ""
    domain: str = ""
    grade: str = ""
    text: str = ""
    """Words to find in the title, description or tags (all of them, any case)."""

    def __post_init__(self) -> None:
        for name in ("tag", "domain", "grade", "text"):
            value = getattr(self, name)
            if len(value) > MAX_FILTER_CHARS:
                raise InvalidRequest(
                    f"the {name} filter is longer than {MAX_FILTER_CHARS} characters"
                )
            if "\0" in value:
                raise InvalidRequest(f"the {name} filter holds a NUL character")
        if self.grade and self.grade not in GRADES:
            raise InvalidRequest(f"grade filter: one of {', '.join(GRADES)} (got {self.grade!r})")

    @property
    def words(self) -> list[str]:
        """The text filter's words, lower-case."""
        return [w.lower() for w in _WORD.findall(self.text)]

    def matches(self, product: Product) -> bool:
        """Whether ``product`` passes every filter (the exact check after the database's)."""
        if self.tag and self.tag not in product.tags:
            return False
        if self.domain and self.domain != product.domain:
            return False
        if self.grade and self.grade != product.grade:
            return False
        haystack = " ".join([product.title, product.description, *product.tags]).lower()
        return all(w in haystack for w in self.words)

    def body_patterns(self) -> list[str]:
        """``LIKE`` patterns (escape character ``\\``, any case) the stored JSON of every
        matching product matches: the database narrows the rows, ``matches`` decides.

        A pattern is given only where it cannot leave out a match: the text of a field as
        ``Product.to_json`` writes it (ASCII JSON), and for words only those whose case
        the database folds or that have none.
        """
        patterns = []
        if self.tag:
            patterns.append(_contains(json.dumps(self.tag)))
        if self.domain:
            patterns.append(_contains('"domain":' + json.dumps(self.domain)))
        if self.grade:
            patterns.append(_contains('"grade":' + json.dumps(self.grade)))
        for word in self.words:
            if word.isascii() or word.lower() == word.upper():
                patterns.append(_contains(json.dumps(word)[1:-1]))
        return patterns

    def digest(self) -> bytes:
        """SHA-256 over the filters (what a page token is bound to)."""
        text = json.dumps([self.tag, self.domain, self.grade, self.text], ensure_ascii=False)
        return hashlib.sha256(text.encode()).digest()


def _contains(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class PageTokens:
    """Issues and opens page tokens for one catalog (``purpose`` tells catalogs apart)."""

    def __init__(self, key: bytes, purpose: str) -> None:
        self._aead = AESGCM(key)
        self._purpose = purpose.encode()

    @classmethod
    def from_signing_key(cls, signing_key: Ed25519PrivateKey, purpose: str) -> PageTokens:
        """Tokens under a key derived (HKDF-SHA256) from the participant's signing key:
        every replica of the participant holds it, so any replica opens any page token."""
        raw = signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"tds catalog page tokens v1 " + purpose.encode(),
        ).derive(raw)
        return cls(key, purpose)

    def _bound(self, caller: str, filters: Filters) -> bytes:
        return b"\0".join([self._purpose, caller.encode(), filters.digest()])

    def issue(self, caller: str, filters: Filters, position: Sequence[str]) -> str:
        """A token for the page after ``position``, valid only for ``caller`` and ``filters``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(
            nonce, json.dumps(list(position)).encode(), self._bound(caller, filters)
        )
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, token: str, caller: str, filters: Filters) -> list[str]:
        """The position a token holds; ``InvalidRequest`` for any token this connector did
        not issue to ``caller`` for ``filters`` (nothing said about why: nothing revealed)."""
        refused = InvalidRequest(
            "page_token is not one this catalog gave you for these filters; start again without it"
        )
        if len(token) > _MAX_TOKEN_CHARS:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            # Only the one spelling issue() gives: base64 ignores a last character's
            # spare bits, so an edited token could otherwise read as the original.
            if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
                raise ValueError("not a token's spelling")
            plain = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], self._bound(caller, filters)
            )
            position = json.loads(plain)
        except (ValueError, binascii.Error, InvalidTag):
            raise refused from None
        if not isinstance(position, list) or not all(isinstance(p, str) for p in position):
            raise refused
        return position


def page_resources(candidates: Sequence[tuple[str, Product]]) -> list[dict[str, Any]]:
    """The ``resources`` of a page's input: each candidate's ``resource``, its id the key."""
    resources = [p.resource() for _, p in candidates]
    for resource, (key, _) in zip(resources, candidates, strict=True):
        resource["id"] = key  # in place: a fresh dict, and "id" keeps its place (first)
    return resources


@dataclass(frozen=True)
class PreparedPage:
    """A page's resources made ahead, in the form the engine takes fastest
    (``PolicyPoint.prepare``), for the ``(key, product)`` candidates they were made from."""

    candidates: tuple[tuple[str, Product], ...]
    resources: list[dict[str, Any]]

    def fits(self, candidates: Sequence[tuple[str, Product]]) -> bool:
        """Whether these are the candidates the resources were made from: the same keys
        and the very same product objects (a product is immutable, and its ``resource``
        a function of it alone), so the resources are exactly what ``page_resources``
        would make of them now."""
        return len(candidates) == len(self.candidates) and all(
            k == k0 and p is p0
            for (k, p), (k0, p0) in zip(candidates, self.candidates, strict=True)
        )


def prepare_page(policy: PolicyPoint, candidates: Sequence[tuple[str, Product]]) -> PreparedPage:
    """The resources of a page's candidates, made now for a decision later."""
    resources = policy.prepare("resources", page_resources(candidates))
    return PreparedPage(tuple(candidates), resources)


def decide_page(
    policy: PolicyPoint,
    caller: Caller,
    clock: Clock,
    candidates: Sequence[tuple[str, Product]],
    *,
    prepared: PreparedPage | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> set[str]:
    """The keys of the ``(key, product)`` candidates ``caller`` may see, decided in one
    evaluation: one log entry, whose input hash covers every candidate and which lists the
    visible keys. The key is the resource's id in the input (unique in the page: the
    product id in a provider's catalog, ``provider/product`` in the registry's index).

    ``prepared``: the resources made ahead (``prepare_page``), used only when made from
    exactly these candidates; otherwise they are made now. ``meanwhile``: started when
    the engine starts evaluating (``PolicyPoint.decide``)."""
    if not candidates:
        if meanwhile is not None:
            meanwhile()
        return set()
    if prepared is not None and prepared.fits(candidates):
        document = build_page_input(caller, prepared.resources, clock=clock, as_given=True)
    else:
        document = build_page_input(caller, page_resources(candidates), clock=clock)
    decision = policy.decide(document, meanwhile=meanwhile)
    return set(decision.visible_ids or ()) if decision.allow else set()


T = TypeVar("T")


@dataclass(frozen=True)
class Row(Generic[T]):
    """A row a page considers: its position in the catalog's order, its product, its stored
    size, and what the catalog shows of it."""

    position: tuple[str, ...]
    product: Product
    size: int
    item: T

    @property
    def key(self) -> str:
        """The row's id in the page's policy input (its position: unique in the catalog)."""
        return "/".join(self.position)


class Placed(Protocol):
    """What a page needs of a row: where it stands in the order, and its stored size."""

    @property
    def position(self) -> tuple[str, ...]: ...

    @property
    def size(self) -> int: ...


P = TypeVar("P", bound=Placed)


@dataclass(frozen=True)
class Listed(Generic[T]):
    """A row of a list no access policy filters (an administrator's own records): its
    position in the list's order, its stored size, and what the list shows of it."""

    position: tuple[str, ...]
    size: int
    item: T


PageReader = Callable[[Sequence[str], int], list[P]]
"""``(after, limit)``: up to ``limit`` rows after position ``after`` (empty: from the
start), in order (for a catalog, narrowed by the database with ``Filters.body_patterns``)."""


def take_page(
    reader: PageReader[P],
    *,
    bound: str,
    filters: Filters,
    size: int,
    token: str,
    tokens: PageTokens,
    limits: PageLimits,
) -> tuple[list[P], str]:
    """The rows of one page, unfiltered, and the token of the next page ("" at the end).

    ``bound``: who the tokens are for (with ``filters``, what they are bound to). A page
    takes ``size`` rows, fewer when their stored size would pass ``limits.max_page_bytes``.
    """
    after = tokens.open(token, bound, filters) if token else []
    rows, more = page_rows(reader(after, size + 1), size, limits)
    following = tokens.issue(bound, filters, rows[-1].position) if more and rows else ""
    return rows, following


def page_rows(rows: list[P], size: int, limits: PageLimits) -> tuple[list[P], bool]:
    """Of the ``size + 1`` rows a reader gave for a page of ``size``, those the page takes,
    and whether another page follows."""
    taken = within_bytes([r.size for r in rows[:size]], limits.max_page_bytes)
    return rows[:taken], taken < len(rows)


def page_bound(caller: Caller) -> str:
    """Who a catalog's page tokens are for (with the filters, what they are bound to)."""
    return f"{caller.participant}\0{caller.role}"


def read_page(
    reader: PageReader[Row[T]],
    *,
    caller: Caller,
    filters: Filters,
    size: int,
    token: str,
    tokens: PageTokens,
    limits: PageLimits,
    policy: PolicyPoint,
    clock: Clock,
    prepared: PreparedPage | None = None,
    on_next: Callable[[str, tuple[str, ...]], None] | None = None,
) -> tuple[list[T], str]:
    """One page: what ``caller`` may see of it, and the token of the next page ("" at the
    end). The access policy decides the page's candidates at once.

    ``prepared``: this page's resources made ahead (``decide_page``). ``on_next``: called
    with the next page's token and the position it starts after when the engine starts
    deciding this page (a catalog reads the next page meanwhile: ``Lookahead``), so that
    what it starts runs beside the engine rather than against this request's own work.
    """
    rows, following = take_page(
        reader,
        bound=page_bound(caller),
        filters=filters,
        size=size,
        token=token,
        tokens=tokens,
        limits=limits,
    )
    matching = [r for r in rows if filters.matches(r.product)]
    candidates = [(r.key, r.product) for r in matching]
    meanwhile = None
    if on_next is not None and following:
        last = rows[-1].position
        meanwhile = lambda: on_next(following, last)  # noqa: E731
    visible = decide_page(policy, caller, clock, candidates, prepared=prepared, meanwhile=meanwhile)
    shown = [r.item for r in matching if r.key in visible]
    return shown, following


def within_bytes(sizes: Sequence[int], max_bytes: int) -> int:
    """How many rows of ``sizes`` a page takes: as many as fit in ``max_bytes``, at least one.

    A reader may use it to stop early: ``read_page`` needs the rows the page takes and the
    one after them (which tells it another page follows), not the rest of the ``limit``.
    """
    total = 0
    for taken, size in enumerate(sizes):
        total += size
        if total > max_bytes and taken:
            return taken
    return len(sizes)


A = TypeVar("A")


class Lookahead(Generic[A]):
    """Work on the next page for callers following a catalog's pages, done on a thread of
    its own while the current page is decided (the engine decides without holding the GIL,
    so on another core), and taken by the request for that next page.

    Keyed by what names that request (caller, filters, the next page's token, size); at
    most ``entries`` held (the oldest dropped), each taken once, and none kept past
    ``max_age`` seconds (a caller that stopped following: a page made ahead for the engine
    is about 15 MB for a thousand products of ~1 KB). What it holds saves work and never
    stands in for a read: the request reads the page itself and uses a result only where
    it is what that read gives (``PreparedPage.fits``).
    """

    def __init__(self, entries: int = 2, max_age: float = 10.0) -> None:
        self._entries = entries
        self._max_age = max_age
        self._lock = threading.Lock()
        self._waiting: OrderedDict[Hashable, tuple[float, Future[A]]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._sweeping = False
        self._closed = threading.Event()

    def start(self, key: Hashable, work: Callable[[], A]) -> None:
        """Run ``work`` for the request ``key`` names."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookahead")
            self._waiting[key] = (time.monotonic(), self._pool.submit(work))
            while len(self._waiting) > self._entries:
                self._waiting.popitem(last=False)[1][1].cancel()
            if not self._sweeping:
                self._sweeping = True
                threading.Thread(target=self._sweep, name="lookahead-sweep", daemon=True).start()

    def take(self, key: Hashable) -> A | None:
        """The result for ``key`` (waiting for it if it is under way), or ``None``: none
        started, not started yet (then never: the request does the work), or failed."""
        with self._lock:
            _, future = self._waiting.pop(key, (0.0, None))
        if future is None or future.cancel():
            return None
        try:
            return future.result()
        except Exception:  # the request does the work itself, and meets any error there
            return None

    def _sweep(self) -> None:
        """Drop what was not taken in time, while anything is held."""
        while not self._closed.wait(self._max_age / 2):
            with self._lock:
                oldest = time.monotonic() - self._max_age
                for key in [k for k, (at, _) in self._waiting.items() if at < oldest]:
                    self._waiting.pop(key)[1].cancel()
                if not self._waiting:
                    self._sweeping = False
                    return

    def close(self) -> None:
        """Drop what is held and stop the threads."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._waiting.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
