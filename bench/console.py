"""Benchmark the browser console's pages at scale, through a real console and connector.

    python bench/console.py [--entries 1000000] [--products 10000] [--negotiations 100000]
                            [--rounds 40] [--json]

In one local space (registry, provider ``gov``, auditor ``aud``, in-process): ``gov``'s log
is grown to ``--entries`` entries (``record_many`` in batches of 10,000), ``--products``
products are published (``AddProduct`` batches of 1,000) and ``--negotiations``
negotiations are written straight into ``gov``'s database (one in five waiting for
approval, one in two with an agreement: the setup of a long-running provider, not the
protocol, which other benchmarks time). Then, over ``--rounds`` requests each, with a
signed-in session, the p50 and p95 of:

- ``/products``, its first page and the page its "next" link leads to (the admin API pages
  ``ListOwnProducts``, 100 rows a page);
- ``/negotiations``, ``/requests`` (waiting for approval) and ``/agreements``, first pages,
  and ``/negotiations`` deep in the list (the 50th page, reached by following "next");
- ``/negotiations/PID`` of a random negotiation: its transitions read from the log's
  (kind, time) index in the negotiation's time window (the written negotiations have no
  transition entries, so this times the lookup among the log's 1,000,000 entries);
- ``/disclosure`` (3 rounds): the report's receipts of the year, found by the log's
  (kind, time) index (this log holds none, so this times the lookup);
- ``/audit`` newest page and a random page of ``gov``'s log as the auditor (50 entries, paged
  by ``GetEntries`` on the connector);
- ``/api/evidence`` for a random index (checkpoint, entry, inclusion proof).

Target: every page under 200 ms at the 95th percentile.
"""

from __future__ import annotations

import argparse
import html
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
from connector.store.database import Database


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


def write_negotiations(db: Database, count: int) -> None:
    """``count`` provider-side negotiations, a second apart, in batches of 10,000."""
    columns = (
        "pid, role, counterparty, counterparty_pid, product, offer, purpose, state, reasons, "
        "agreement_id, agreement, revocation, terms, requester, created_ms, updated_ms"
    )
    marks = ", ".join("?" * 16)
    base_ms = int(time.time() * 1000) - count * 1000
    for first in range(0, count, 10_000):
        rows = []
        for i in range(first, min(count, first + 10_000)):
            waiting, agreed = i % 5 == 0, i % 2 == 1
            state = "REQUESTED" if waiting else "FINALIZED" if agreed else "TERMINATED"
            rows.append(
                (f"{i:032x}", "provider", "aud", f"c{i:031x}", f"product-{i % 1000:06d}", "o1",
                 "research", state, "[]", f"ag-{i:029x}" if agreed and not waiting else None,
                 None, None, "{}", None, base_ms + i * 1000, base_ms + i * 1000)
            )  # fmt: skip
        with db.transaction() as tx:
            tx.many(f"INSERT INTO negotiation ({columns}) VALUES ({marks})", rows)


def next_link(opener: Any, url: str) -> str:
    """The query of the "next" link on the page at ``url``."""
    with opener.open(url, timeout=60) as resp:
        page = resp.read().decode()
    found = re.search(r'rel="next" href="([^"]+)"', page)
    if found is None:
        raise SystemExit(f"no next page at {url}")
    return html.unescape(found.group(1))


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
    parser.add_argument("--negotiations", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "entries": args.entries,
        "products": args.products,
        "negotiations": args.negotiations,
    }
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

            db = sp.nodes["gov"].db
            assert db is not None
            start = time.perf_counter()
            write_negotiations(db, args.negotiations)
            results["write_negotiations_s"] = round(time.perf_counter() - start, 1)

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
                second = next_link(p, f"{base_p}/products")
                results["products_next_page"] = timed(p, f"{base_p}/products{second}", rounds)
                for name in ("negotiations", "requests", "agreements"):
                    results[f"{name}_page"] = timed(p, f"{base_p}/{name}", rounds)
                deep = ""
                for _ in range(49):
                    deep = next_link(p, f"{base_p}/negotiations{deep}")
                results["negotiations_page_50"] = timed(p, f"{base_p}/negotiations{deep}", rounds)
                results["negotiation_timeline"] = timed(
                    p,
                    "",
                    rounds,
                    lambda: f"{base_p}/negotiations/{random.randrange(args.negotiations):032x}",
                )
                # Not paged: a year's report is read whole (few rounds).
                results["disclosure_page"] = timed(p, f"{base_p}/disclosure", min(rounds, 3))
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
