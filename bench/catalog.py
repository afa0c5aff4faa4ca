"""Benchmark catalogs at city scale: publishing, paging, the CLI, and the registry's index.

    python bench/catalog.py [--products 10000] [--listings 50000] [--rounds 20] [--json]

In one local space (registry, provider ``gov``, member ``a``, in-process):

- publishing ``--products`` descriptions of about 1 KB one by one through
  ``Catalog.publish`` (one in a hundred with its own policy module): the rate of the first
  thousand against the last thousand (target: the last within 1.5x of the first);
- the first page of ``CatalogService.ListProducts`` as ``a`` (p50 over ``--rounds``;
  target 50 ms);
- the whole catalog through ``tds catalog list --json`` as a user runs it (target 2 s;
  median of ``--cli-runs`` after an untimed one, with the CPU time of the CLI and of the
  provider's process, which the machine's load does not stretch as it does wall time, and
  the pages decided with resources read ahead; ``--compare-read-ahead`` also times it
  with the provider's read-ahead off, runs alternated);
- ``SearchCatalog`` across ``--listings`` listings of 10 providers, written straight into
  the registry's database (p50 of the first page of a one-word text search; target 100 ms).

Pages are the provider's default size (``catalog.page_size``, 100).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import catalog_pb2, catalog_pb2_grpc, registry_pb2
from connector.catalog import paging
from connector.catalog.products import parse_description
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import member_channel, registry_client
from connector.node.memory import freeze_startup_objects
from connector.store.models import CatalogListingRow

WORDS = [
    "traffic",
    "flow",
    "parking",
    "transit",
    "energy",
    "water",
    "air",
    "quality",
    "noise",
    "permits",
    "housing",
    "schools",
    "health",
    "budget",
    "tenders",
    "waste",
    "bicycles",
    "weather",
    "tourism",
    "buildings",
    "roads",
    "lighting",
]

MODULE = """package tds.provider.{name}

import rego.v1

deny contains "night_only" if input.context.now_ns < 0
"""


def description(i: int, source: str) -> str:
    """A product of about 1 KB; one in a hundred carries its own policy module."""
    word = WORDS[i % len(WORDS)]
    offer: dict[str, Any] = {
        "id": "standard",
        "purposes": ["planning", "research"],
        "valid_from_ns": 1_767_225_600_000_000_000,
        "valid_until_ns": 1_798_761_600_000_000_000,
        "max_transfers": 12,
        "max_bytes": 1 << 30,
    }
    if i % 100 == 99:
        offer["policy_module"] = f"p{i}"
        offer["policy_source"] = MODULE.format(name=f"p{i}")
    return json.dumps(
        {
            "id": f"product-{i:06d}",
            "title": f"City {word} dataset {i}",
            "description": f"Measurements of {word} across the city, district by district, "
            "aggregated every five minutes from the municipal sensor network; "
            "quality-checked and published by the department that collects them. " * 2,
            "grade": "general",
            "tags": [word, f"batch{i % 10}"],
            "domain": "city",
            "fields": ["time", "district", "value", "unit", "sensor", "quality"],
            "source": {"kind": "file", "path": source},
            "offers": [offer],
        }
    )


def publish(sp: LocalSpace, count: int, source: str) -> dict[str, Any]:
    catalog = sp.nodes["gov"].catalog
    assert catalog is not None
    took: list[float] = []
    for i in range(count):
        text = description(i, source)
        t = time.perf_counter()
        catalog.publish(text, fmt="json")
        took.append(time.perf_counter() - t)
    window = min(1000, count // 2)
    first, last = took[:window], took[-window:]
    return {
        "products": count,
        "total_s": round(sum(took), 2),
        "window": window,
        "first_per_s": round(window / sum(first), 1),
        "last_per_s": round(window / sum(last), 1),
        "last_over_first_time": round(sum(last) / sum(first), 2),
        "first_ms_p50": round(statistics.median(first) * 1000, 2),
        "last_ms_p50": round(statistics.median(last) * 1000, 2),
    }


def first_page(sp: LocalSpace, rounds: int) -> dict[str, Any]:
    cfg = sp.configs["a"]
    registry = registry_client(cfg)
    peer = registry.lookup("gov")
    paged = "page_size" in catalog_pb2.ListProductsRequest.DESCRIPTOR.fields_by_name
    took, shown = [], 0
    try:
        with member_channel(cfg, registry, peer.id, peer.address) as channel:
            stub = catalog_pb2_grpc.CatalogServiceStub(channel)
            for _ in range(rounds + 2):
                t = time.perf_counter()
                resp = stub.ListProducts(catalog_pb2.ListProductsRequest(), timeout=120)
                took.append(time.perf_counter() - t)
                shown = len(resp.products)
    finally:
        registry.close()
    took = took[2:]  # the first calls open the connection
    return {
        "paged": paged,
        "products_in_page": shown,
        "p50_ms": round(statistics.median(took) * 1000, 1),
        "max_ms": round(max(took) * 1000, 1),
    }


def whole_catalog_cli(sp: LocalSpace, runs: int, compare: bool = False) -> dict[str, Any]:
    """``tds catalog list --json`` of the whole catalog, ``runs`` times after one untimed
    run (which also writes the CLI's bytecode, as installing tds from a wheel does: this
    machine sets PYTHONDONTWRITEBYTECODE, so the bench keeps the cache in its own directory
    with PYTHONPYCACHEPREFIX). Wall time, and CPU time of the CLI and of this process (the
    provider, registry and member connectors) during each run, and how many pages were
    decided with their resources read ahead (``catalog.read_ahead``).

    ``compare``: as many runs again with the provider's read-ahead off, alternated with
    the others, so both are measured in the same conditions."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(sp.root / "pycache")
    cmd = [sys.executable, "-m", "connector", "catalog", "list", "--provider", "gov"]
    cmd += ["--config", str(sp.root / "a.toml"), "--json"]
    catalog = sp.nodes["gov"].catalog
    assert catalog is not None
    limits = catalog._page_limits
    read_ahead_pages = [0]
    fits = paging.PreparedPage.fits

    def counted(self: paging.PreparedPage, candidates: Any) -> bool:
        used = fits(self, candidates)
        read_ahead_pages[0] += used
        return used

    paging.PreparedPage.fits = counted  # type: ignore[method-assign]
    modes = [True, False] if compare else [True]
    figures: dict[bool, dict[str, list[float]]] = {
        m: {"wall": [], "cli": [], "server": [], "ahead": []} for m in modes
    }
    products = 0
    try:
        for i in range(runs + 1):
            for mode in modes if i else [True]:  # the first run is the untimed one
                catalog._page_limits = replace(limits, read_ahead=mode and limits.read_ahead)
                read_ahead_pages[0] = 0
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                own, t = time.process_time(), time.perf_counter()
                done = subprocess.run(
                    cmd, capture_output=True, text=True, cwd=sp.root, timeout=600, env=env
                )
                wall, own = time.perf_counter() - t, time.process_time() - own
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if done.returncode != 0:
                    return {"error": done.stderr.strip()[-500:], "seconds": round(wall, 2)}
                products = len(json.loads(done.stdout))
                if i:
                    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
                    figures[mode]["wall"].append(wall)
                    figures[mode]["server"].append(own)
                    figures[mode]["cli"].append(cpu)
                    figures[mode]["ahead"].append(read_ahead_pages[0])
    finally:
        paging.PreparedPage.fits = fits  # type: ignore[method-assign]
        catalog._page_limits = limits
    # The CLI starting as this command does (``tds catalog list --help``: its own command
    # module only; ``tds --help`` imports every command's), wall and CPU.
    startup, startup_cpu = [], []
    for _ in range(3):
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([*cmd[:5], "--help"], capture_output=True, env=env, check=True)
        startup.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        startup_cpu.append(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
    on = figures[True]
    result: dict[str, Any] = {
        "products": products,
        "runs": runs,
        "seconds": round(statistics.median(on["wall"]), 2),
        "seconds_all": [round(x, 2) for x in on["wall"]],
        "cli_cpu_s": round(statistics.median(on["cli"]), 2),
        "provider_process_cpu_s": round(statistics.median(on["server"]), 2),
        "pages_read_ahead": int(statistics.median(on["ahead"])),
        "cli_startup_s": round(statistics.median(startup), 2),
        "cli_startup_cpu_s": round(statistics.median(startup_cpu), 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    if compare:
        off = figures[False]
        result["read_ahead_off"] = {
            "seconds": round(statistics.median(off["wall"]), 2),
            "seconds_all": [round(x, 2) for x in off["wall"]],
            "cli_cpu_s": round(statistics.median(off["cli"]), 2),
            "provider_process_cpu_s": round(statistics.median(off["server"]), 2),
            "pages_read_ahead": int(statistics.median(off["ahead"])),
        }
    return result


def fill_index(sp: LocalSpace, listings: int) -> None:
    """``listings`` rows from 10 providers, written as the index stores them."""
    db = sp.nodes[sp.manifest.operator_id].db
    providers = ["gov", *(f"provider{n}" for n in range(1, 10))]
    with db.session() as s:
        for i in range(listings):
            provider = providers[i % 10]
            product = parse_description(
                description(i // 10, "data.csv"), owner=provider, fmt="json"
            )
            listed = replace(product, source=replace(product.source, path=""))
            s.add(
                CatalogListingRow(
                    provider=provider,
                    product_id=product.id,
                    body=listed.to_json(),
                    registration_code="",
                    registered_ms=1_767_225_600_000,
                )
            )
            if i % 5000 == 4999:
                s.commit()


def search(sp: LocalSpace, rounds: int) -> dict[str, Any]:
    registry = registry_client(sp.configs["a"])
    took, found = [], 0
    try:
        for i in range(rounds + 2):
            t = time.perf_counter()
            request = registry_pb2.SearchCatalogRequest(text=WORDS[i % len(WORDS)])
            found = len(registry.search_catalog_page(request).listings)
            took.append(time.perf_counter() - t)
    finally:
        registry.close()
    took = took[2:]
    return {
        "listings_in_first_page": found,
        "p50_ms": round(statistics.median(took) * 1000, 1),
        "max_ms": round(max(took) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--listings", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cli-runs", type=int, default=3, help="timed runs of the CLI")
    parser.add_argument(
        "--compare-read-ahead",
        action="store_true",
        help="also time the CLI with the provider's read-ahead off, runs alternated",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tds-bench-catalog-") as tmp:
        root = Path(tmp)
        data = root / "data.csv"
        data.write_text("time,district,value\n1,a,2\n")
        with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
            sp.start_registry()
            sp.start_connector("gov")
            sp.start_connector("a")
            # As ``tds serve`` does once its connector has started (full collections then
            # walk only what serving allocates); here the connectors share this process.
            freeze_startup_objects()
            result: dict[str, Any] = {"publish": publish(sp, args.products, str(data))}
            result["first_page"] = first_page(sp, args.rounds)
            result["cli_whole_catalog"] = whole_catalog_cli(
                sp, args.cli_runs, args.compare_read_ahead
            )
            fill_index(sp, args.listings)
            result["registry_search"] = search(sp, args.rounds)
            result["registry_search"]["listings"] = args.listings
    targets = {
        "publish_last_within_1.5x": result["publish"]["last_over_first_time"] <= 1.5,
        "first_page_p50_le_50ms": result["first_page"]["p50_ms"] <= 50,
        "cli_whole_catalog_le_2s": result["cli_whole_catalog"].get("seconds", 1e9) <= 2,
        "registry_search_p50_le_100ms": result["registry_search"]["p50_ms"] <= 100,
    }
    result["targets_met"] = targets
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section, figures in result.items():
            print(f"{section}: {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
