"""Benchmark the DSP binding against gRPC, in the same run.

    python bench/dsp.py [--count 200] [--json] [--what all|negotiation|pull] [--served]

1. A whole negotiation between two tds connectors, request -> FINALIZED (the provider's
   decisions and signed agreement, the consumer's verification and countersignature, each
   side's transitions durable in its store and audit log): started on the consumer with
   ``StartNegotiation`` (waiting for the outcome), over gRPC, then with ``dsp_url`` over the
   DSP binding alone (four HTTPS messages through the outboxes: request, agreement,
   verification, FINALIZED event). Sequential p50, then the rate with 8 concurrent; then
   each binding's CPU time and WAL syncs per negotiation, in blocks of their own.
2. A contract request answered by the provider alone (REQUESTED -> AGREED): DSP
   ``POST /negotiations/request`` from an aiohttp client keeping its connection, against
   ``RequestContract`` on one mutual TLS channel.

3. An ``HttpData`` pull of one large file (``--size``, 1 GiB by default) over the DSP
   binding (``Transfer`` with ``dsp_url``: request, start message, HTTPS GET, completion
   with the dual-signed receipt), against the gRPC transfer of the same file under the
   same agreement, alternated ``--pulls`` times; MiB/s and the ratio of the medians.

Connectors run as threads of this process (LocalSpace), so both paths share one
interpreter; the ratio, not the absolute figure, is the result. ``--served`` also measures
1 between connectors deployed as users run them: the registry, ``gov`` and ``a`` each a
``tds serve`` process with its config (bench/negotiation.py's space of processes), each
connector's CPU time read from /proc; the JSON then gives both layouts' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.negotiation import cpu_seconds, fdatasync_p50_ms, space
from connector._proto.tds.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    negotiation_pb2,
    negotiation_pb2_grpc,
)
from connector.config import DspConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role, participant_dns_name
from connector.node.clients import admin_channel

PRODUCT = {
    "id": "bench",
    "title": "bench",
    "grade": "general",
    "source": {"kind": "file", "path": "bench.bin"},
    "offers": [
        {"id": "o1", "purposes": ["research"], "valid_from_ns": 0, "valid_until_ns": 4 * 10**18}
    ],
}
CONCURRENCY = 8


def request_message(callback: str) -> dict[str, Any]:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": f"urn:uuid:{uuid.uuid4()}",
        "offer": {
            "@id": "urn:tds:offer:bench/o1",
            "@type": "Offer",
            "target": "urn:tds:dataset:bench",
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {
                            "leftOperand": "odrl:purpose",
                            "operator": "eq",
                            "rightOperand": "research",
                        }
                    ],
                }
            ],
        },
        # On a's registered host, where nothing listens: the provider's pushes of these
        # agreements are retried with backoff in the background, as before there were
        # callbacks, so this stays the figure of the request alone.
        "callbackAddress": callback,
    }


def grpc_request() -> negotiation_pb2.ContractRequest:
    return negotiation_pb2.ContractRequest(
        message_id=uuid.uuid4().hex,
        consumer_pid=uuid.uuid4().hex,
        product_id="bench",
        offer_id="o1",
        purpose="research",
    )


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 << 20))
            f.write(block)
            left -= len(block)


def pulls(sp: LocalSpace, provider_dsp: str, rounds: int, size: int) -> dict[str, Any]:
    """Whole transfers of the ``bulk`` product received by ``a``, over gRPC and as an
    ``HttpData`` pull over DSP, alternated; each holding removed after it is timed."""
    with admin_channel(sp.configs["a"]) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        agreement = stub.StartNegotiation(
            admin_pb2.StartNegotiationRequest(
                provider="gov",
                product_id="bulk",
                offer_id="o1",
                purpose="research",
                wait_ms=30_000,
                dsp_url=provider_dsp,
            ),
            timeout=40,
        ).agreement_id
        digests: set[str] = set()

        def one(dsp_url: str) -> float:
            start = time.perf_counter()
            final = list(
                stub.Transfer(
                    admin_pb2.TransferRequest(agreement_id=agreement, dsp_url=dsp_url),
                    timeout=3600,
                )
            )[-1]
            elapsed = time.perf_counter() - start
            assert final.event == "completed", final
            digests.add(final.sha256)
            for held in (sp.configs["a"].data_dir / "holdings").glob(f"{final.transfer_id}*"):
                held.unlink()  # the bench's own copy: keep the disk from filling
            return elapsed

        urls = {"grpc": "", "dsp": provider_dsp}
        times: dict[str, list[float]] = {"grpc": [], "dsp": []}
        for _ in range(rounds):
            for name, url in urls.items():
                times[name].append(one(url))
    assert len(digests) == 1, digests  # the same delivered bytes both ways
    mib = size / (1 << 20)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "size_bytes": size,
        "rounds": rounds,
        "grpc": {
            "median_s": round(med["grpc"], 2),
            "mib_per_s": round(mib / med["grpc"], 1),
            "all_s": [round(t, 2) for t in times["grpc"]],
        },
        "dsp": {
            "median_s": round(med["dsp"], 2),
            "mib_per_s": round(mib / med["dsp"], 1),
            "all_s": [round(t, 2) for t in times["dsp"]],
        },
        "throughput_ratio_dsp_to_grpc": round(med["grpc"] / med["dsp"], 2),
    }


def run(
    count: int, *, what: str = "all", size: int = 1 << 30, rounds: int = 3, served: bool = False
) -> dict[str, Any]:
    """The figures; with ``served``, measurement 1 also between ``tds serve`` processes
    (after the in-process measurements, which are as without it)."""
    result = in_process(count, what=what, size=size, rounds=rounds)
    if served and what != "pull":
        result["served"] = {"negotiation_to_finalized": served_finalized(count)}
        result["p50_ratio_dsp_to_grpc_by_layout"] = {
            "threads_of_one_process": result["negotiation_to_finalized"]["p50_ratio_dsp_to_grpc"],
            "tds_serve_processes": result["served"]["negotiation_to_finalized"][
                "p50_ratio_dsp_to_grpc"
            ],
        }
    return result


def in_process(count: int, *, what: str, size: int, rounds: int) -> dict[str, Any]:
    """The figures with both connectors threads of this process (LocalSpace)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bench.bin").write_bytes(b"x")
        with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
            sp.start_registry()
            gov = sp.start_connector("gov", dsp=DspConfig(listen="127.0.0.1:0"))
            a = sp.start_connector("a", dsp=DspConfig(listen="127.0.0.1:0"))
            with admin_channel(sp.configs["gov"]) as channel:
                admin_pb2_grpc.AdminServiceStub(channel).AddProduct(
                    admin_pb2.AddProductRequest(
                        description=json.dumps(PRODUCT), format="json", base_dir=str(root)
                    ),
                    timeout=10,
                )
            assert gov.dsp is not None
            if what in ("all", "pull"):
                write_random(root / "bulk.bin", size)
                bulk = {**PRODUCT, "id": "bulk", "title": "bulk"}
                bulk["source"] = {"kind": "file", "path": "bulk.bin"}
                with admin_channel(sp.configs["gov"]) as channel:
                    admin_pb2_grpc.AdminServiceStub(channel).AddProduct(
                        admin_pb2.AddProductRequest(
                            description=json.dumps(bulk), format="json", base_dir=str(root)
                        ),
                        timeout=10,
                    )
                pulled = pulls(sp, gov.dsp.base_url, rounds, size)
                if what == "pull":
                    return {"httpdata_pull": pulled}
            final = finalized(sp, count, gov.dsp.base_url)
            pki = sp.pki_dir
            me = sp.manifest.participant("a")
            ca = (pki / "ca.pem").read_bytes()
            cert, key = (pki / me.tls_cert), (pki / me.tls_key)
            assert a.registry is not None and gov.dsp is not None
            token = a.registry.token()
            creds = grpc.composite_channel_credentials(
                grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes()),
                grpc.access_token_call_credentials(token),
            )
            channel = grpc.secure_channel(
                f"127.0.0.1:{gov.port}",
                creds,
                options=[("grpc.ssl_target_name_override", participant_dns_name("city", "gov"))],
            )
            stub = negotiation_pb2_grpc.NegotiationServiceStub(channel)

            def by_grpc() -> float:
                start = time.perf_counter()
                ack = stub.RequestContract(grpc_request(), timeout=30)
                assert ack.state == "AGREED", ack
                return time.perf_counter() - start

            for _ in range(5):
                by_grpc()
            grpc_seq = [by_grpc() for _ in range(count)]
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                start = time.perf_counter()
                list(pool.map(lambda _: by_grpc(), range(count)))
                grpc_rate = count / (time.perf_counter() - start)
            channel.close()

            context = ssl.create_default_context(cadata=ca.decode())
            context.load_cert_chain(str(cert), str(key))
            url = f"{gov.dsp.base_url}/negotiations/request"
            headers = {"Authorization": f"Bearer {token}"}

            async def dsp_figures() -> tuple[list[float], float]:
                connector = aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY)
                async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

                    async def one() -> float:
                        start = time.perf_counter()
                        async with session.post(
                            url,
                            json=request_message("https://127.0.0.1:1/callback"),
                            server_hostname=participant_dns_name("city", "gov"),
                        ) as response:
                            body = await response.json()
                            assert response.status == 201 and body["state"] == "AGREED", body
                        return time.perf_counter() - start

                    for _ in range(5):
                        await one()
                    sequential = [await one() for _ in range(count)]
                    start = time.perf_counter()
                    pending = iter(range(count))

                    async def worker() -> None:
                        for _ in pending:
                            await one()

                    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
                    return sequential, count / (time.perf_counter() - start)

            dsp_seq, dsp_rate = asyncio.run(dsp_figures())
    result = {
        "count": count,
        "concurrency": CONCURRENCY,
        "negotiation_to_finalized": final,
        "request_to_agreed": figures(grpc_seq, grpc_rate, dsp_seq, dsp_rate),
    }
    if what == "all":
        result["httpdata_pull"] = pulled
    return result


def figures(
    grpc_seq: list[float], grpc_rate: float, dsp_seq: list[float], dsp_rate: float
) -> dict[str, Any]:
    return {
        "grpc": {"p50_ms": p50_ms(grpc_seq), "rate_per_s": round(grpc_rate, 1)},
        "dsp": {"p50_ms": p50_ms(dsp_seq), "rate_per_s": round(dsp_rate, 1)},
        "p50_ratio_dsp_to_grpc": round(statistics.median(dsp_seq) / statistics.median(grpc_seq), 2),
        "rate_ratio_dsp_to_grpc": round(dsp_rate / grpc_rate, 2),
    }


def finalized(
    sp: LocalSpace, count: int, provider_dsp: str, pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """Whole negotiations started on ``a``, over gRPC and over DSP (see the docstring);
    ``pids``: the connectors are these processes (``--served``), not threads of this one."""
    with admin_channel(sp.configs["a"]) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)

        def one(dsp_url: str) -> float:
            start = time.perf_counter()
            info = stub.StartNegotiation(
                admin_pb2.StartNegotiationRequest(
                    provider="gov",
                    product_id="bench",
                    offer_id="o1",
                    purpose="research",
                    wait_ms=30_000,
                    dsp_url=dsp_url,
                ),
                timeout=40,
            )
            assert info.state == "FINALIZED", info
            return time.perf_counter() - start

        urls = {"grpc": "", "dsp": provider_dsp}
        sequential: dict[str, list[float]] = {"grpc": [], "dsp": []}
        for _ in range(5):
            one(urls["grpc"]), one(urls["dsp"])
        # Alternated, so a change in the machine's load falls on both alike.
        for _ in range(count):
            for name, url in urls.items():
                sequential[name].append(one(url))
        rates: dict[str, float] = {}
        for name, url in urls.items():
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                start = time.perf_counter()
                list(pool.map(one, [url] * count))
                rates[name] = count / (time.perf_counter() - start)
        spent = {name: costs(sp, lambda url=url: one(url), pids) for name, url in urls.items()}
    result = figures(sequential["grpc"], rates["grpc"], sequential["dsp"], rates["dsp"])
    for name in urls:
        result[name].update(spent[name])
    return result


def costs(
    sp: LocalSpace, one: Any, pids: dict[str, int] | None = None, rounds: int = 30
) -> dict[str, Any]:
    """What one sequential negotiation costs, over ``rounds`` in a block of their own (so
    no other binding's trailing work falls in it): CPU time (steadier than wall time on a
    shared machine) and each connector's WAL syncs (commits that had to be durable, as
    each side waited for them).

    Connectors in this process: its CPU time (both connectors and this client) and the
    syncs counted by their databases. Connectors as processes (``pids``): each one's CPU
    time from /proc and their sum (this client not included); their syncs are counted
    in them, out of reach here."""

    def syncs() -> dict[str, int]:
        # The SQLite group commit's count (connector.store.database._WalSync.syncs).
        found = {}
        for who in ("a", "gov"):
            node = sp.nodes.get(who)
            turn = getattr(node.db, "_write_lock", None) if node is not None else None
            if turn is not None:
                found[who] = turn.sync.syncs
        return found

    def cpu() -> dict[str, float]:
        if pids:
            return {who: cpu_seconds(pid) for who, pid in pids.items()}
        return {"process": time.process_time()}

    one()  # the previous block's trailing messages land first
    time.sleep(0.6)  # and the outbox marks what it delivered (its pass: 0.5 s)
    before, cpu_before = syncs(), cpu()
    for _ in range(rounds):
        one()
    cpu_after = cpu()
    time.sleep(0.6)  # this block's trailing messages and marks are its own
    after = syncs()
    spent = {who: (cpu_after[who] - cpu_before[who]) * 1000 / rounds for who in cpu_after}
    result: dict[str, Any] = {"cpu_ms_per_negotiation": round(sum(spent.values()), 1)}
    if pids:
        result["cpu_ms_per_negotiation_by_connector"] = {
            who: round(ms, 1) for who, ms in spent.items()
        }
    if after:
        result["wal_syncs_per_negotiation"] = {
            who: round((after[who] - before[who]) / rounds, 2) for who in after
        }
    return result


def served_finalized(count: int) -> dict[str, Any]:
    """Measurement 1 between ``tds serve`` processes (the registry, ``gov``, ``a``), each
    connector serving the DSP binding as its config says; the negotiations started on
    a's admin API as in the in-process layout."""
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bench.bin").write_bytes(b"x")
        with space(root, False, pids, dsp=True) as sp:
            with admin_channel(sp.configs["gov"]) as channel:
                admin_pb2_grpc.AdminServiceStub(channel).AddProduct(
                    admin_pb2.AddProductRequest(
                        description=json.dumps(PRODUCT), format="json", base_dir=str(root)
                    ),
                    timeout=10,
                )
            provider_dsp = f"https://{sp.configs['gov'].dsp.listen}"
            disk = fdatasync_p50_ms(root)
            result = finalized(sp, count, provider_dsp, pids)
            disk_after = fdatasync_p50_ms(root)
    result["parties"] = "tds serve processes (registry, gov, a)"
    # Every step is durable before it is acknowledged (five syncs a negotiation on its
    # path): a disk slowed by other work shows here, and in both bindings' p50 alike.
    result["disk_fdatasync_p50_ms"] = {"before": round(disk, 3), "after": round(disk_after, 3)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="requests per measurement")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--what",
        choices=("all", "negotiation", "pull"),
        default="all",
        help="which measurements (default: all)",
    )
    parser.add_argument(
        "--size", type=int, default=1 << 30, help="bytes of the pulled file (default 1 GiB)"
    )
    parser.add_argument(
        "--pulls", type=int, default=3, help="alternated gRPC/DSP transfers of it (default 3)"
    )
    parser.add_argument(
        "--served",
        action="store_true",
        help="also measure request -> FINALIZED between tds serve processes (both layouts)",
    )
    args = parser.parse_args()
    figures = run(args.count, what=args.what, size=args.size, rounds=args.pulls, served=args.served)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    if "httpdata_pull" in figures:
        part = figures["httpdata_pull"]
        print(
            f"HttpData pull of {part['size_bytes']} bytes, {part['rounds']} each, alternated\n"
            f"  gRPC: median {part['grpc']['median_s']} s, {part['grpc']['mib_per_s']} MiB/s\n"
            f"  DSP:  median {part['dsp']['median_s']} s, {part['dsp']['mib_per_s']} MiB/s\n"
            f"  DSP/gRPC throughput x{part['throughput_ratio_dsp_to_grpc']}"
        )
    for key, title in (
        ("negotiation_to_finalized", "negotiation request -> FINALIZED"),
        ("request_to_agreed", "contract request -> AGREED"),
    ):
        if key not in figures:
            continue
        part = figures[key]
        _print_pair(f"{title}, {args.count} each", part)
        for name in ("grpc", "dsp"):
            if "cpu_ms_per_negotiation" in part[name]:
                print(
                    f"  {name}: {part[name]['cpu_ms_per_negotiation']} ms CPU and WAL syncs "
                    f"{part[name]['wal_syncs_per_negotiation']} per negotiation"
                )
    if "served" in figures:
        part = figures["served"]["negotiation_to_finalized"]
        _print_pair(
            f"negotiation request -> FINALIZED between {part['parties']}, {args.count} each",
            part,
        )
        for name in ("grpc", "dsp"):
            print(
                f"  {name}: {part[name]['cpu_ms_per_negotiation']} ms CPU per negotiation "
                f"({part[name]['cpu_ms_per_negotiation_by_connector']})"
            )
        print(f"  disk fdatasync p50 ms: {part['disk_fdatasync_p50_ms']}")


def _print_pair(title: str, part: dict[str, Any]) -> None:
    """One measurement's gRPC and DSP figures and their ratios, for people."""
    print(
        f"{title}\n"
        f"  gRPC: p50 {part['grpc']['p50_ms']} ms, {part['grpc']['rate_per_s']}/s "
        f"with {CONCURRENCY} concurrent\n"
        f"  DSP:  p50 {part['dsp']['p50_ms']} ms, {part['dsp']['rate_per_s']}/s "
        f"with {CONCURRENCY} concurrent\n"
        f"  DSP/gRPC: p50 x{part['p50_ratio_dsp_to_grpc']}, "
        f"rate x{part['rate_ratio_dsp_to_grpc']}"
    )


if __name__ == "__main__":
    main()
