"""Benchmark the browser console's pages at scale, through a real console and connector.

    python bench/console.py [--entries 1000000] [--products 10000] [--rounds 40] [--json]

In one local space (registry, provider ``gov``, auditor ``aud``, in-process): ``gov``'s log
is grown to ``--entries`` entries (``record_many`` in batches of 10,000) and
``--products`` products are published (``AddProduct`` batches of 1,000). Then, over
``--rounds`` requests each, with a signed-in session, the p50 and p95 of:

- ``/products`` (the provider's whole product list: the admin API does not page it);
- ``/audit`` newest page and a random page of ``gov``'s log as the auditor (50 entries, paged
  by ``GetEntries`` on the connector);
- ``/api/evidence`` for a random index (checkpoint, entry, inclusion proof).

Target: every page under 200 ms at the 95th percentile.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import random
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.console.app import Console
from connector.console.backend import AdminBackend
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import admin_channel


def described(i: int) -> str:
    return json.dumps(
        {
            "id": f"product-{i:06d}",
            "title": f"产品 {i} / product {i}",
            "grade": "important" if i % 10 == 0 else "general",
            "tags": ["bench"],
            "source": {"kind": "file", "path": f"p{i}.bin"},
            "offers": [
                {
                    "id": "o1",
                    "purposes": ["research"],
                    "valid_from_ns": 0,
                    "valid_until_ns": 4_000_000_000 * 10**9,
                    "max_transfers": 3,
                }
            ],
        }
    )


def timed(opener: Any, url: str, rounds: int, vary: Any = None) -> dict[str, float]:
    took = []
    for _ in range(rounds):
        target = url if vary is None else vary()
        start = time.perf_counter()
        with opener.open(target, timeout=60) as resp:
            resp.read()
        took.append((time.perf_counter() - start) * 1000)
    took.sort()
    return {
        "p50_ms": round(took[len(took) // 2], 1),
        "p95_ms": round(took[min(len(took) - 1, int(len(took) * 0.95))], 1),
    }


def signed_in(console: Console) -> Any:
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    try:
        opener.open(console.url(), timeout=30).read()
    except urllib.error.HTTPError as exc:
        banner = re.search(r'id="error">([^<]*)<', exc.read().decode())
        shown = banner.group(1) if banner else ""
        raise SystemExit(f"console page failed: {exc.code} {shown}") from None
    return opener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"entries": args.entries, "products": args.products}
    with tempfile.TemporaryDirectory() as tmp:
        participants = [("gov", Role.GOVERNMENT), ("aud", Role.AUDITOR)]
        with LocalSpace.create(Path(tmp), participants) as sp:
            sp.start_registry()
            sp.start_connector("gov")
            sp.enrol("aud", "")
            sp.write_config("aud", "", sp.registry_address)
            log = sp.nodes["gov"].log
            assert log is not None
            start = time.perf_counter()
            while log.size < args.entries:
                n = min(10_000, args.entries - log.size)
                log.record_many([("bench.entry", ["aud"], {"n": log.size + i}) for i in range(n)])
            results["grow_log_s"] = round(time.perf_counter() - start, 1)
            with admin_channel(sp.configs["gov"]) as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)
                for first in range(0, args.products, 1000):
                    batch = [
                        admin_pb2.ProductDescription(description=described(i), format="json")
                        for i in range(first, min(args.products, first + 1000))
                    ]
                    stub.AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=600)

            provider = Console(AdminBackend(sp.configs["gov"]))
            auditor = Console(AdminBackend(sp.configs["aud"]))
            provider.start()
            auditor.start()
            try:
                p, a = signed_in(provider), signed_in(auditor)
                base_p = f"http://127.0.0.1:{provider.port}"
                base_a = f"http://127.0.0.1:{auditor.port}"
                size = log.size
                rounds = args.rounds
                results["products_page"] = timed(p, f"{base_p}/products", rounds)
                results["audit_newest_page"] = timed(a, f"{base_a}/audit?connector=gov", rounds)
                results["audit_random_page"] = timed(
                    a,
                    "",
                    rounds,
                    lambda: f"{base_a}/audit?connector=gov&start={random.randrange(size)}",
                )
                results["evidence_random_entry"] = timed(
                    a,
                    "",
                    rounds,
                    lambda: f"{base_a}/api/evidence?connector=gov&index={random.randrange(size)}",
                )
            finally:
                provider.stop()
                auditor.stop()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
