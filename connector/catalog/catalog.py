"""A provider's catalog: publishing products, and showing each caller what it may see."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from dataclasses import replace as replace_  # publish() has a parameter named replace
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.audit.log import AuditLog, Record
from connector.catalog.paging import (
    Filters,
    Listed,
    Lookahead,
    PageLimits,
    PageTokens,
    PreparedPage,
    Row,
    page_bound,
    page_rows,
    page_size,
    prepare_page,
    read_page,
    within_bytes,
)
from connector.catalog.products import Offer, Product, parse_description
from connector.catalog.store import ProductStore
from connector.clock import Clock
from connector.errors import ConflictError, InvalidRequest, NotFound
from connector.policy.engine import PolicyEngine
from connector.policy.inputs import build_input
from connector.policy.library import PolicySet
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Caller
from connector.sources.file import SourceRoots
from connector.sources.sql import SqlSources
from connector.sources.streams import StreamSources

__all__ = ["MAX_BATCH", "Catalog", "Description"]

MAX_BATCH = 1000
"""The most product descriptions one publish takes."""


@dataclass(frozen=True)
class _Ahead:
    """The next page of a caller following pages, read ahead (``Catalog.page``): the
    products parsed from each stored text, and the page's resources for the engine."""

    parsed: dict[str, Product]
    page: PreparedPage


@dataclass(frozen=True)
class Description:
    """A product description as submitted: its text, format, directory, and a name for
    errors (for example its file)."""

    text: str
    fmt: str = "auto"
    base_dir: str = ""
    name: str = ""


class Catalog:
    """Products of one connector, published by its admin and filtered by the access policy."""

    def __init__(
        self,
        *,
        participant: str,
        store: ProductStore,
        library: PolicySet,
        engine: PolicyEngine,
        policy: PolicyPoint,
        audit: AuditLog,
        clock: Clock,
        sources: SourceRoots | None = None,
        sql: SqlSources | None = None,
        page_tokens: PageTokens | None = None,
        page_limits: PageLimits | None = None,
        streams: StreamSources | None = None,
    ) -> None:
        """``page_tokens``: the key of the catalog's page tokens (replicas need the same;
        without it a fresh random key: tokens then hold for this process only)."""
        self._participant = participant
        self._page_tokens = page_tokens or PageTokens(AESGCM.generate_key(256), "catalog")
        self._page_limits = page_limits or PageLimits()
        self._sources = sources
        self._sql = sql if sql is not None else SqlSources({})
        self._streams = streams if streams is not None else StreamSources({})
        self._store = store
        self._library = library
        self._engine = engine
        self._policy = policy
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        self._ahead: Lookahead[_Ahead] = Lookahead()
        self._registering: dict[str, int] = {}
        """Products being registered with the registry now (how many calls each)."""
        self._in_force = library
        """The policy set in the engine: the library plus every published provider module."""
        self.refresh_policies()

    def refresh_policies(self) -> None:
        """Load the library plus every stored offer's provider module into the engine.

        At start only (and when a replica's publications must be taken in): publishing
        and removing change the set in force incrementally.
        """
        with self._lock:
            added: dict[str, str] = {}
            for product in self._store.list():
                for offer in product.offers:
                    if offer.policy_module:
                        added[offer.policy_module] = offer.policy_source
            self._in_force = self._library.with_changed_modules(self._library, added)
            self._engine.update(self._in_force)

    def publish(
        self, description: str, *, fmt: str = "auto", replace: bool = False, base_dir: str = ""
    ) -> Product:
        """Validate and store a product (and its provider modules); logged first.

        A relative ``source.path`` is resolved against ``base_dir`` (the description file's
        directory) when given; otherwise the transfer resolves it against the data directory.
        With ``sources``, a path that resolves outside them is refused (``InvalidRequest``);
        each read checks it again. An ``sql`` source's connection must be configured and its
        query pass :func:`connector.sources.sql_query.validate_query` with the product's fields as
        its output columns (checked again at every transfer); a ``stream`` source's
        connection must be a configured broker of the kind its subject or topic names.
        """
        return self.publish_many([Description(description, fmt, base_dir)], replace=replace)[0]

    def publish_many(
        self, descriptions: Sequence[Description], *, replace: bool = False
    ) -> list[Product]:
        """Validate every description, then store them all in one transaction, or none.

        A refused description is named in the error (by its ``name``, or its position).
        Publishing costs the same whatever the catalog holds: the policy set in force
        changes only when a product brings, changes or drops a provider module, and then
        by those modules alone.
        """
        if not descriptions:
            raise InvalidRequest("no product description given")
        if len(descriptions) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} product descriptions at once")
        names = [d.name or _named(i, len(descriptions)) for i, d in enumerate(descriptions)]
        products = [self._parsed(d, names[i]) for i, d in enumerate(descriptions)]
        ids = [p.id for p in products]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise InvalidRequest(f"product {repeated[0]!r} appears twice in the batch")
        with self._lock:
            before = self._store.find(ids)
            if not replace and before:
                first = next(i for i in ids if i in before)
                raise ConflictError(f"product {first!r} exists; pass --replace to update it")
            in_force = self._changed_policy(products, before, names)
            self._audit.record_many(
                [
                    (
                        "catalog.product_published",
                        [],
                        {
                            "product": p.id,
                            "grade": p.grade,
                            "replace": replace,
                            "offers": [o.id for o in p.offers],
                            "registration_code": p.registration_code,
                        },
                    )
                    for p in products
                ]
            )
            self._store.put_many(products, replace=replace, now_ms=int(self._clock.now() * 1000))
            if in_force is not None:
                self._in_force = in_force
                self._engine.update(in_force)
        return products

    def _parsed(self, description: Description, name: str) -> Product:
        """One description as a product, or ``InvalidRequest`` naming it and saying why."""
        try:
            product = parse_description(
                description.text, owner=self._participant, fmt=description.fmt
            )
            if product.source.kind == "sql":
                self._sql.probe(product.source.connection, product.source.query, product.fields)
            elif product.source.kind == "stream":
                self._streams.check(product.source, product.fields)
            else:
                if description.base_dir and not Path(product.source.path).is_absolute():
                    resolved = str((Path(description.base_dir) / product.source.path).resolve())
                    product = replace_(product, source=replace_(product.source, path=resolved))
                if self._sources is not None:
                    self._sources.locate(product.source.path)
        except InvalidRequest as exc:
            if not name:
                raise
            raise InvalidRequest(f"{name}: {exc} (nothing was published)") from None
        return product

    def _changed_policy(
        self, products: list[Product], before: dict[str, Product], names: list[str]
    ) -> PolicySet | None:
        """The policy set with ``products``' modules in place of those they replace, or
        ``None`` when no provider module changes (the common case: nothing to compile)."""
        added: dict[str, str] = {}
        removed: set[str] = set()
        for i, product in enumerate(products):
            old = before.get(product.id)
            old_sources = {o.policy_module: o.policy_source for o in old.offers} if old else {}
            for offer in product.offers:
                module = offer.policy_module
                if not module:
                    continue
                # The database, not this process's map: a replica may have published it.
                users = set(self._store.products_using_module(module)) - {product.id}
                if users or module in added:
                    raise InvalidRequest(
                        f"{names[i] or 'product ' + repr(product.id)}: "
                        f"policy module {module!r} is used by another product"
                    )
                if old_sources.get(module) != offer.policy_source:
                    added[module] = offer.policy_source
                else:
                    added.setdefault(module, offer.policy_source)
            removed.update(m for m in old_sources if m and m not in _modules(product))
        changed = {
            m: src
            for m, src in added.items()
            if self._in_force.modules.get(f"provider/{m}.rego") != src
        }
        if not changed and not removed:
            return None
        in_force = self._in_force.with_changed_modules(self._library, {}, removed)
        for i, product in enumerate(products):
            own = {m: changed[m] for m in _modules(product) if m in changed}
            if not own:
                continue
            try:
                in_force = in_force.with_changed_modules(self._library, own)
            except InvalidRequest as exc:
                name = names[i]
                raise InvalidRequest(
                    f"{name}: {exc} (nothing was published)" if name else str(exc)
                ) from None
        return in_force

    def remove(self, product_id: str) -> None:
        """Withdraw a product from the catalog; logged first."""
        with self._lock:
            product = self._store.get(product_id)
            self._audit.record("catalog.product_removed", parties=[], data={"product": product_id})
            self._store.remove(product_id)
            dropped = _modules(product)
            if dropped:
                self._in_force = self._in_force.with_changed_modules(self._library, {}, dropped)
                self._engine.update(self._in_force)

    def register(
        self, product_id: str, public: bool, registrar: Callable[[str, bool], str]
    ) -> Product:
        """List a product with the registry; a public product keeps the code it is given."""
        product = self._store.get(product_id)
        # Paths, connection names and queries stay here: the listing has kind and format.
        listed = replace(
            product,
            source=replace(product.source, path="", connection="", query="", subject="", topic=""),
        )
        with self._lock:
            self._registering[product_id] = self._registering.get(product_id, 0) + 1
        try:
            # The registry asks back for the product (``registering``) before it lists it.
            code = registrar(listed.to_json(), public)
        finally:
            with self._lock:
                left = self._registering.pop(product_id) - 1
                if left:
                    self._registering[product_id] = left
        if code and code != product.registration_code:
            with self._lock:
                updated = replace(product, registration_code=code)
                self._audit.record(
                    "catalog.product_registered",
                    parties=[],
                    data={"product": product_id, "registration_code": code},
                )
                self._store.put(updated, replace=True, now_ms=int(self._clock.now() * 1000))
                return updated
        return product

    def registering(self, product_id: str) -> bool:
        """Whether this connector is registering ``product_id`` with the registry now: the
        registry's index lists a product only when its connector confirms it so."""
        with self._lock:
            return product_id in self._registering

    def own(self, product_id: str) -> Product:
        """One of this connector's products, whoever may see it; its offers' provider
        modules are the ones in force."""
        return self._modules_in_force(self._store.get(product_id))

    def published(self, product_id: str, offer_id: str) -> tuple[Product, Offer] | None:
        """A product and one of its offers, or ``None`` when either is no longer published;
        the offer's provider module is the one in force."""
        try:
            product = self._modules_in_force(self._store.get(product_id))
            return product, product.offer(offer_id)
        except (NotFound, KeyError):
            return None

    def _modules_in_force(self, product: Product) -> Product:
        """``product``, after taking in its offers' provider modules if the engine holds
        another version or none: a replica sharing the database may have published or
        replaced them, and a decision must not run under a module the product no longer
        has (nor be refused for one it has). Comparing costs a lookup per offer; only a
        difference reloads the set."""
        if any(
            o.policy_module and self._in_force.provider_source(o.policy_module) != o.policy_source
            for o in product.offers
        ):
            self.refresh_policies()
        return product

    def own_products(self) -> list[Product]:
        """Every product, for the admin."""
        return self._store.list()

    def own_after(self, after: Sequence[str], limit: int) -> list[Listed[Product]]:
        """Up to ``limit`` of this connector's products after position ``after`` (a
        product id; empty: from the first), by id, whoever may see them: the admin's pages."""
        rows = self._store.rows_after(after[0] if after else "", limit)
        return [Listed((i,), len(body), self._store.parsed(body)) for i, body in rows]

    def _visible(self, caller: Caller, product: Product, defer: list[Record] | None = None) -> bool:
        document = build_input(
            "catalog.read", caller=caller, resource=product.resource(), clock=self._clock
        )
        return self._policy.decide(document, defer=defer).allow

    @property
    def max_page_size(self) -> int:
        """The largest page a caller may ask for."""
        return self._page_limits.max_size

    def page(
        self,
        caller: Caller,
        filters: Filters,
        *,
        size: int | None = None,
        token: str = "",
        all_pages: bool = False,
    ) -> tuple[list[Product], str]:
        """One page of the products ``caller`` may see that match ``filters``, by id, and
        the token of the next page ("" after the last). One access decision for the page.

        ``all_pages``: the caller says it will ask for every following page at the largest
        size (``tds catalog list``), so the next page is read ahead from the first page on,
        not only once the caller has followed a token.

        ``InvalidRequest`` for a size outside the configured limits or a token not issued
        to this caller for these filters.
        """
        count = page_size(size, self._page_limits)
        patterns = filters.body_patterns()
        bound = page_bound(caller)
        # A caller following pages (with a token) had this page read ahead while the last
        # was decided: the page is read again here, and only a stored text identical to
        # one read ahead takes its parsed product, only resources made from exactly these
        # products are used (PreparedPage.fits). The decision is this request's own.
        ahead = self._ahead.take((bound, filters, token, count)) if token else None

        # A caller following pages (this one asked with a token) will most likely ask for
        # the next one at the same size; one that said it reads them all, at the largest.
        following_size = count if token else self._page_limits.max_size

        def read_next(following: str, after: tuple[str, ...]) -> None:
            if (token or all_pages) and self._page_limits.read_ahead:
                self._ahead.start(
                    (bound, filters, following, following_size),
                    lambda: self._read_ahead(patterns, filters, after, following_size),
                )

        return read_page(
            self._reader(patterns, ahead.parsed if ahead else {}),
            caller=caller,
            filters=filters,
            size=count,
            token=token,
            tokens=self._page_tokens,
            limits=self._page_limits,
            policy=self._policy,
            clock=self._clock,
            prepared=ahead.page if ahead else None,
            on_next=read_next,
        )

    def _reader(
        self, patterns: list[str], parsed: dict[str, Product]
    ) -> Callable[[Sequence[str], int], list[Row[Product]]]:
        """A page reader: the rows after a position; a stored text found in ``parsed``
        takes the product parsed from it there, others are parsed and added to it."""

        def reader(after: Sequence[str], limit: int) -> list[Row[Product]]:
            rows = self._store.rows_after(after[0] if after else "", limit, patterns)
            # Parse only the rows the page takes and the one after (~1 KB products fill
            # max_page_bytes at about 770 of a thousand: the rest were parsed for nothing).
            sizes = [len(body) for _, body in rows[: limit - 1]]
            rows = rows[: within_bytes(sizes, self._page_limits.max_page_bytes) + 1]
            taken = []
            for _, body in rows:
                product = parsed.get(body)
                if product is None:
                    product = parsed[body] = Product.from_stored(body)
                taken.append(Row((product.id,), product, len(body), product))
            return taken

        return reader

    def _read_ahead(
        self, patterns: list[str], filters: Filters, after: tuple[str, ...], count: int
    ) -> _Ahead:
        """The page of ``count`` after ``after`` as ``page`` will read it, parsed, and its
        resources made for the engine (no decision: that is the request's)."""
        parsed: dict[str, Product] = {}
        rows, _ = page_rows(
            self._reader(patterns, parsed)(after, count + 1), count, self._page_limits
        )
        matching = [(r.key, r.product) for r in rows if filters.matches(r.product)]
        return _Ahead(parsed, prepare_page(self._policy, matching))

    def get_visible(
        self, caller: Caller, product_id: str, *, defer: list[Record] | None = None
    ) -> Product:
        """One product, or ``NotFound`` — also when the caller may not see it.

        ``defer`` collects the access decision's log entry (``PolicyPoint.decide``).
        """
        try:
            product = self._store.get(product_id)
        except NotFound:
            raise NotFound(f"product {product_id!r} not found") from None
        if not self._visible(caller, product, defer):
            raise NotFound(f"product {product_id!r} not found")
        return product


def _modules(product: Product) -> list[str]:
    """The provider modules ``product``'s offers carry."""
    return [o.policy_module for o in product.offers if o.policy_module]


def _named(index: int, count: int) -> str:
    """How an error names description ``index`` of a batch ('' for a batch of one)."""
    return f"description {index + 1} of {count}" if count > 1 else ""
