"""Benchmark contract negotiation end to end on loopback.

    python bench/negotiation.py [--count 200] [--json]

Request -> FINALIZED with mutual TLS, a policy decision, two signatures and audit appends
on both sides (auto-approved offer): sequential latency and throughput with 8 concurrent
consumers' requests, each beside the round trip of a bare authenticated gRPC call (Ping)
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc, peer_pb2, peer_pb2_grpc
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import admin_channel
from connector.rpc.channel import TlsIdentity, open_channel

PRODUCT = json.dumps(
    {
        "id": "bench",
        "title": "bench",
        "grade": "general",
        "tags": ["bench"],
        "source": {"kind": "file", "path": "bench.bin"},
        "offers": [
            {
                "id": "o1",
                "purposes": ["research"],
                "valid_from_ns": 0,
                "valid_until_ns": 4_000_000_000_000_000_000,
            }
        ],
    }
)


def wait_final(stub: admin_pb2_grpc.AdminServiceStub, pid: str, timeout: float = 30) -> str:
    # The consumer's connector holds the call until the negotiation is final.
    ref = admin_pb2.NegotiationRef(pid=pid, wait_ms=int(timeout * 1000))
    return str(stub.GetNegotiation(ref, timeout=timeout + 10).state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tds-bench-negotiation-"))
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        sp.start_connector("gov")
        sp.start_connector("a")
        gov_admin = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["gov"]))
        gov_admin.AddProduct(
            admin_pb2.AddProductRequest(description=PRODUCT, format="json"), timeout=10
        )
        consumer = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["a"]))
        me = sp.manifest.participant("a")
        tls = TlsIdentity.load(
            sp.pki_dir / "ca.pem", sp.pki_dir / me.tls_cert, sp.pki_dir / me.tls_key
        )
        registry = sp.nodes["a"].registry
        assert registry is not None
        ping = peer_pb2_grpc.PeerServiceStub(
            open_channel(
                f"127.0.0.1:{sp.nodes['gov'].port}",
                tls,
                space=sp.space,
                peer="gov",
                token=registry.token,
            )
        )
        for _ in range(20):
            ping.Ping(peer_pb2.PingRequest(), timeout=5)
        rtt = []
        for _ in range(200):
            t = time.perf_counter()
            ping.Ping(peer_pb2.PingRequest(), timeout=5)
            rtt.append(time.perf_counter() - t)

        def negotiate() -> float:
            t = time.perf_counter()
            info = consumer.StartNegotiation(
                admin_pb2.StartNegotiationRequest(
                    provider="gov", product_id="bench", offer_id="o1", purpose="research"
                ),
                timeout=10,
            )
            state = wait_final(consumer, info.pid)
            if state != "FINALIZED":
                final = consumer.GetNegotiation(admin_pb2.NegotiationRef(pid=info.pid), timeout=10)
                raise SystemExit(f"negotiation ended {state}: {list(final.reasons)}")
            return time.perf_counter() - t

        for _ in range(5):
            negotiate()
        sequential = [negotiate() for _ in range(args.count // 4)]
        done: list[float] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            for _ in range(n):
                d = negotiate()
                with lock:
                    done.append(d)

        threads = [threading.Thread(target=worker, args=(args.count // 8,)) for _ in range(8)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
    p50_ping = statistics.median(rtt) * 1000
    p50 = statistics.median(sequential) * 1000
    result = {
        "bare_call_p50_ms": round(p50_ping, 3),
        "sequential_p50_ms": round(p50, 2),
        "sequential_ratio_to_bare_call": round(p50 / p50_ping, 1),
        "concurrent_8_per_s": round(len(done) / elapsed, 1),
        "concurrent_p50_ms": round(statistics.median(done) * 1000, 2),
        "targets_met": {
            "p50_at_most_15_ms": p50 <= 15,
            "at_least_150_per_s": len(done) / elapsed >= 150,
        },
    }
    print(
        json.dumps(result, indent=2)
        if args.json
        else "\n".join(f"{k}: {v}" for k, v in result.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
