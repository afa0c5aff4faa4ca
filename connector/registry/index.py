"""The operator's catalog index: products listed across connectors, registration codes.

A listing is accepted only from its provider (the caller's verified identity), and only
as the provider's connector serves it: the registry asks that connector's catalog for the
product (``Confirm``) and refuses a listing it does not publish, or publishes otherwise —
so no member can list a look-alike of a product it does not publish.

A listing is shown to a searcher only if the provider's own access rules, evaluated by the
same policy library, let that searcher see it — the index never reveals what the provider's
catalog would hide.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector._proto.tds.v1 import catalog_pb2
from connector.audit.log import AuditLog
from connector.catalog.paging import Filters, PageLimits, PageTokens, Row, page_size, read_page
from connector.catalog.products import Product
from connector.catalog.service import summary
from connector.clock import Clock
from connector.errors import ConnectorError, InvalidRequest, PermissionDenied, PreconditionFailed
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Caller
from connector.store.database import Database
from connector.store.models import CatalogListingRow

__all__ = ["CatalogIndex", "Confirm", "Listing"]

Confirm = Callable[[str, str], catalog_pb2.ProductSummary]
"""``(provider, product_id)``: the product as the provider's connector serves it to the
operator (``CatalogService.GetProduct``); a ``ConnectorError`` when it does not."""

_LISTINGS_AFTER = (
    "SELECT provider, product_id, body, registration_code, registered_ms FROM catalog_listing "
    "WHERE (provider, product_id) > (?, ?)"  # a row value: the primary key's order
)

Listing = tuple[str, Product, str, int]
"""(provider, product, registration code, registered ms)."""


@functools.lru_cache(maxsize=4096)
def _parsed(body: str) -> Product:
    """A stored listing's product, remembered by its exact text: parsing was a third of a
    page of 100 (the policy's one decision for the page most of the rest). ``Product`` is
    frozen, and what reads it (``resource()``, the filters) builds fresh values."""
    return Product.from_json(body)


class CatalogIndex:
    """Listings in the operator's database."""

    def __init__(
        self,
        db: Database,
        *,
        space: str,
        policy: PolicyPoint,
        audit: AuditLog,
        clock: Clock,
        confirm: Confirm | None = None,
        page_tokens: PageTokens | None = None,
        page_limits: PageLimits | None = None,
    ) -> None:
        """``page_tokens``: the key of the index's page tokens (without it a fresh random
        key: tokens then hold for this process only)."""
        self._page_tokens = page_tokens or PageTokens(AESGCM.generate_key(256), "registry-index")
        self._page_limits = page_limits or PageLimits()
        self._db = db
        self._confirm = confirm
        self._space = space
        self._policy = policy
        self._audit = audit
        self._clock = clock

    def _code(self, provider: str, product_id: str) -> str:
        year = dt.datetime.fromtimestamp(self._clock.now(), dt.UTC).year
        digest = hashlib.sha256(f"{provider}/{product_id}".encode()).hexdigest()[:10].upper()
        return f"{self._space.upper()}-{year}-{digest}"

    def register(self, caller: Caller, product_json: str, public: bool) -> str:
        """List (or re-list) a product of the caller; return its registration code."""
        try:
            product = Product.from_json(product_json)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"product_json is not a tds product: {exc}") from None
        if product.owner != caller.participant:
            raise PermissionDenied("a provider lists only its own products")
        if product.grade == "core":
            raise InvalidRequest("core data is never listed")
        if self._confirm is not None:
            self._confirmed(caller.participant, product)
        now_ms = int(self._clock.now() * 1000)
        with self._db.session() as s:
            row = s.get(CatalogListingRow, (caller.participant, product.id))
            code = row.registration_code if row is not None else ""
        if public and not code:
            code = self._code(caller.participant, product.id)
        listed = replace(product, registration_code=code or product.registration_code)
        self._audit.record(
            "registry.product_registered",
            parties=[caller.participant],
            data={
                "provider": caller.participant,
                "product": product.id,
                "public": public,
                "registration_code": code,
            },
        )
        with self._db.session() as s:
            row = s.get(CatalogListingRow, (caller.participant, product.id), with_for_update=True)
            if row is None:
                row = CatalogListingRow(
                    provider=caller.participant,
                    product_id=product.id,
                    body=listed.to_json(),
                    registration_code=code,
                    registered_ms=now_ms,
                )
            else:
                row.body, row.registration_code = listed.to_json(), code
            s.add(row)
        return code

    def _confirmed(self, provider: str, product: Product) -> None:
        """``PreconditionFailed`` unless ``provider``'s connector serves ``product`` as
        listed (the registration code aside: the registry assigns it)."""
        assert self._confirm is not None
        try:
            served = self._confirm(provider, product.id)
        except ConnectorError as exc:
            raise PreconditionFailed(
                f"{provider}'s connector does not confirm product {product.id!r} ({exc}): only "
                "a product your connector publishes, visible to the operator, is listed; "
                "publish it first (tds product add), then register it"
            ) from None
        listed = summary(product)
        listed.registration_code = served.registration_code = ""
        if listed != served:
            raise PreconditionFailed(
                f"product {product.id!r} differs from the one {provider}'s connector publishes; "
                "register it from your connector (tds product register)"
            )

    @property
    def max_page_size(self) -> int:
        """The largest page a caller may ask for."""
        return self._page_limits.max_size

    def search(
        self, caller: Caller, filters: Filters, *, size: int | None = None, token: str = ""
    ) -> tuple[list[Listing], str]:
        """One page of the listings matching ``filters`` that the caller may see under each
        provider's access rules, by provider then product id, and the next page's token
        ("" after the last). One access decision for the page.

        ``InvalidRequest`` for a size outside the configured limits or a token not issued
        to this caller for these filters.
        """
        count = page_size(size, self._page_limits)
        patterns = filters.body_patterns()
        like = "ILIKE" if self._db.postgres else "LIKE"  # SQLite's LIKE ignores ASCII case
        where = "".join(f" AND body {like} ? ESCAPE '\\'" for _ in patterns)
        # Only placeholders are formatted in: every value is a parameter.
        sql = f"{_LISTINGS_AFTER}{where} ORDER BY provider, product_id LIMIT ?"

        def reader(after: Sequence[str], limit: int) -> list[Row[Listing]]:
            provider, product_id = (after[0], after[1]) if len(after) == 2 else ("", "")
            with self._db.transaction() as tx:
                rows = tx.all(sql, (provider, product_id, *patterns, limit))
            found = []
            for provider_, product_id_, body, code, when in rows:
                product = _parsed(str(body))
                listing = (str(provider_), product, str(code), int(when))
                found.append(Row((str(provider_), str(product_id_)), product, len(body), listing))
            return found

        return read_page(
            reader,
            caller=caller,
            filters=filters,
            size=count,
            token=token,
            tokens=self._page_tokens,
            limits=self._page_limits,
            policy=self._policy,
            clock=self._clock,
        )
