"""A provider's catalog: publishing products, and showing each caller what it may see."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from dataclasses import replace as replace_  # publish() has a parameter named replace
from pathlib import Path

from connector.audit.log import AuditLog, Record
from connector.catalog.products import Offer, Product, parse_description
from connector.catalog.store import ProductStore
from connector.clock import Clock
from connector.errors import InvalidRequest, NotFound
from connector.policy.engine import PolicyEngine
from connector.policy.inputs import build_input
from connector.policy.library import PolicySet
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Caller
from connector.sources.file import SourceRoots
from connector.sources.sql import SqlSources
from connector.sources.streams import StreamSources

__all__ = ["Catalog"]


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
        streams: StreamSources | None = None,
    ) -> None:
        self._participant = participant
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
        self._registering: dict[str, int] = {}
        """Products being registered with the registry now (how many calls each)."""
        self.refresh_policies()

    def _policy_set(self, products: list[Product]) -> PolicySet:
        policy = self._library
        for product in products:
            for offer in product.offers:
                if offer.policy_module:
                    policy = policy.with_provider_module(offer.policy_module, offer.policy_source)
        return policy

    def refresh_policies(self) -> None:
        """Load the library plus every stored offer's provider module into the engine."""
        with self._lock:
            self._engine.update(self._policy_set(self._store.list()))

    def publish(
        self, description: str, *, fmt: str = "auto", replace: bool = False, base_dir: str = ""
    ) -> Product:
        """Validate and store a product (and its provider modules); logged first.

        A relative ``source.path`` is resolved against ``base_dir`` (the description file's
        directory) when given; otherwise the transfer resolves it against the data directory.
        With ``sources``, a path that resolves outside them is refused (``InvalidRequest``);
        each read checks it again. An ``sql`` source's connection must be configured and its
        query pass :func:`connector.sources.sql.validate_query` with the product's fields as
        its output columns (checked again at every transfer); a ``stream`` source's
        connection must be a configured broker of the kind its subject or topic names.
        """
        product = parse_description(description, owner=self._participant, fmt=fmt)
        if product.source.kind == "sql":
            self._sql.check(product.source.connection, product.source.query, product.fields)
        elif product.source.kind == "stream":
            self._streams.check(product.source, product.fields)
        else:
            if base_dir and not Path(product.source.path).is_absolute():
                resolved = str((Path(base_dir) / product.source.path).resolve())
                product = replace_(product, source=replace_(product.source, path=resolved))
            if self._sources is not None:
                self._sources.locate(product.source.path)
        with self._lock:
            others = [p for p in self._store.list() if p.id != product.id]
            modules = [o.policy_module for p in others for o in p.offers if o.policy_module]
            clash = [o.policy_module for o in product.offers if o.policy_module in modules]
            if clash:
                raise InvalidRequest(f"policy module {clash[0]!r} is used by another product")
            policy = self._policy_set([*others, product])  # validates every module
            self._audit.record(
                "catalog.product_published",
                parties=[],
                data={
                    "product": product.id,
                    "grade": product.grade,
                    "replace": replace,
                    "offers": [o.id for o in product.offers],
                    "registration_code": product.registration_code,
                },
            )
            self._store.put(product, replace=replace, now_ms=int(self._clock.now() * 1000))
            self._engine.update(policy)
        return product

    def remove(self, product_id: str) -> None:
        """Withdraw a product from the catalog; logged first."""
        with self._lock:
            self._store.get(product_id)
            self._audit.record("catalog.product_removed", parties=[], data={"product": product_id})
            self._store.remove(product_id)
            self._engine.update(self._policy_set(self._store.list()))

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
        """One of this connector's products, whoever may see it."""
        return self._store.get(product_id)

    def published(self, product_id: str, offer_id: str) -> tuple[Product, Offer] | None:
        """A product and one of its offers, or ``None`` when either is no longer published."""
        try:
            product = self._store.get(product_id)
            return product, product.offer(offer_id)
        except (NotFound, KeyError):
            return None

    def own_products(self) -> list[Product]:
        """Every product, for the admin."""
        return self._store.list()

    def _visible(self, caller: Caller, product: Product, defer: list[Record] | None = None) -> bool:
        document = build_input(
            "catalog.read", caller=caller, resource=product.resource(), clock=self._clock
        )
        return self._policy.decide(document, defer=defer).allow

    def visible_to(self, caller: Caller, tag: str = "") -> list[Product]:
        """Products the access policy lets ``caller`` see."""
        return [
            p for p in self._store.list() if (not tag or tag in p.tags) and self._visible(caller, p)
        ]

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
