"""``tds product`` (the provider's admin) and ``tds catalog`` (any member)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from connector._proto.tds.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    registry_pb2,
)
from connector.cli.output import JSON_HELP, emit, json_line
from connector.cli.pages import follow_pages
from connector.config import load_config
from connector.errors import ConfigError
from connector.node.clients import admin_channel, member_channel, registry_client
from connector.rpc.channel import calling


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tds product`` and ``tds catalog``."""
    prod = sub.add_parser("product", help="publish and manage your data products (admin)")
    ps = prod.add_subparsers(dest="product_command", required=True, metavar="COMMAND")
    add = ps.add_parser(
        "add",
        help="publish products from description files (TOML or JSON)",
        description="See examples/products/traffic-flow.toml for every field. Several "
        "files are published together: all of them, or none (the error names the refused "
        "file and why).",
    )
    add.add_argument(
        "file", type=Path, nargs="+", help="product descriptions (.toml or .json), up to 1000"
    )
    add.add_argument("--config", required=True, type=Path, help="your connector's config")
    add.add_argument("--replace", action="store_true", help="update an existing product")
    add.add_argument("--json", action="store_true", help=JSON_HELP)
    add.set_defaults(func=run_add)
    for name, helptext, func in (
        ("list", "list your products", run_list),
        ("show", "show one of your products", run_show),
        ("remove", "withdraw a product", run_remove),
    ):
        p = ps.add_parser(name, help=helptext)
        if name != "list":
            p.add_argument("product", help="the product id")
        p.add_argument("--config", required=True, type=Path, help="your connector's config")
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.set_defaults(func=func)

    reg = ps.add_parser(
        "register",
        help="list a product in the registry's catalog index",
        description="List the product with the operator's registry so that "
        "members can find it with 'tds catalog search'; --public asks for a "
        "registration code (登记码) for public data, stored with the product.",
    )
    reg.add_argument("product", help="the product id")
    reg.add_argument("--config", required=True, type=Path, help="your connector's config")
    reg.add_argument(
        "--public", action="store_true", help="public data: ask for a registration code"
    )
    reg.add_argument("--json", action="store_true", help=JSON_HELP)
    reg.set_defaults(func=run_register)

    cat = sub.add_parser("catalog", help="browse another member's catalog")
    cs = cat.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    ls = cs.add_parser("list", help="products a provider lets you see")
    ls.add_argument("--provider", required=True, help="the provider's participant id")
    _filter_arguments(ls)
    ls.add_argument("--config", required=True, type=Path, help="your connector's config")
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    ls.add_argument(
        "--dsp", action="store_true", help="print a Dataspace Protocol 2025-1 Catalog (JSON-LD)"
    )
    ls.set_defaults(func=run_catalog_list)
    se = cs.add_parser("search", help="search the registry's index across providers")
    se.add_argument(
        "text", nargs="?", default="", help="words to find in titles, descriptions and tags"
    )
    _filter_arguments(se)
    se.add_argument("--config", required=True, type=Path, help="your connector's config")
    se.add_argument("--json", action="store_true", help=JSON_HELP)
    se.set_defaults(func=run_search)


def _product_dict(summary: catalog_pb2.ProductSummary) -> Any:
    """``MessageToDict(summary, preserving_proto_field_name=True)``, made faster
    (``message_dict``): a whole catalog is converted one product at a time."""
    return message_dict(summary)


def _dict_and_line(summary: catalog_pb2.ProductSummary) -> tuple[Any, str]:
    """The product as ``_product_dict`` gives it, and as ``--json`` prints it."""
    product = _product_dict(summary)
    return product, json_line(product)


_AS_TEXT = frozenset(  # 64-bit integers: JSON text, as protobuf's JSON mapping writes them
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_AS_IS = frozenset(
    {
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_BOOL,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    }
)


def message_dict(message: Any) -> Any:
    """What ``MessageToDict(message, preserving_proto_field_name=True)`` gives, built from
    the fields that are set (``ListFields``) instead of every field of the descriptor:
    about half the time for a catalog's products. Strings, booleans, integers and nested
    messages are converted here; a message with any other kind of field (bytes, floats,
    enums, maps, well-known types) is left to ``MessageToDict`` whole, so the answer is
    always protobuf's own (tested against it)."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        kind = field.type
        if kind in _AS_IS:
            out[field.name] = list(value) if field.is_repeated else value
        elif kind in _AS_TEXT:
            out[field.name] = [str(v) for v in value] if field.is_repeated else str(value)
        elif (
            kind == FieldDescriptor.TYPE_MESSAGE
            and not field.message_type.GetOptions().map_entry
            and field.message_type.file.package != "google.protobuf"
        ):
            out[field.name] = (
                [message_dict(v) for v in value] if field.is_repeated else message_dict(value)
            )
        else:
            from google.protobuf.json_format import MessageToDict

            return MessageToDict(message, preserving_proto_field_name=True)
    return out


def _same(item: Any) -> Any:
    return item


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return value


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    if not any(a.dest == "text" for a in p._actions):
        p.add_argument("--text", default="", help="words to find in titles, descriptions, tags")
    p.add_argument("--tag", default="", help="only products with this tag")
    p.add_argument("--domain", default="", help="only products of this domain")
    p.add_argument("--grade", default="", help="only products of this grade (general, important)")
    p.add_argument(
        "--limit",
        type=_count,
        default=0,
        metavar="N",
        help="stop after N products (default: all; pages are followed as needed)",
    )


def _admin(args: argparse.Namespace) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(admin_channel(load_config(args.config)))


def _line(p: dict[str, object]) -> str:
    offers = p.get("offers") or []
    return f"{p['id']:<24} {p['grade']:<10} {len(offers)} offer(s)  {p['title']}"  # type: ignore[arg-type]


def _description(path: Path) -> admin_pb2.ProductDescription:
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    fmt = "json" if path.suffix == ".json" else "toml" if path.suffix == ".toml" else ""
    return admin_pb2.ProductDescription(
        description=text, format=fmt, base_dir=str(path.resolve().parent), name=str(path)
    )


def run_add(args: argparse.Namespace) -> int:
    """Publish one product, or many at once (all or none)."""
    cfg = load_config(args.config)
    given = [_description(path) for path in args.file]
    if len(given) == 1:
        one = given[0]
        request = admin_pb2.AddProductRequest(
            description=one.description,
            format=one.format,
            replace=args.replace,
            base_dir=one.base_dir,
        )
    else:
        request = admin_pb2.AddProductRequest(batch=given, replace=args.replace)
    if request.ByteSize() > cfg.server.max_message_bytes - 1024:
        raise ConfigError(
            f"these {len(given)} descriptions are larger together than one call may carry "
            f"(server.max_message_bytes, {cfg.server.max_message_bytes} bytes): publish them "
            "in smaller batches"
        )
    with calling("your connector"):
        resp = admin_pb2_grpc.AdminServiceStub(admin_channel(cfg)).AddProduct(
            request, timeout=30 + len(given) // 10
        )
    if len(given) == 1:
        product = json.loads(resp.product_json)
        emit(product, f"Published {_line(product)}", as_json=args.json)
        return 0
    products = [json.loads(p) for p in resp.products_json]
    emit(
        products,
        "\n".join(f"Published {_line(p)}" for p in products),
        as_json=args.json,
    )
    return 0


def _own(args: argparse.Namespace) -> list[dict[str, object]]:
    stub = _admin(args)

    def fetch(token: str, size: int | None) -> tuple[list[str], str, int]:
        resp = stub.ListOwnProducts(
            admin_pb2.ListOwnProductsRequest(page_token=token, page_size=size or 0), timeout=30
        )
        return list(resp.products_json), resp.next_page_token, resp.max_page_size

    with calling("your connector"):
        return follow_pages(fetch, json.loads, label="your products")


def run_list(args: argparse.Namespace) -> int:
    """List own products."""
    products = _own(args)
    emit(products, "\n".join(_line(p) for p in products) or "(no products)", as_json=args.json)
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Show one own product."""
    for p in _own(args):
        if p["id"] == args.product:
            emit(p, json.dumps(p, indent=2, ensure_ascii=False), as_json=args.json)
            return 0
    raise ConfigError(f"you publish no product {args.product!r}")


def run_remove(args: argparse.Namespace) -> int:
    """Withdraw a product."""
    with calling("your connector"):
        _admin(args).RemoveProduct(
            admin_pb2.RemoveProductRequest(product_id=args.product), timeout=30
        )
    emit({"removed": args.product}, f"Removed {args.product}", as_json=args.json)
    return 0


def _compute_note(offer: dict[str, Any]) -> str:
    """Whether an offer answers questions instead of (or besides) giving copies."""
    modes = offer.get("delivery") or ["copy"]
    if "compute" not in modes:
        return ""
    rules = json.loads(offer.get("compute_json") or "{}")
    dims = ", ".join(sorted(rules.get("dimensions", {})))
    what = "compute only" if modes == ["compute"] else "copy or compute"
    return f"{what}, k={rules.get('k')}, by {dims or '(no dimension)'}"


def _stream_note(offer: dict[str, Any]) -> str:
    """A stream offer's message limits, in all and per period (int64s come as strings)."""
    parts = []
    if offer.get("max_messages"):
        parts.append(f"{offer['max_messages']} messages in all")
    period = offer.get("per_period") or {}
    each = [
        f"{period[key]} {unit}"
        for key, unit in (("max_messages", "messages"), ("max_bytes", "bytes"))
        if period.get(key)
    ]
    if each:
        parts.append(f"{' and '.join(each)} per {period['period']}")
    return f"at most {', '.join(parts)}" if parts else ""


def _offer_notes(product: dict[str, Any]) -> str:
    """The terms of each offer a listing line alone does not show."""
    notes = []
    for o in product.get("offers", []):
        pushed = "delivered by push" if "push" in (o.get("delivery") or []) else ""
        said = [n for n in (_compute_note(o), _stream_note(o), pushed) if n]
        if said:
            notes.append(f"{o['id']}: {'; '.join(said)}")
    return "".join(f"\n    offer {n}" for n in notes)


def run_catalog_list(args: argparse.Namespace) -> int:
    """List a provider's catalog as this member."""
    cfg = load_config(args.config)
    registry = registry_client(cfg)
    try:
        peer = registry.lookup(args.provider)
        with member_channel(cfg, registry, peer.id, peer.address) as channel, calling(peer.id):
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)

            def fetch(
                token: str, size: int | None
            ) -> tuple[list[catalog_pb2.ProductSummary], str, int]:
                resp = stub.ListProducts(
                    catalog_pb2.ListProductsRequest(
                        tag=args.tag,
                        domain=args.domain,
                        grade=args.grade,
                        text=args.text,
                        page_token=token,
                        page_size=size,
                        # Every page wanted: the provider may read the next one ahead.
                        all_pages=not args.limit,
                    ),
                    timeout=30,
                )
                return list(resp.products), resp.next_page_token, resp.max_page_size

            label = f"{peer.id}'s catalog"
            lines: list[str] | None = None
            if args.json and not args.dsp:
                # Each product's JSON line is written beside its dict while the next page
                # is on its way, not all of them after the last page.
                both = follow_pages(fetch, _dict_and_line, limit=args.limit, label=label)
                products, lines = [d for d, _ in both], [line for _, line in both]
            else:
                convert = _product_dict if not args.dsp else _same
                products = follow_pages(fetch, convert, limit=args.limit, label=label)
    finally:
        registry.close()
    if args.dsp:
        from connector.negotiation.dsp import catalog_message

        emit(
            catalog_message(
                peer.id, products, f"grpcs://{peer.address}", space=cfg.participant.space
            ),
            "",
            as_json=True,
        )
        return 0
    if args.json:  # the lines for people are not made for scripts (10,000 of them: 40 ms)
        emit(products, "", as_json=True, lines=lines)
        return 0
    lines = [
        f"{p['id']:<24} {p.get('grade', ''):<10} {p.get('title', '')}"
        + (f"  [{p['registration_code']}]" if p.get("registration_code") else "")
        + _offer_notes(p)
        for p in products
    ]
    emit(
        products,
        "\n".join(lines) or f"(nothing in {args.provider}'s catalog for you)",
        as_json=False,
    )
    return 0


def run_register(args: argparse.Namespace) -> int:
    """List a product with the registry."""
    with calling("your connector"):
        resp = _admin(args).RegisterProduct(
            admin_pb2.RegisterOwnProductRequest(product_id=args.product, public=args.public),
            timeout=30,
        )
    product = json.loads(resp.product_json)
    code = product.get("registration_code") or "(not public: no code)"
    emit(
        product,
        f"Listed {product['id']} in the registry's index; registration code {code}",
        as_json=args.json,
    )
    return 0


def run_search(args: argparse.Namespace) -> int:
    """Search the index as this member."""
    registry = registry_client(load_config(args.config))
    try:

        def fetch(
            token: str, size: int | None
        ) -> tuple[list[registry_pb2.CatalogListing], str, int]:
            resp = registry.search_catalog_page(
                registry_pb2.SearchCatalogRequest(
                    text=args.text,
                    tag=args.tag,
                    domain=args.domain,
                    grade=args.grade,
                    page_token=token,
                    page_size=size,
                )
            )
            return list(resp.listings), resp.next_page_token, resp.max_page_size

        listings = follow_pages(fetch, _same, limit=args.limit, label="the registry's index")
    finally:
        registry.close()
    rows = [
        {
            "provider": x.provider,
            "product": x.product_id,
            "title": x.title,
            "grade": x.grade,
            "tags": list(x.tags),
            "registration_code": x.registration_code,
        }
        for x in listings
    ]
    lines = [
        f"{r['provider']:<12} {r['product']:<24} {r['grade']:<10} {r['title']}"
        + (f"  [{r['registration_code']}]" if r["registration_code"] else "")
        for r in rows
    ]
    emit(rows, "\n".join(lines) or "(nothing found that you may see)", as_json=args.json)
    return 0
