"""Data products and their offers, and the description files providers write.

A product description is TOML or JSON (see examples/products/traffic-flow.toml). It is
validated completely before anything is stored: unknown fields, wrong types, a core-grade
product, an offer without purposes or with a window that ends before it starts are all
refused with the field named.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from connector.compute.rules import ComputeRules, parse_rules
from connector.errors import InvalidRequest
from connector.identity.names import LABEL
from connector.policy.shape import GRADES
from connector.transfer.masking import normalise_masks

__all__ = [
    "DELIVERY_MODES",
    "FIELD_KINDS",
    "GRADES",
    "MAX_DESCRIPTION_BYTES",
    "RECORD_KINDS",
    "SOURCE_KINDS",
    "AccessRules",
    "Offer",
    "Product",
    "Source",
    "parse_description",
]

MAX_DESCRIPTION_BYTES = 256 * 1024
_ID = LABEL  # product and offer ids follow the label rule
_MODULE_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

DELIVERY_MODES = ("copy", "compute", "push")
"""How an offer's product may leave: ``copy`` (the bytes or records), ``compute`` (only
answers computed where the data lives, 可用不可见); ``push``, with ``copy`` and for stream
products only: the provider delivers the records into the consumer's connector
(``RequestStreamPush``/``Deliver``) instead of the consumer pulling them (``Subscribe``)."""


SOURCE_KINDS = ("file", "table", "sql", "stream")
"""Where a product's data lives (DESIGN.md §9)."""

RECORD_KINDS = ("table", "sql")
"""Sources read as records: delivered projected to the permitted fields and masked."""

FIELD_KINDS = (*RECORD_KINDS, "stream")
"""Sources whose data has fields: the offer's permitted fields and masks apply (a stream
per message, exactly as a table)."""


@dataclass(frozen=True)
class Source:
    """Where the product's data comes from.

    ``file`` and ``table`` name a ``path`` on the provider's disk; ``sql`` names a
    ``connection`` of the provider's configuration (``[sources.NAME]``, where its URL and
    credentials stay) and the ``query`` run on it (see connector.sources.sql); ``stream``
    names a broker ``connection`` and a ``subject`` (NATS JetStream) or ``topic`` (MQTT).
    The registry and consumers never see any of these: a listing carries the kind and
    format only.
    """

    kind: str
    """``file`` (any bytes), ``table`` (CSV or JSON Lines with a field list), ``sql``
    (one read-only SELECT) or ``stream`` (JSON messages of a broker, with a field list)."""
    path: str = ""
    """For files and tables: where the bytes are."""
    format: str = ""
    """For tables and sql: the delivered form, ``csv`` or ``jsonl``."""
    connection: str = ""
    """For sql and stream: the name of a ``[sources.NAME]`` connection of the provider."""
    query: str = ""
    """For sql: the SELECT whose output columns are the product's fields."""
    subject: str = ""
    """For stream on a NATS connection: the JetStream subject the messages are on."""
    topic: str = ""
    """For stream on an MQTT connection: the topic (filter) the messages are on."""


@dataclass(frozen=True)
class AccessRules:
    """Who may see the product in a catalog (see policies/tds/access.rego)."""

    roles: tuple[str, ...] = ()
    allow_list: tuple[str, ...] = ()
    attrs: dict[str, str] = field(default_factory=dict)


PERIODS = {"minute": 60, "hour": 3600, "day": 86400}
"""The periods a stream's per-period limits count in, in seconds. A period starts at a
multiple of its length since the Unix epoch (a day is a UTC day), so every replica puts a
message in the same period."""


@dataclass(frozen=True)
class PeriodLimits:
    """A stream's limits per period: at most ``max_messages`` messages and ``max_bytes``
    bytes (of the records as delivered) in each ``period`` (0: that one has no limit)."""

    period: str
    max_messages: int = 0
    max_bytes: int = 0

    @property
    def seconds(self) -> int:
        """The period's length."""
        return PERIODS[self.period]


@dataclass(frozen=True)
class Offer:
    """Terms under which the product may be contracted for."""

    id: str
    purposes: tuple[str, ...]
    valid_from_ns: int
    valid_until_ns: int
    max_transfers: int = 0
    """0: no limit."""
    max_bytes: int = 0
    """0: no limit."""
    max_messages: int = 0
    """For streams: messages delivered under the agreement in all (0: no limit)."""
    per_period: PeriodLimits | None = None
    """For streams: messages and bytes delivered per hour or day (``None``: no limit)."""
    obligations: dict[str, Any] = field(default_factory=dict)
    policy_module: str = ""
    """Id of the provider's own Rego module for this offer (``package tds.provider.<id>``)."""
    policy_source: str = ""
    """The module's source, validated on upload."""
    permitted_fields: tuple[str, ...] | None = None
    """For tables: the fields delivered under this offer (``None``: all); required for
    important data."""
    masks: dict[str, Any] = field(default_factory=dict)
    """For tables: field -> mask applied before delivery (see connector.transfer.masking)."""
    delivery: tuple[str, ...] = ("copy",)
    """How the product may be delivered under this offer (``DELIVERY_MODES``)."""
    compute: ComputeRules | None = None
    """What a consumer may compute (required when ``compute`` is a delivery mode)."""


@dataclass(frozen=True)
class Product:
    """A data product as its provider publishes it."""

    id: str
    title: str
    owner: str
    grade: str
    source: Source
    offers: tuple[Offer, ...]
    description: str = ""
    tags: tuple[str, ...] = ()
    domain: str = ""
    fields: tuple[str, ...] = ()
    registration_code: str = ""
    personal: bool = False
    access: AccessRules = field(default_factory=AccessRules)

    def offer(self, offer_id: str) -> Offer:
        """One offer, or ``KeyError``."""
        for o in self.offers:
            if o.id == offer_id:
                return o
        raise KeyError(offer_id)

    def resource(self) -> dict[str, Any]:
        """The ``resource`` of a policy input document."""
        # The members a catalog page's rule reads for every product (policies/tds/
        # access.rego: id, grade, access) come first: rego-cpp finds a member by comparing
        # keys in the order they were added (see connector.policy._rego_c.LOOKUP_ORDER,
        # which orders a lone ``resource`` but not the elements of a page's
        # ``resources``), and with ``access`` last a page's decision took a fifth longer.
        return {
            "id": self.id,
            "grade": self.grade,
            "access": {
                "roles": list(self.access.roles),
                "allow_list": list(self.access.allow_list),
                "attrs": dict(self.access.attrs),
            },
            "owner": self.owner,
            "tags": list(self.tags),
            "domain": self.domain,
            "fields": list(self.fields),
            "registration_code": self.registration_code,
            "personal": self.personal,
        }

    def to_json(self) -> str:
        """The stored form (canonical field order). A source's empty ``subject`` and
        ``topic`` are left out, so products other than streams read the same as before
        (a registry of an earlier version takes their listings)."""
        stored = asdict(self)
        for key in ("subject", "topic"):
            if not stored["source"][key]:
                del stored["source"][key]
        for offer, raw in zip(self.offers, stored["offers"], strict=True):
            # The rules in the shape parse_rules reads (asdict would flatten them into lists).
            raw["compute"] = offer.compute.to_dict() if offer.compute is not None else None
            # Stream limits only where set, so other offers read as they did before.
            for key in ("max_messages", "per_period"):
                if not raw[key]:
                    del raw[key]
        return json.dumps(stored, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Product:
        """A product in the form ``to_json`` writes, checked as a description is (for a
        form from elsewhere, such as a listing a provider sends the registry)."""
        return _product(json.loads(text), owner=None)

    @classmethod
    def from_stored(cls, text: str) -> Product:
        """A product this connector stored (``to_json`` of a product validated when it was
        published), built from its fields without checking them again: a catalog page
        reads up to a thousand, and the checks were two thirds of reading one.

        Only the form this version writes, for offers without masks or compute rules, is
        built that way; any other (an older form, a missing or unknown field, masks or
        rules, which have types of their own) goes through ``from_json``.
        """
        d = json.loads(text)
        try:
            return _stored_product(d)
        except (KeyError, TypeError, _NotPlain):
            return _product(d, owner=None)


def _str(
    d: dict[str, Any], key: str, where: str, *, required: bool = True, default: str = ""
) -> str:
    if key not in d:
        if required:
            raise InvalidRequest(f"{where}.{key} is required")
        return default
    value = d[key]
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key} must be a string")
    return value


def _strs(d: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where}.{key} must be a list of strings")
    return tuple(value)


def _int(d: dict[str, Any], key: str, where: str, *, default: int | None = None) -> int:
    if key not in d:
        if default is None:
            raise InvalidRequest(f"{where}.{key} is required")
        return default
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidRequest(f"{where}.{key} must be a non-negative integer")
    return value


def _known(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field {where}.{unknown[0]}; valid: {', '.join(sorted(allowed))}"
        )


def _offer(d: Any, where: str) -> Offer:
    if not isinstance(d, dict):
        raise InvalidRequest(f"{where} must be a table")
    _known(
        d,
        {
            "id",
            "purposes",
            "valid_from_ns",
            "valid_until_ns",
            "max_transfers",
            "max_bytes",
            "max_messages",
            "per_period",
            "obligations",
            "policy_module",
            "policy_source",
            "permitted_fields",
            "masks",
            "delivery",
            "compute",
        },
        where,
    )
    oid = _str(d, "id", where)
    if not _ID.match(oid):
        raise InvalidRequest(f"{where}.id {oid!r}: use lower-case letters, digits, '.', '_', '-'")
    purposes = _strs(d, "purposes", where)
    if not purposes:
        raise InvalidRequest(f"{where}.purposes must name at least one purpose")
    start, end = _int(d, "valid_from_ns", where), _int(d, "valid_until_ns", where)
    if end <= start:
        raise InvalidRequest(f"{where}.valid_until_ns must be after valid_from_ns")
    obligations = d.get("obligations", {})
    if not isinstance(obligations, dict):
        raise InvalidRequest(f"{where}.obligations must be a table")
    module = _str(d, "policy_module", where, required=False)
    source = _str(d, "policy_source", where, required=False)
    if module and not _MODULE_ID.match(module):
        raise InvalidRequest(f"{where}.policy_module: lower-case letters, digits and '_'")
    if bool(module) != bool(source):
        raise InvalidRequest(f"{where}.policy_module and policy_source go together")
    return Offer(
        id=oid,
        purposes=purposes,
        valid_from_ns=start,
        valid_until_ns=end,
        max_transfers=_int(d, "max_transfers", where, default=0),
        max_bytes=_int(d, "max_bytes", where, default=0),
        max_messages=_int(d, "max_messages", where, default=0),
        per_period=_per_period(d.get("per_period"), f"{where}.per_period"),
        obligations=obligations,
        policy_module=module,
        policy_source=source,
        permitted_fields=(
            _strs(d, "permitted_fields", where) if d.get("permitted_fields") is not None else None
        ),
        masks=normalise_masks(d.get("masks"), (), f"{where}.masks"),
        delivery=_delivery(d, where),
        compute=(
            parse_rules(d["compute"], f"{where}.compute") if d.get("compute") is not None else None
        ),
    )


def _per_period(d: Any, where: str) -> PeriodLimits | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise InvalidRequest(f"{where} must be a table")
    _known(d, {"period", "max_messages", "max_bytes"}, where)
    period = _str(d, "period", where)
    if period not in PERIODS:
        raise InvalidRequest(f"{where}.period must be one of {', '.join(PERIODS)}")
    limits = PeriodLimits(
        period=period,
        max_messages=_int(d, "max_messages", where, default=0),
        max_bytes=_int(d, "max_bytes", where, default=0),
    )
    if not limits.max_messages and not limits.max_bytes:
        raise InvalidRequest(f"{where} must set max_messages, max_bytes or both")
    return limits


def _delivery(d: dict[str, Any], where: str) -> tuple[str, ...]:
    modes = _strs(d, "delivery", where) if "delivery" in d else ("copy",)
    if not modes or any(m not in DELIVERY_MODES for m in modes) or len(set(modes)) != len(modes):
        raise InvalidRequest(
            f"{where}.delivery must list one or both of {', '.join(DELIVERY_MODES)}, once each"
        )
    has_rules = d.get("compute") is not None
    if "compute" in modes and not has_rules:
        raise InvalidRequest(
            f"{where}.compute is required when delivery includes 'compute': declare the "
            "dimensions, measures and k a consumer may ask for"
        )
    if has_rules and "compute" not in modes:
        raise InvalidRequest(f"{where}.compute is set but delivery does not include 'compute'")
    if "push" in modes and "copy" not in modes:
        raise InvalidRequest(
            f"{where}.delivery: 'push' is how a copy is delivered; list it with 'copy'"
        )
    return tuple(m for m in DELIVERY_MODES if m in modes)


def _source(src: Any, fields: tuple[str, ...]) -> Source:
    """``product.source``. A stored or listed product has blank fields where the provider
    keeps things to itself (the registry gets no path, connection or query), so only
    ``parse_description`` requires them filled."""
    where = "product.source"
    if not isinstance(src, dict):
        raise InvalidRequest(
            "product.source is required: a table with kind and path (file, table) or kind, "
            "connection and query (sql)"
        )
    _known(src, {"kind", "path", "format", "connection", "query", "subject", "topic"}, where)
    kind = _str(src, "kind", where)
    if kind not in SOURCE_KINDS:
        raise InvalidRequest(f"product.source.kind must be one of {', '.join(SOURCE_KINDS)}")
    fmt = _str(src, "format", where, required=False)
    if kind in RECORD_KINDS and (fmt not in ("csv", "jsonl") or not fields):
        raise InvalidRequest(
            f"a {kind} source needs format 'csv' or 'jsonl' and the product's fields"
        )
    if kind != "stream":
        for key in ("subject", "topic"):
            if _str(src, key, where, required=False):
                raise InvalidRequest(f"product.source.{key} applies to stream sources only")
    if kind == "sql":
        if _str(src, "path", where, required=False):
            raise InvalidRequest(
                "product.source.path does not apply to an sql source: it reads "
                "source.query on source.connection"
            )
        return Source(
            kind=kind,
            format=fmt,
            connection=_str(src, "connection", where),
            query=_str(src, "query", where),
        )
    if kind == "stream":
        return _stream_source(src, fields, fmt)
    for key in ("connection", "query"):
        if _str(src, key, where, required=False):
            raise InvalidRequest(f"product.source.{key} applies to sql and stream sources only")
    return Source(kind=kind, path=_str(src, "path", where), format=fmt)


def _stream_source(src: dict[str, Any], fields: tuple[str, ...], fmt: str) -> Source:
    """A ``stream`` source: a connection and a subject or a topic, messages as JSON Lines."""
    where = "product.source"
    for key in ("path", "query"):
        if _str(src, key, where, required=False):
            raise InvalidRequest(
                f"product.source.{key} does not apply to a stream source: it reads "
                "source.subject (NATS) or source.topic (MQTT) on source.connection"
            )
    if fmt not in ("", "jsonl"):
        raise InvalidRequest("a stream source is delivered as JSON Lines: leave format out")
    if not fields or len(set(fields)) != len(fields):
        raise InvalidRequest("a stream source needs the product's fields, each named once")
    subject = _str(src, "subject", where, required=False)
    topic = _str(src, "topic", where, required=False)
    if subject and topic:
        raise InvalidRequest(
            "product.source: give a subject (NATS connection) or a topic (MQTT), not both"
        )
    return Source(
        kind="stream",
        format="jsonl",
        connection=_str(src, "connection", where, required=False),
        subject=subject,
        topic=topic,
    )


def _product(d: Any, owner: str | None) -> Product:
    where = "product"
    if not isinstance(d, dict):
        raise InvalidRequest("a product description is a table")
    _known(
        d,
        {
            "id",
            "title",
            "description",
            "owner",
            "grade",
            "tags",
            "domain",
            "fields",
            "registration_code",
            "personal",
            "access",
            "source",
            "offers",
        },
        where,
    )
    pid = _str(d, "id", where)
    if not _ID.match(pid):
        raise InvalidRequest(f"product.id {pid!r}: use lower-case letters, digits, '.', '_', '-'")
    grade = _str(d, "grade", where)
    if grade not in GRADES:
        raise InvalidRequest(f"product.grade must be one of {', '.join(GRADES)}")
    fields = _strs(d, "fields", where)
    source = _source(d.get("source"), fields)
    access = d.get("access", {})
    if not isinstance(access, dict):
        raise InvalidRequest("product.access must be a table")
    _known(access, {"roles", "allow_list", "attrs"}, "product.access")
    attrs = access.get("attrs", {})
    if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
        raise InvalidRequest("product.access.attrs must map names to strings")
    offers_raw = d.get("offers", [])
    if not isinstance(offers_raw, list) or not offers_raw:
        raise InvalidRequest("product.offers must list at least one offer")
    offers = tuple(_offer(o, f"product.offers[{i}]") for i, o in enumerate(offers_raw))
    ids = [o.id for o in offers]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("product.offers ids must be unique")
    for i, o in enumerate(offers):
        if source.kind != "stream" and (o.max_messages or o.per_period is not None):
            raise InvalidRequest(
                f"product.offers[{i}]: max_messages and per_period limit streams; "
                f"this product's source is {source.kind!r}"
            )
    personal = d.get("personal", False)
    if not isinstance(personal, bool):
        raise InvalidRequest("product.personal must be true or false")
    stated_owner = _str(d, "owner", where, required=owner is None, default=owner or "")
    if owner is not None and stated_owner != owner:
        raise InvalidRequest(f"product.owner must be this connector's participant {owner!r}")
    return Product(
        id=pid,
        title=_str(d, "title", where),
        owner=stated_owner,
        grade=grade,
        source=source,
        offers=offers,
        description=_str(d, "description", where, required=False),
        tags=_strs(d, "tags", where),
        domain=_str(d, "domain", where, required=False),
        fields=fields,
        registration_code=_str(d, "registration_code", where, required=False),
        personal=personal,
        access=AccessRules(
            roles=_strs(access, "roles", "product.access"),
            allow_list=_strs(access, "allow_list", "product.access"),
            attrs=dict(attrs),
        ),
    )


class _NotPlain(Exception):
    """A stored product ``_stored_product`` leaves to the checking parser."""


def _stored_product(d: dict[str, Any]) -> Product:
    """``Product.from_stored``'s direct build; ``KeyError``, ``TypeError`` or ``_NotPlain``
    for a form it does not build."""
    offers = []
    for o in d["offers"]:
        if o["masks"] or o["compute"] is not None or o.keys() != _PLAIN_OFFER_FIELDS:
            raise _NotPlain
        permitted = o["permitted_fields"]
        offers.append(
            Offer(
                id=o["id"],
                purposes=tuple(o["purposes"]),
                valid_from_ns=o["valid_from_ns"],
                valid_until_ns=o["valid_until_ns"],
                max_transfers=o["max_transfers"],
                max_bytes=o["max_bytes"],
                obligations=o["obligations"],
                policy_module=o["policy_module"],
                policy_source=o["policy_source"],
                permitted_fields=tuple(permitted) if permitted is not None else None,
                delivery=tuple(o["delivery"]),
            )
        )
    access = d["access"]
    if len(d) != len(_PRODUCT_FIELDS) or len(access) != 3 or not offers:
        raise _NotPlain
    return Product(
        id=d["id"],
        title=d["title"],
        owner=d["owner"],
        grade=d["grade"],
        source=Source(**d["source"]),
        offers=tuple(offers),
        description=d["description"],
        tags=tuple(d["tags"]),
        domain=d["domain"],
        fields=tuple(d["fields"]),
        registration_code=d["registration_code"],
        personal=d["personal"],
        access=AccessRules(
            roles=tuple(access["roles"]),
            allow_list=tuple(access["allow_list"]),
            attrs=dict(access["attrs"]),
        ),
    )


_OFFER_FIELDS = frozenset(f.name for f in dataclass_fields(Offer))
_PLAIN_OFFER_FIELDS = _OFFER_FIELDS - {"max_messages", "per_period"}
"""A stored offer's keys when it has no stream limits (``to_json`` writes those only where
set; an offer with them has types of its own and goes through the checking parser)."""
_PRODUCT_FIELDS = frozenset(f.name for f in dataclass_fields(Product))


def _check_field_policy(
    offer: Offer, fields: tuple[str, ...], grade: str, kind: str, where: str
) -> None:
    """Field lists and masks name the product's fields; important tables list theirs."""
    if "push" in offer.delivery and kind != "stream":
        raise InvalidRequest(
            f"{where}.delivery: 'push' applies to stream products (a copy of a file or "
            "table is pushed when the consumer asks: tds transfer --push)"
        )
    if (offer.permitted_fields is not None or offer.masks) and kind not in FIELD_KINDS:
        raise InvalidRequest(
            f"{where}: permitted_fields and masks apply to sources with fields "
            f"({', '.join(FIELD_KINDS)}) only"
        )
    if grade == "important" and fields and kind not in FIELD_KINDS:
        raise InvalidRequest(
            "an important file product cannot declare fields: no field policy applies to "
            "opaque bytes (publish it as a table, or without fields)"
        )
    for name in offer.permitted_fields or ():
        if name not in fields:
            raise InvalidRequest(f"{where}.permitted_fields: {name!r} is not a product field")
    for name in offer.masks:
        if name not in fields:
            raise InvalidRequest(f"{where}.masks: {name!r} is not a product field")
    if offer.compute is not None:
        if kind not in RECORD_KINDS:
            raise InvalidRequest(
                f"{where}.compute applies to table and sql sources, not opaque files"
            )
        declared = [d.name for d in offer.compute.dimensions] + [
            m.name for m in offer.compute.measures
        ]
        for name in declared:
            if name not in fields:
                raise InvalidRequest(f"{where}.compute: {name!r} is not a product field")
    if "copy" not in offer.delivery:
        return  # only answers leave: no field list to check for a copy
    if grade == "important" and fields and not offer.permitted_fields:
        raise InvalidRequest(
            f"{where}.permitted_fields is required for important data (重要数据): "
            "list the fields this offer delivers"
        )


def parse_description(text: str | bytes, *, owner: str, fmt: str = "auto") -> Product:
    """Parse and validate a product description (TOML or JSON) for ``owner``'s connector."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_DESCRIPTION_BYTES:
        raise InvalidRequest(f"product description is larger than {MAX_DESCRIPTION_BYTES} bytes")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("product description is not UTF-8") from None
    if fmt == "auto":
        fmt = "json" if decoded.lstrip().startswith("{") else "toml"
    try:
        data = json.loads(decoded) if fmt == "json" else tomllib.loads(decoded)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequest(f"product description is not valid {fmt.upper()}: {exc}") from None
    product = _product(data, owner=owner)
    if product.source.kind == "sql" and not (product.source.connection and product.source.query):
        raise InvalidRequest(
            "an sql source needs source.connection (a [sources.NAME] of the provider's "
            "configuration) and source.query (one SELECT)"
        )
    if product.source.kind == "stream" and not (
        product.source.connection and (product.source.subject or product.source.topic)
    ):
        raise InvalidRequest(
            "a stream source needs source.connection (a [sources.NAME] broker of the "
            "provider's configuration) and source.subject (NATS) or source.topic (MQTT)"
        )
    if product.grade == "core":
        raise InvalidRequest("core data (核心数据) is never published: this product is refused")
    for i, offer in enumerate(product.offers):
        _check_field_policy(
            offer, product.fields, product.grade, product.source.kind, f"product.offers[{i}]"
        )
    return product
