"""Benchmark the browser console's pages at scale, through real consoles and connectors.

    python bench/console.py [--entries 1000000] [--products 10000] [--negotiations 100000]
                            [--transfers 20000] [--days 60] [--rounds 40] [--dir DIR]
                            [--space DIR] [--in-process] [--json]

One local space: the registry, a provider ``gov`` (government), a consumer ``ent``
(enterprise) and an auditor ``aud``, seeded in this process, then served as a deployment
runs them: the registry, ``gov`` and ``ent`` each a ``tds serve`` process and each of the
four consoles a ``tds console`` process, the pages asked over HTTP from this one (so no
process's background work stalls another's pages through a shared interpreter lock).
``--in-process`` keeps the old layout, every node and console a thread of this process.
``--space DIR`` seeds into ``DIR`` and keeps it; given a ``DIR`` seeded before, it
measures that space again without seeding. Besides p50 and p95, the JSON has each
process's peak RSS, its CPU time while the pages were asked (its work whatever the
machine's load, background work included) and every answer over 150 ms with its time.
Everything is recorded by the product's own
code (``seed_provider``): ``gov``'s log grown to ``--entries`` entries with the real
Merkle tree and a signed checkpoint every 100 negotiations; ``--negotiations``
negotiations through ``NegotiationStore`` with the negotiator's transition entries (one in
five waiting for approval, one in two FINALIZED with an agreement signed by both, the rest
TERMINATED); ``--transfers`` completed transfers with dual-signed receipts on both sides;
all stamped over the ``--days`` before the run, in time order. Then ``--products``
products are published (``AddProduct`` batches of 1,000) and listed in the registry's
catalog index (``RegisterProduct``). The space lives under ``--dir`` (``/dev/shm`` when
there is one: the seeding's ~400,000 commits then wait for no fsync; the pages read from
the page cache either way).

Then, signed in to each console, p50 and p95 over ``--rounds`` requests of every page:
the operator's participants, grants and catalog index (first page, a word's search, the
next page); the provider's products (and the next page), negotiations (first and 50th
page), requests waiting, contracts, a random negotiation's timeline, transfers with the
per-day chart, metering, consents and the disclosure report (its first count of the
year's receipts timed apart); the consumer's holdings and receipts; the auditor's log
pages (newest, a random position, each with the checkpoints and their signers), the
evidence API for a random entry, and the log explorer's searches (a kind, a kind one
entry in 10,000 has, a party one in 100 names, a party none names, a minute, a kind and a
party, the 20th "older" page of the rare kind). Each figure is printed to stderr as it
is measured, with the load average; ``over_200_ms_p95`` lists the pages over the target
(issue 23: every page under 200 ms at the 95th percentile).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import http.cookiejar
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric import ed25519

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.audit.checkpoint import log_origin
from connector.audit.log import TransparencyLog
from connector.audit.receipts import Receipt, countersign_receipt, sign_receipt
from connector.console.app import Console
from connector.console.backend import AdminBackend
from connector.demo.space import LocalSpace
from connector.identity.certs import load_ed25519_private_key
from connector.identity.names import Role
from connector.negotiation.agreement import Agreement, countersign_agreement, sign_agreement
from connector.negotiation.negotiator import _moved
from connector.negotiation.states import State
from connector.negotiation.store import CONSUMER, PROVIDER, Negotiation, NegotiationStore
from connector.node.clients import admin_channel
from connector.store.database import RawTransaction
from connector.transfer.store import COMPLETED, STARTED, Transfer, TransferStore

TDS = [sys.executable, "-m", "connector"]


class Processes:
    """``tds serve`` and ``tds console`` processes started as a person starts them, each
    with its own interpreter (so one's background work cannot stall another's pages
    through a shared GIL), stopped with SIGTERM; each one's peak RSS read before it ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, IO[str]] = {}

    def start(self, name: str, argv: list[str], ready: str) -> str:
        """Start ``tds ARGV`` and wait for a stdout line containing ``ready`` (returned)."""
        log = (self.root / f"{name}.stderr").open("w")
        self.logs[name] = log
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen(
            [*TDS, *argv], stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        self.procs[name] = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(
                    f"{name} ended: {(self.root / f'{name}.stderr').read_text()[-2000:]}"
                )
            if ready in line:
                return line.strip()
        raise SystemExit(f"{name} printed no {ready!r} within 120 s")

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def peak_rss_mb(self) -> dict[str, float]:
        """Each process's peak resident set (``VmHWM``), in MiB."""
        peaks = {}
        for name, proc in self.procs.items():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            found = re.search(r"VmHWM:\s+(\d+) kB", status)
            if found:
                peaks[name] = round(int(found.group(1)) / 1024, 1)
        return peaks

    def cpu_s(self) -> dict[str, float]:
        """Each process's CPU time so far (user and system, seconds): its work whatever
        the machine's load, background work included."""
        tick = os.sysconf("SC_CLK_TCK")
        used = {}
        for name, proc in self.procs.items():
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used[name] = (int(fields[11]) + int(fields[12])) / tick
        return used

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.logs[name].close()
        self.procs.clear()


def serve_all(root: Path, procs: Processes, ids: list[str]) -> None:
    """Serve each of ``ids`` (the registry first) with ``tds serve`` on the port its config
    under ``root`` names (the address it was enrolled with)."""
    for who in ids:
        procs.start(f"serve-{who}", ["serve", "--config", str(root / f"{who}.toml")], "listening")


def console_urls(root: Path, procs: Processes, ids: list[str]) -> dict[str, str]:
    """A ``tds console`` per participant in ``ids``: the URL with the token each prints."""
    return {
        who: procs.start(
            f"console-{who}", ["console", "--config", str(root / f"{who}.toml")], "/?token="
        )
        for who in ids
    }


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


SLOW_MS = 150.0
SLOW: list[dict[str, Any]] = []
"""Each answer slower than ``SLOW_MS``: when (UTC), the path and how long, to find what a
process was doing then (a stall, not a slow query, shows as one such answer among fast
ones of the same page)."""


def timed(opener: Any, url: str, rounds: int, vary: Any = None) -> dict[str, float]:
    took = []
    for _ in range(rounds):
        target = url if vary is None else vary()
        at, start = time.time(), time.perf_counter()
        with opener.open(target, timeout=60) as resp:
            resp.read()
        took.append((time.perf_counter() - start) * 1000)
        if took[-1] > SLOW_MS:
            path = "/" + target.split("/", 3)[-1]
            SLOW.append({"at": round(at, 3), "path": path[:120], "ms": round(took[-1], 1)})
    return percentiles(took)


class SeedClock:
    """The clock of the log the bench seeds with: the time it is set to, so the entries
    (and the negotiations and transfers recorded with them) are stamped as if recorded
    over the weeks before the run, in order."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def seed_provider(
    sp: LocalSpace, args: argparse.Namespace, span_s: float
) -> tuple[dict[str, Any], TransparencyLog]:
    """Grow ``gov``'s log to ``--entries`` and record ``--negotiations`` and
    ``--transfers`` through the product's own stores, stamped over the ``span_s`` seconds
    before the run, in time order:

    - each negotiation ``NegotiationStore.create``-d at REQUESTED with its transition
      entry in the same transaction, as the negotiator does; one in five left waiting for
      approval, one in two moved on (``transition``) to AGREED, VERIFIED and FINALIZED
      with an agreement signed by ``gov`` and countersigned by ``ent`` (real Ed25519
      JWS), the rest TERMINATED, each move's entries committed with it;
    - a completed transfer on every so many agreements (``reserve``, then ``update`` to
      completed with the dual-signed receipt and its ``transfer.receipt`` entry, the
      receipt naming ``gov``'s ``transfer.started`` entry and ``ent``'s
      ``transfer.received`` one), and the same transfer on ``ent``'s side
      (``TransferStore.create``, with its receipt entry in ``ent``'s log);
    - between them, the log's other entries (``append_many`` of ``entry``-built entries,
      a batch per 100 negotiations: one kind in 10,000 is ``bench.rare``, each names
      ``aud`` and one of 100 parties ``pN``), and a signed checkpoint after each batch.

    Appended through a second ``TransparencyLog`` on ``gov``'s database (its key and
    origin, the ``SeedClock``): the real Merkle tree, entry bytes and checkpoint notes;
    ``gov``'s own log catches up on its next append. Returns figures and that log."""
    gov, ent = sp.nodes["gov"], sp.nodes["ent"]
    assert gov.db is not None and ent.db is not None and ent.log is not None
    keys = {
        who: load_ed25519_private_key(sp.configs[who].pki.signing_key, "signing key")
        for who in ("gov", "ent")
    }
    public = {who: key.public_key() for who, key in keys.items()}

    def key_of(who: str) -> ed25519.Ed25519PublicKey:
        return public[who]

    ent_log = ent.log

    def moves(*path: State) -> Callable[[Negotiation], Callable[[RawTransaction], list[int]]]:
        """The entries of a negotiation's moves along ``path``, as the negotiator writes."""

        def prepare(n: Negotiation) -> Callable[[RawTransaction], list[int]]:
            return seed.prepare(
                [_moved(a, b, PROVIDER, "ent", n.product, n.pid) for a, b in pairwise(path)]
            )

        return prepare

    clock = SeedClock(time.time() - span_s)
    start_s = clock.t
    seed = TransparencyLog(
        gov.db,
        origin=log_origin(sp.space, "gov"),
        actor="gov",
        signing_key=keys["gov"],
        clock=clock,
    )
    negotiations, transfers = NegotiationStore(gov.db), TransferStore(gov.db)
    received = TransferStore(ent.db)
    count, entries = args.negotiations, args.entries
    waiting = sum(1 for i in range(count) if i % 5 == 0)
    agreed = sum(1 for i in range(count) if i % 5 and i % 2)
    every = max(1, agreed // args.transfers) if args.transfers else 0
    moved = count + 3 * agreed + (count - waiting - agreed) + 2 * min(args.transfers, agreed)
    filler = max(0, entries - moved) / max(1, count)
    step_s = span_s / max(1, count)
    made: dict[str, Any] = {"transfers": 0, "filled": 0, "checkpoints": 0, "pids": []}
    t0 = time.perf_counter()

    def fill(n: int) -> None:
        batch = []
        for _ in range(n):
            k = made["filled"]
            batch.append(
                seed.entry(
                    "bench.rare" if k % 10_000 == 0 else "bench.entry",
                    parties=["aud", f"p{k % 100}"],
                    data={"n": k},
                )
            )
            made["filled"] += 1
        for low in range(0, len(batch), 10_000):
            seed.append_many(batch[low : low + 10_000], timeout=600)

    def transfer(ag: Agreement, at_s: float) -> None:
        tid = f"tr-{uuid.uuid4().hex}"
        digest = hashlib.sha256(tid.encode()).hexdigest()
        clock.t = at_s
        started_ms = int(at_s * 1000)
        [started] = seed.record_many(
            [("transfer.started", ["ent"], {"transfer": tid, "agreement": ag.id})]
        )
        t = Transfer(
            id=tid, role=PROVIDER, agreement_id=ag.id, product=ag.product, counterparty="ent",
            state=STARTED, size=1000, sha256=digest, chunk_size=65536, started_ms=started_ms,
            provider_log_index=started,
        )  # fmt: skip
        transfers.reserve(t, max_transfers=ag.max_transfers, max_bytes=0, now_ms=started_ms)
        [got] = ent_log.record_many(
            [("transfer.received", ["gov"], {"transfer": tid, "agreement": ag.id})]
        )
        ended_ms = started_ms + 100
        receipt = Receipt(
            agreement=ag.id, transfer=tid, product=ag.product, provider="gov", consumer="ent",
            size=1000, sha256=digest, started_ms=started_ms, ended_ms=ended_ms,
            provider_log_index=started, consumer_log_index=got,
        )  # fmt: skip
        signed = countersign_receipt(
            sign_receipt(receipt, keys["ent"]), keys["gov"], lambda who: public[who]
        )
        logged = {"transfer": tid, "agreement": ag.id, "receipt": signed}
        clock.t = ended_ms / 1000
        transfers.update(
            tid, expect=frozenset({STARTED}), state=COMPLETED, receipt=signed, received=1000,
            consumer_log_index=got, ended_ms=ended_ms,
            log=seed.prepare([("transfer.receipt", ["ent"], logged)]),
        )  # fmt: skip
        received.create(
            replace(
                t, role=CONSUMER, counterparty="gov", state=COMPLETED, receipt=signed,
                received=1000, consumer_log_index=got, ended_ms=ended_ms,
                obligations={"delete_after_ns": (ended_ms + 90 * 86_400_000) * 10**6},
            ),
            log=ent_log.prepare([("transfer.receipt", ["gov"], logged)]),
        )  # fmt: skip
        made["transfers"] += 1

    agreements = 0
    try:
        for i in range(count):
            if i % 10_000 == 0:
                print(f"seeded {i} negotiations, {seed.size} entries", file=sys.stderr)
            if i % 100 == 0:
                clock.t = start_s + i * step_s
                fill(round(filler * min(100, count - i)))
                seed.checkpoint()
                made["checkpoints"] += 1
            at_s = start_s + i * step_s + 1
            clock.t, now_ms = at_s, int(at_s * 1000)
            pid, product = uuid.uuid4().hex, f"product-{i % max(1, args.products):06d}"
            if i % 97 == 0:
                made["pids"].append(pid)  # timelines the bench opens
            negotiations.create(
                role=PROVIDER, counterparty="ent", counterparty_pid=uuid.uuid4().hex,
                product=product, offer="o1", purpose="research", state=State.REQUESTED,
                now_ms=now_ms, pid=pid,
                before_commit=seed.prepare(
                    [_moved(None, State.REQUESTED, PROVIDER, "ent", product, pid)]
                ),
            )  # fmt: skip
            if i % 5 == 0:
                continue  # waiting for approval
            clock.t, now_ms = at_s + 2, now_ms + 2000
            if i % 2 == 0:
                negotiations.transition(
                    pid, State.TERMINATED, now_ms=now_ms, reasons=["bench: declined"],
                    prepare=moves(State.REQUESTED, State.TERMINATED),
                )  # fmt: skip
                continue
            ag = Agreement(
                id=f"ag-{uuid.uuid4().hex}", provider="gov", consumer="ent", product=product,
                offer="o1", purpose="research", valid_from_ns=0,
                valid_until_ns=4_000_000_000 * 10**9, max_transfers=3, max_bytes=0,
                policy_revision="bench", provider_pid=pid, consumer_pid=uuid.uuid4().hex,
                issued_ms=now_ms,
            )  # fmt: skip
            signed = countersign_agreement(
                sign_agreement(ag, keys["gov"]), keys["ent"], lambda who: public[who]
            )
            steps = (State.REQUESTED, State.AGREED, State.VERIFIED, State.FINALIZED)
            negotiations.transition(
                pid, *steps[1:], now_ms=now_ms, agreement=signed, agreement_id=ag.id,
                prepare=moves(*steps),
            )  # fmt: skip
            if every and agreements % every == 0 and made["transfers"] < args.transfers:
                transfer(ag, at_s + 5)
            agreements += 1
        clock.t = time.time() - 60
        fill(max(0, entries - seed.size))
        seed.checkpoint()
        made["checkpoints"] += 1
    except BaseException:
        seed.close()
        raise
    made["seed_s"] = round(time.perf_counter() - t0, 1)
    made["entries"] = seed.size
    return made, seed


def older_link(opener: Any, url: str) -> str:
    """The log explorer's "older" link on the page at ``url`` ("" at the end)."""
    with opener.open(url, timeout=60) as resp:
        found = re.search(r'id="older" href="([^"]+)"', resp.read().decode())
    return html.unescape(found.group(1)) if found else ""


class Shown(dict[str, Any]):
    """The pages' figures, each also printed to stderr as it is measured."""

    def __setitem__(self, name: str, value: Any) -> None:
        print(f"{name:44} {value}  load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        super().__setitem__(name, value)


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


def signed_in(url: str) -> Any:
    """An opener signed in to the console at ``url`` (the printed URL with its token)."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    try:
        opener.open(url, timeout=30).read()
    except urllib.error.HTTPError as exc:
        banner = re.search(r'id="error">([^<]*)<', exc.read().decode())
        shown = banner.group(1) if banner else ""
        raise SystemExit(f"console page failed: {exc.code} {shown}") from None
    return opener


def seed_space(sp: LocalSpace, args: argparse.Namespace) -> dict[str, Any]:
    """Start the registry, ``gov`` and ``ent`` in this process, seed them (``seed_provider``,
    then the products through ``gov``'s admin API) and record what the pages need in
    ``ROOT/seeded.json``; the nodes are left running."""
    sp.start_registry()
    sp.start_connector("gov")
    sp.start_connector("ent")
    sp.enrol("aud", "")
    sp.write_config("aud", "", sp.registry_address)
    seeded, seed = seed_provider(sp, args, args.days * 86_400)
    seed.close()
    log = sp.nodes["gov"].log
    assert log is not None
    start = time.perf_counter()
    with admin_channel(sp.configs["gov"]) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        for first in range(0, args.products, 1000):
            batch = [
                admin_pb2.ProductDescription(description=described(i), format="json")
                for i in range(first, min(args.products, first + 1000))
            ]
            stub.AddProduct(admin_pb2.AddProductRequest(batch=batch), timeout=600)

        def register(i: int) -> None:
            stub.RegisterProduct(
                admin_pb2.RegisterOwnProductRequest(product_id=f"product-{i:06d}", public=True),
                timeout=120,
            )

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(register, range(args.products)))
    seeded["products_s"] = round(time.perf_counter() - start, 1)
    size = log.size
    seeded["log_size"] = size
    seeded["minute"] = minute_window(log, size)
    seeded["operator"] = sp.manifest.operator_id
    seeded["scale"] = {
        k: getattr(args, k) for k in ("entries", "products", "negotiations", "transfers")
    }
    (sp.root / "seeded.json").write_text(json.dumps(seeded))
    print(f"seeded: {seeded}, products {seeded['products_s']} s", file=sys.stderr)
    return seeded


def measure(urls: dict[str, str], seeded: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Every page's p50 and p95 over ``rounds`` requests, signed in to each console."""
    p, c, a, o = (signed_in(urls[who]) for who in ("gov", "ent", "aud", seeded["operator"]))
    base_p, base_c, base_a, base_o = (
        urls[who].split("/?token=")[0] for who in ("gov", "ent", "aud", seeded["operator"])
    )
    size, pids = seeded["log_size"], seeded["pids"]
    pages: dict[str, Any] = Shown()
    for name in ("participants", "grants", "catalog"):
        pages[f"operator_{name}"] = timed(o, f"{base_o}/{name}", rounds)
    pages["operator_catalog_search_word"] = timed(o, f"{base_o}/catalog?q=product+12", rounds)
    pages["operator_catalog_next_page"] = timed(
        o, f"{base_o}/catalog{next_link(o, f'{base_o}/catalog')}", rounds
    )
    pages["provider_products"] = timed(p, f"{base_p}/products", rounds)
    second = next_link(p, f"{base_p}/products")
    pages["provider_products_next_page"] = timed(p, f"{base_p}/products{second}", rounds)
    for name in ("negotiations", "requests", "agreements"):
        pages[f"provider_{name}"] = timed(p, f"{base_p}/{name}", rounds)
    deep = ""
    for _ in range(49):
        deep = next_link(p, f"{base_p}/negotiations{deep}")
    pages["provider_negotiations_page_50"] = timed(p, f"{base_p}/negotiations{deep}", rounds)
    pages["provider_negotiation_timeline"] = timed(
        p, "", rounds, lambda: f"{base_p}/negotiations/{random.choice(pids)}"
    )
    pages["provider_transfers_with_per_day_chart"] = timed(p, f"{base_p}/transfers", rounds)
    # The disclosure report's first view after the connector started, timed apart.
    pages["provider_disclosure_first"] = timed(p, f"{base_p}/disclosure", 1)
    for name in ("metering", "consents", "disclosure"):
        pages[f"provider_{name}"] = timed(p, f"{base_p}/{name}", rounds)
    for name in ("holdings", "receipts"):
        pages[f"consumer_{name}"] = timed(c, f"{base_c}/{name}", rounds)
    pages["consumer_receipts_next_page"] = timed(
        c, f"{base_c}/receipts{next_link(c, f'{base_c}/receipts')}", rounds
    )
    # The auditor's log pages each show the checkpoints and who signed them.
    pages["auditor_log_newest_page"] = timed(a, f"{base_a}/audit?connector=gov", rounds)
    pages["auditor_log_random_page"] = timed(
        a, "", rounds, lambda: f"{base_a}/audit?connector=gov&start={random.randrange(size)}"
    )
    pages["auditor_evidence_api_random_entry"] = timed(
        a, "", rounds, lambda: f"{base_a}/api/evidence?connector=gov&index={random.randrange(size)}"
    )
    searches = {
        "auditor_search_kind_transition": "kind=negotiation.transition",
        "auditor_search_rare_kind": "kind=bench.rare",
        "auditor_search_party_1_in_100": "party=p7",
        "auditor_search_party_none": "party=nobody",
        "auditor_search_minute": seeded["minute"],
        "auditor_search_kind_and_party": "kind=transfer.receipt&party=ent",
    }
    for name, query in searches.items():
        pages[name] = timed(a, f"{base_a}/audit?connector=gov&{query}", rounds)
    # As deep as "older" goes, at most the 20th page.
    deep, depth = f"{base_a}/audit?connector=gov&kind=bench.rare", 1
    while depth < 20 and (older := older_link(a, deep)):
        deep, depth = base_a + older, depth + 1
    pages["auditor_search_rare_kind_deepest"] = {"page": depth, **timed(a, deep, rounds)}
    return pages


def in_process(sp: LocalSpace, seeded: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The old layout: the consoles as threads of this process, beside the nodes."""
    who = ("gov", "ent", "aud", seeded["operator"])
    consoles = {w: Console(AdminBackend(sp.configs[w])) for w in who}
    for console in consoles.values():
        console.start()
    try:
        return measure({w: c.url() for w, c in consoles.items()}, seeded, rounds)
    finally:
        for console in consoles.values():
            console.stop()


def as_processes(root: Path, seeded: dict[str, Any], rounds: int) -> dict[str, Any]:
    """As deployed: the registry, ``gov`` and ``ent`` each a ``tds serve`` process and each
    console a ``tds console`` process; the pages asked over HTTP from this one."""
    procs = Processes(root)
    try:
        serve_all(root, procs, [seeded["operator"], "gov", "ent"])
        urls = console_urls(root, procs, ["gov", "ent", "aud", seeded["operator"]])
        print(f"processes: {procs.pids()}", file=sys.stderr, flush=True)
        before = procs.cpu_s()
        pages = measure(urls, seeded, rounds)
        after = procs.cpu_s()
        return {
            "pages": pages,
            "peak_rss_mb": procs.peak_rss_mb(),
            "cpu_s_while_measuring": {
                name: round(after[name] - before.get(name, 0.0), 2) for name in after
            },
            "pids": procs.pids(),
        }
    finally:
        procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--negotiations", type=int, default=100_000)
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument(
        "--space",
        type=Path,
        help="seed into this directory and keep it; if it holds a seeded space already, "
        "measure that one without seeding again (separate processes only)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="the old layout: nodes and consoles as threads of this one process",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "entries": args.entries,
        "products": args.products,
        "negotiations": args.negotiations,
        "transfers": args.transfers,
        "layout": "in-process" if args.in_process else "processes",
        "load_before": os.getloadavg(),
    }
    with contextlib.ExitStack() as stack:
        if args.space is not None:
            root = args.space.resolve()
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(
                stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="tds-bench-console-", dir=args.dir)
                )
            )
        marker = root / "seeded.json"
        if marker.exists():
            if args.in_process:
                raise SystemExit("--in-process seeds a space of its own: give a new --space")
            seeded = json.loads(marker.read_text())
            print(f"measuring the space seeded in {root}: {seeded['scale']}", file=sys.stderr)
            results.update(seeded["scale"])
        else:
            participants = [
                ("gov", Role.GOVERNMENT),
                ("ent", Role.ENTERPRISE),
                ("aud", Role.AUDITOR),
            ]
            sp = stack.enter_context(LocalSpace.create(root, participants))
            seeded = seed_space(sp, args)
            if not args.in_process:
                sp.stop()  # the processes serve the same databases on the same ports
        results["seed"] = {k: v for k, v in seeded.items() if k not in ("pids", "scale")}
        results["load_pages"] = os.getloadavg()
        if args.in_process:
            results["pages"] = in_process(sp, seeded, args.rounds)
        else:
            results.update(as_processes(root, seeded, args.rounds))
        results["load_after"] = os.getloadavg()
    results["slow_answers"] = SLOW
    results["over_200_ms_p95"] = sorted(
        name for name, got in results["pages"].items() if got["p95_ms"] > 200
    )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            if key == "pages":
                for name, got in value.items():
                    print(f"  {name:44} {got}")
            else:
                print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
