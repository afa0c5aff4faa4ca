"""Benchmark the browser console's pages at scale, through a real console and connector.

    python bench/console.py [--entries 1000000] [--products 10000] [--negotiations 100000]
                            [--transfers 100000] [--rounds 40] [--json]

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
- ``/api/evidence`` for a random index (checkpoint, entry, inclusion proof);
- the log explorer's searches (``FindEntries``): by a kind one entry in 10,000 has, by a
  party one in 100 names, by a party none names (the search answers after its time budget
  with where to go on), by a minute's time window, and the 20th "older" page of the rare
  kind's search;
- ``/transfers``: its first page and the transfers-per-day chart over ``--transfers``
  transfers written straight into ``gov``'s database, spread over the last 60 days
  (``TransferActivity`` counts them per day in SQL);
- ``/catalog``, the operator's search of the registry's catalog index over the
  ``--products`` products, registered (``RegisterProduct``) for the bench: all of them
  and a search by a word.

Target: every page under 200 ms at the 95th percentile.

``--search-rows N`` (default 1,000,000; 0 skips it) also times the log explorer's search
itself (``TransparencyLog.find``, what ``FindEntries`` runs) on a log table of N rows
written in bulk (no Merkle tree: the search reads only the entries), so the part of the
explorer that grows with the log is measured at full size even when growing a real log
that far takes too long on a loaded machine; ``--search-only`` runs just that.
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
    return percentiles(took)


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


RECEIPT = json.dumps(
    {"payload": "A" * 1400, "signatures": [{"protected": "B" * 90, "signature": "C" * 86}] * 2}
)
"""A stand-in the size of a dual-signed receipt (what a completed transfer's row holds)."""


def write_transfers(db: Database, count: int) -> None:
    """``count`` provider-side completed transfers spread over the last 60 days."""
    columns = (
        "id, role, agreement_id, product, counterparty, state, push, size, sha256, chunk_size,"
        " receipt, started_ms, ended_ms, format, fields, obligations, masks, decision_id, path,"
        " source_mtime_ns, received, provider_log_index, consumer_log_index, reason, deleted_ms"
    )
    now_ms = int(time.time() * 1000)
    step = 60 * 86_400_000 // max(1, count)
    for first in range(0, count, 10_000):
        rows = [
            (f"tr-{i:029x}", "provider", f"ag-{i % 5000:029x}", f"product-{i % 1000:06d}", "aud",
             "completed", False, 1000, "ab" * 32, 65536, RECEIPT, now_ms - i * step,
             now_ms - i * step + 100, "", "null", "{}", "{}", "", "", 0, 1000, -1, -1, "", 0)
            for i in range(first, min(count, first + 10_000))
        ]  # fmt: skip
        with db.transaction() as tx:
            tx.many(f"INSERT INTO transfer ({columns}) VALUES ({', '.join('?' * 25)})", rows)


def older_link(opener: Any, url: str) -> str:
    """The log explorer's "older" link on the page at ``url`` ("" at the end)."""
    with opener.open(url, timeout=60) as resp:
        found = re.search(r'id="older" href="([^"]+)"', resp.read().decode())
    return html.unescape(found.group(1)) if found else ""


def search_at_scale(rows: int, rounds: int) -> dict[str, Any]:
    """``TransparencyLog.find`` on ``rows`` entries written in bulk, stamped over an hour."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from connector.audit.log import TransparencyLog
    from connector.clock import SystemClock
    from connector.store.database import open_database

    out: dict[str, Any] = {"rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        db = open_database(f"sqlite:///{tmp}/search.db")
        # Opened on the empty table, before the rows go in under it: find reads only the
        # entries (and the size, from the table), never the tree this log would keep.
        log = TransparencyLog(
            db,
            origin="tds/bench/gov",
            actor="gov",
            signing_key=ed25519.Ed25519PrivateKey.generate(),
            clock=SystemClock(),
        )
        start = time.perf_counter()
        first_ms = int(time.time() * 1000) - 3_600_000
        for low in range(0, rows, 50_000):
            batch = [
                (
                    n,
                    json.dumps({"kind": "bench", "n": n}).encode(),
                    "bench.rare" if n % 10_000 == 0 else "bench.entry",
                    f",aud,p{n % 100},",
                    first_ms + n * 3_600_000 // rows,
                )
                for n in range(low, min(rows, low + 50_000))
            ]
            with db.transaction() as tx:
                tx.many(
                    "INSERT INTO log_entry (idx, body, kind, parties, created_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    batch,
                )
        out["write_s"] = round(time.perf_counter() - start, 1)
        try:
            minute = first_ms + 1_200_000
            searches = {
                "find_newest_page": {},
                "find_rare_kind": {"kind": "bench.rare"},
                "find_party_1_in_100": {"party": "p7"},
                "find_party_none": {"party": "nobody"},
                "find_minute": {"since_ms": minute, "until_ms": minute + 59_999},
            }
            for name, search in searches.items():
                took, found = [], 0
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    entries, _, _ = log.find(limit=50, **search)
                    took.append((time.perf_counter() - t0) * 1000)
                    found = len(entries)
                out[name] = {"found": found, **percentiles(took)}
            # Following the rare kind's search to the end of the log, page by page.
            before, pages, t0 = 0, 0, time.perf_counter()
            while True:
                _, before, _ = log.find(kind="bench.rare", limit=50, before=before)
                pages += 1
                if not before:
                    break
            out["find_rare_kind_to_the_end"] = {
                "calls": pages,
                "total_ms": round((time.perf_counter() - t0) * 1000, 1),
            }
        finally:
            log.close()
    return out


def percentiles(took: list[float]) -> dict[str, float]:
    took = sorted(took)
    return {
        "p50_ms": round(took[len(took) // 2], 1),
        "p95_ms": round(took[min(len(took) - 1, int(len(took) * 0.95))], 1),
    }


def next_link(opener: Any, url: str) -> str:
    """The query of the "next" link on the page at ``url``."""
    with opener.open(url, timeout=60) as resp:
        page = resp.read().decode()
    found = re.search(r'rel="next" href="([^"]+)"', page)
    if found is None:
        raise SystemExit(f"no next page at {url}")
    return html.unescape(found.group(1))


def minute_window(log: Any, size: int) -> str:
    """The search of the minute (UTC) the entry a third into the log was stamped in."""
    [(_, body)] = log.entries(size // 3, size // 3 + 1)
    minute = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(json.loads(body)["time_ms"] / 1000))
    return f"since={minute}&until={minute}"


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
    parser.add_argument("--transfers", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--search-only", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.search_only:
        found = search_at_scale(args.search_rows, args.rounds)
        print(json.dumps(found, indent=2) if args.json else found)
        return
    results: dict[str, Any] = {
        "entries": args.entries,
        "products": args.products,
        "negotiations": args.negotiations,
        "transfers": args.transfers,
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
                log.record_many(
                    [
                        (
                            "bench.rare" if (log.size + i) % 10_000 == 0 else "bench.entry",
                            ["aud", f"p{(log.size + i) % 100}"],
                            {"n": log.size + i},
                        )
                        for i in range(n)
                    ]
                )
            results["grow_log_s"] = round(time.perf_counter() - start, 1)
            with admin_channel(sp.configs["gov"]) as channel:
                stub = admin_pb2_grpc.AdminServiceStub(channel)
                for first in range(0, args.products, 1000):
                    batch = [
                        admin_pb2.ProductDescription(description=described(i), format="json")
                        for i in range(first, min(args.products, first + 1000))
                    ]
                    stub.AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=600)
                start = time.perf_counter()
                for i in range(args.products):
                    stub.RegisterProduct(
                        admin_pb2.RegisterOwnProductRequest(
                            product_id=f"product-{i:06d}", public=True
                        ),
                        timeout=60,
                    )
                results["register_products_s"] = round(time.perf_counter() - start, 1)

            db = sp.nodes["gov"].db
            assert db is not None
            start = time.perf_counter()
            write_negotiations(db, args.negotiations)
            results["write_negotiations_s"] = round(time.perf_counter() - start, 1)
            write_transfers(db, args.transfers)

            provider = Console(AdminBackend(sp.configs["gov"]))
            auditor = Console(AdminBackend(sp.configs["aud"]))
            operator = Console(AdminBackend(sp.configs[sp.manifest.operator_id]))
            provider.start()
            auditor.start()
            operator.start()
            try:
                p, a, o = signed_in(provider), signed_in(auditor), signed_in(operator)
                base_p = f"http://127.0.0.1:{provider.port}"
                base_a = f"http://127.0.0.1:{auditor.port}"
                base_o = f"http://127.0.0.1:{operator.port}"
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
                searches = {
                    "audit_search_rare_kind": "kind=bench.rare",
                    "audit_search_party_1_in_100": "party=p7",
                    "audit_search_party_none": "party=nobody",
                    "audit_search_minute": minute_window(log, size),
                }
                for name, query in searches.items():
                    results[name] = timed(a, f"{base_a}/audit?connector=gov&{query}", rounds)
                # As deep as "older" goes, at most the 20th page (the whole log may be
                # searched sooner: a page answers after 50 finds or its time budget).
                deep, depth = f"{base_a}/audit?connector=gov&kind=bench.rare", 1
                while depth < 20 and (older := older_link(a, deep)):
                    deep, depth = base_a + older, depth + 1
                results["audit_search_rare_kind_deepest"] = {
                    "page": depth,
                    **timed(a, deep, rounds),
                }
                results["transfers_page_with_per_day_chart"] = timed(
                    p, f"{base_p}/transfers", rounds
                )
                results["catalog_page"] = timed(o, f"{base_o}/catalog", rounds)
                results["catalog_search_word"] = timed(o, f"{base_o}/catalog?q=product+12", rounds)
            finally:
                provider.stop()
                auditor.stop()
                operator.stop()
    if args.search_rows:
        results["search_at_scale"] = search_at_scale(args.search_rows, args.rounds)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
