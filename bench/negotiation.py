"""Benchmark contract negotiation end to end on loopback.

    python bench/negotiation.py [--count 400] [--in-process] [--fsync-delay-us N] [--json]

Request -> FINALIZED with mutual TLS, a policy decision, two signatures and audit appends
on both sides (auto-approved offer): sequential latency and throughput with 8 concurrent
consumers' requests, each beside the round trip of a bare authenticated gRPC call
(GetStatus on the consumer's connector) measured in the same run.

The registry and both connectors run as ``tds serve`` processes, as a city deploys them;
``--in-process`` runs them as threads of this process instead (one interpreter lock for
all three, which is how the demo runs but not how a connector is deployed).

The figures depend on the disk: every step of a negotiation is durable before it is
acknowledged. The run reports the fdatasync latency of the disk it ran on, and
``--fsync-delay-us N`` makes the connectors' syncs N µs slower (``_slow_fsync.c``,
preloaded; needs a C compiler), to see how they do on a slower disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.config import DspConfig
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import admin_channel

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


WAIT_MS = 30_000  # the consumer's connector holds the call until the negotiation is final


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fdatasync_p50_ms(directory: Path, rounds: int = 200) -> float:
    """The median time to sync one 4 KiB write, on the disk holding ``directory``."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        took = []
        for _ in range(rounds):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            took.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(took) * 1000


def slow_fsync_env(root: Path, delay_us: int) -> dict[str, str]:
    """The environment preloading ``_slow_fsync.c`` (built here) with ``delay_us``."""
    if delay_us <= 0:
        return {}
    library = root / "slow_fsync.so"
    source = Path(__file__).with_name("_slow_fsync.c")
    cc = os.environ.get("CC", "cc")
    try:
        subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--fsync-delay-us needs a C compiler ({cc}): {exc}") from None
    return {"LD_PRELOAD": str(library), "TDS_BENCH_FSYNC_DELAY_US": str(delay_us)}


SERVE_ENV: dict[str, str] = {}
"""Added to the environment of every ``tds serve`` the benchmark starts."""


@contextlib.contextmanager
def served(sp: LocalSpace, participant: str) -> Iterator[int]:
    """``tds serve`` for a participant whose config ``sp`` wrote; stopped on exit."""
    log = (sp.root / f"{participant}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector", "serve", "--config", f"{participant}.toml"],
        cwd=sp.root,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, **SERVE_ENV},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"{participant} did not start; see {log.name}")
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()


def wait_ready(stub: admin_pb2_grpc.AdminServiceStub, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:  # not ready yet: refuses calls
                raise
        else:
            if status.token_expires_at and status.revocation_list_issued_at:
                return
        time.sleep(0.1)
    raise SystemExit("a connector did not obtain its token and revocation list")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def space(
    root: Path, in_process: bool, pids: dict[str, int], *, dsp: bool = False
) -> Iterator[LocalSpace]:
    """The registry and the connectors ``gov`` (provider) and ``a`` (consumer), running.

    ``pids`` receives the process id of each connector run as a process. ``dsp``: each
    connector also serves the Dataspace Protocol binding, on a free loopback port (its
    ``[dsp]`` section; ``sp.configs[ID].dsp.listen``).
    """
    with LocalSpace.create(root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
        if in_process:
            sp.start_registry()
            for participant in ("gov", "a"):
                sp.start_connector(participant, dsp=DspConfig("127.0.0.1:0") if dsp else None)
            yield sp
            return
        op = sp.manifest.operator_id
        registry = f"127.0.0.1:{free_port()}"
        sp.write_config(op, registry, "")
        with contextlib.ExitStack() as running:
            running.enter_context(served(sp, op))
            for participant in ("gov", "a"):
                address = f"127.0.0.1:{free_port()}"
                binding = DspConfig(f"127.0.0.1:{free_port()}") if dsp else None
                sp.write_config(participant, address, registry, dsp=binding)
                sp.enrol(participant, address)
                pids[participant] = running.enter_context(served(sp, participant))
                with admin_channel(sp.configs[participant]) as channel:
                    wait_ready(admin_pb2_grpc.AdminServiceStub(channel))
            yield sp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count",
        type=int,
        default=400,
        help="negotiations in the concurrent phase (a quarter of it sequentially)",
    )
    parser.add_argument("--in-process", action="store_true", help="run the parties as threads")
    parser.add_argument(
        "--fsync-delay-us",
        type=int,
        default=0,
        metavar="N",
        help="make the connectors' disk syncs N microseconds slower (processes only)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.fsync_delay_us and args.in_process:
        parser.error("--fsync-delay-us applies to connectors run as processes")
    root = Path(tempfile.mkdtemp(prefix="tds-bench-negotiation-"))
    disk_ms = fdatasync_p50_ms(root)
    SERVE_ENV.update(slow_fsync_env(root, args.fsync_delay_us))
    pids: dict[str, int] = {}
    with space(root, args.in_process, pids) as sp:
        gov_admin = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["gov"]))
        gov_admin.AddProduct(
            admin_pb2.AddProductRequest(description=PRODUCT, format="json"), timeout=10
        )
        consumer = admin_pb2_grpc.AdminServiceStub(admin_channel(sp.configs["a"]))
        for _ in range(20):
            consumer.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
        rtt = []
        for _ in range(200):
            t = time.perf_counter()
            consumer.GetStatus(admin_pb2.GetStatusRequest(), timeout=5)
            rtt.append(time.perf_counter() - t)

        def negotiate() -> float:
            # As `tds negotiate --wait` asks: one call, answered with the outcome.
            t = time.perf_counter()
            info = consumer.StartNegotiation(
                admin_pb2.StartNegotiationRequest(
                    provider="gov",
                    product_id="bench",
                    offer_id="o1",
                    purpose="research",
                    wait_ms=WAIT_MS,
                ),
                timeout=WAIT_MS / 1000 + 10,
            )
            if info.state != "FINALIZED":
                raise SystemExit(f"negotiation ended {info.state}: {list(info.reasons)}")
            return time.perf_counter() - t

        for _ in range(5):
            negotiate()
        cpu_before = {p: cpu_seconds(pid) for p, pid in pids.items()}
        sequential = [negotiate() for _ in range(args.count // 4)]
        # CPU each connector spent per negotiation: steadier than latency on a noisy host.
        cpu_ms = {
            p: round((cpu_seconds(pid) - cpu_before[p]) * 1000 / len(sequential), 2)
            for p, pid in pids.items()
        }
        done: list[float] = []
        lock = threading.Lock()
        # Eight at once for a few rounds before the clock starts: the connectors' first
        # concurrent calls start server threads, each compiling its policy interpreter,
        # and open database connections, which a steady state does not pay.
        ready = threading.Barrier(9)

        def worker(n: int) -> None:
            for _ in range(4):
                negotiate()
            ready.wait()
            for _ in range(n):
                d = negotiate()
                with lock:
                    done.append(d)

        threads = [threading.Thread(target=worker, args=(args.count // 8,)) for _ in range(8)]
        for th in threads:
            th.start()
        ready.wait()
        cpu_before = {p: cpu_seconds(pid) for p, pid in pids.items()}
        start = time.perf_counter()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
        concurrent_cpu_ms = {
            p: round((cpu_seconds(pid) - cpu_before[p]) * 1000 / len(done), 2)
            for p, pid in pids.items()
        }
    p50_ping = statistics.median(rtt) * 1000
    p50 = statistics.median(sequential) * 1000
    result = {
        "parties": "threads of one process" if args.in_process else "processes",
        "disk_fdatasync_p50_ms": round(disk_ms, 3),
        "added_fsync_delay_us": args.fsync_delay_us,
        "bare_call_p50_ms": round(p50_ping, 3),
        "sequential_p50_ms": round(p50, 2),
        "sequential_ratio_to_bare_call": round(p50 / p50_ping, 1),
        "sequential_cpu_ms_per_negotiation": {
            "provider": cpu_ms.get("gov"),
            "consumer": cpu_ms.get("a"),
        },
        "concurrent_8_per_s": round(len(done) / elapsed, 1),
        "concurrent_p50_ms": round(statistics.median(done) * 1000, 2),
        "concurrent_cpu_ms_per_negotiation": {
            "provider": concurrent_cpu_ms.get("gov"),
            "consumer": concurrent_cpu_ms.get("a"),
        },
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
