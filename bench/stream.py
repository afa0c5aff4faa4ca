"""End-to-end stream figures between two connectors (issue 20), against a plain NATS client.

    python bench/stream.py [--messages 20000] [--size 1024] [--rate 1000] [--seconds 10]
                           [--stall 30] [--parts throughput,latency,processes] [--json]

Against the machine's NATS (JetStream) at 127.0.0.1:4222. The first two parts start a
local space (registry, a provider ``gov`` and a consumer ``a``: connectors of this process
talking over mutual TLS), the last ``tds serve`` processes; each follows a stream product
of a new JetStream subject through the consumer's admin API, as ``tds subscribe`` does:
policy re-checks, projection and a mask per message, metering, the hash chain, window
receipts every 1,000 messages signed, countersigned, logged and stored, each window's
segment written and fsynced.

- **throughput**: ``--messages`` JSON records of about ``--size`` bytes are published to
  the subject first; then, in the same run, a plain nats-py pull consumer reads them all
  (decoding and acknowledging each), and the consumer's connector follows the product
  until its holding has them all. Reported: messages/s of each and the ratio
  connectors / plain (target: at least 0.5 with 1 KB messages).
- **latency**: records are published at a steady ``--rate`` per second for ``--seconds``
  while the consumer follows; for each, the time from just before its publish to the
  consumer connector's write of it into the holding's open segment. Reported: p50, p99
  and the largest, in ms (target: p50 at most 20 ms at 1,000 messages/s).
- **processes**: the registry, the provider and the consumer as ``tds serve`` processes
  (as a user runs them, each with its own interpreter). First the throughput part again
  between them (``--messages`` records published first; the plain client reads the same
  backlog in the same run); then the consumer's disk is stuck for ``--stall`` seconds (its
  syncs wait: ``_slow_fsync.c``), so it stops reading at its next window while its
  process and connections live on, and as many records again are published as fast as
  the broker takes them; then the disk is back and it reads on until its holding has
  them all. (Stopping the whole process, SIGSTOP, is not this: gRPC then sees a peer
  that answers no ping and closes the connection after 20 s, which is a disconnect.) Reported: the
  ratio, each process's resident memory before and at the end of the stall, and each
  one's peak (VmHWM), in MB (target: every process under 200 MB).

The write times come from wrapping the consumer's segment writer
(``connector.transfer.subscriber._Segment.add``) in this process: the instant a record
enters the holding, with nothing else changed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats

from bench.negotiation import slow_fsync_env
from bench.stream_source import NATS_URL, _nats_plain, _nats_setup, _payloads, _rss_mb
from bench.transfer import _peak_mb, _port, _serve, _tds
from connector._proto.tds.v1 import admin_pb2, stream_pb2, stream_pb2_grpc
from connector.config import StreamConfig, load_config
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node.clients import admin_channel
from connector.sources.nats_connection import NatsConnection
from connector.transfer import subscriber
from tests.support.exchange import admin, agree, offer

PARTS = ("throughput", "latency", "processes")


class _Writes:
    """When the consumer's connector wrote each sequence into its holding, and a stall."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        self.stall_at = -1
        self.stall_seconds = 0.0
        self.stalled = threading.Event()
        self.stalled_at = 0.0

    @contextmanager
    def watching(self) -> Iterator[_Writes]:
        original = subscriber._Segment.add

        def add(segment: Any, sequence: int, record: bytes) -> None:
            if sequence == self.stall_at:
                self.stalled_at = time.perf_counter()
                self.stalled.set()
                time.sleep(self.stall_seconds)
            original(segment, sequence, record)
            self.at[sequence] = time.perf_counter()

        subscriber._Segment.add = add  # type: ignore[method-assign]
        try:
            yield self
        finally:
            subscriber._Segment.add = original  # type: ignore[method-assign]


@contextmanager
def _space(subject: str, ack_timeout: float = 30.0) -> Iterator[tuple[LocalSpace, str]]:
    """A local space whose provider offers ``subject`` masked; (space, agreement)."""
    with tempfile.TemporaryDirectory() as tmp:
        sources: dict[str, Any] = {"feed": NatsConnection("feed", NATS_URL)}
        settings = StreamConfig(
            window_messages=1000, window_seconds=5.0, ack_timeout_seconds=ack_timeout
        )
        with LocalSpace.create(Path(tmp), [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE)]) as sp:
            sp.start_registry()
            sp.start_connector("gov", sources=sources, stream=settings)
            sp.start_connector("a")
            admin(sp, "gov").AddProduct(
                admin_pb2.AddProductRequest(
                    description=json.dumps(
                        {
                            "id": "feed",
                            "title": "Bench feed",
                            "grade": "general",
                            "fields": ["station", "seq", "mm", "pad"],
                            "source": {"kind": "stream", "connection": "feed", "subject": subject},
                            "offers": [offer(masks={"station": "hash"})],
                        }
                    ),
                    format="json",
                ),
                timeout=10,
            )
            yield sp, agree(sp, "gov", "a", "feed")


class _Follower:
    """The consumer's admin following the agreement (``tds subscribe``), in a thread."""

    def __init__(self, channel: Any, agreement: str) -> None:
        self._channel = channel
        self._call = stream_pb2_grpc.StreamServiceStub(self._channel).Follow(
            stream_pb2.FollowRequest(agreement_id=agreement)
        )
        self.kept = 0
        self.started = threading.Event()
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._call:
                self.started.set()
                self.kept = max(self.kept, event.kept_sequence)
        except Exception as exc:  # cancelled at the end, or a failure to report
            self.error = exc

    def wait_kept(self, sequence: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.kept < sequence:
            if time.monotonic() > deadline:
                raise SystemExit(f"the consumer holds {self.kept} of {sequence} ({self.error})")
            time.sleep(0.01)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


async def _new_stream() -> tuple[Any, str, str]:
    nc = await nats.connect(NATS_URL, connect_timeout=3)
    name = f"BENCH_{uuid.uuid4().hex[:10]}"
    subject = f"bench.{name.lower()}"
    await nc.jetstream().add_stream(name=name, subjects=[subject])
    return nc, name, subject


async def _drop_stream(nc: Any, stream: str) -> None:
    await nc.jetstream().delete_stream(stream)
    await nc.close()


def throughput(n: int, size: int) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    nc, stream, subject = loop.run_until_complete(_nats_setup(_payloads(n, size)))
    try:
        plain = loop.run_until_complete(_nats_plain(subject, stream, n))
        with _space(subject) as (sp, agreement):
            started = time.perf_counter()
            follower = _Follower(admin_channel(sp.configs["a"]), agreement)
            follower.wait_kept(n, timeout=600)
            connectors = time.perf_counter() - started
            follower.close()
    finally:
        loop.run_until_complete(_drop_stream(nc, stream))
        loop.close()
    return {
        "messages": n,
        "size": size,
        "plain_msgs_per_s": round(n / plain),
        "connectors_msgs_per_s": round(n / connectors),
        "ratio": round(plain / connectors, 3),
    }


async def _steady(nc: Any, subject: str, payloads: list[bytes], rate: float) -> dict[int, float]:
    """Publish at ``rate`` per second; when each stream sequence was about to be published."""
    js = nc.jetstream()
    sent: dict[int, float] = {}
    begun = time.perf_counter()
    for i, payload in enumerate(payloads):
        delay = begun + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        at = time.perf_counter()
        ack = await js.publish(subject, payload)
        sent[ack.seq] = at
    return sent


def latency(size: int, rate: float, seconds: float) -> dict[str, Any]:
    n = round(rate * seconds)
    payloads = _payloads(n, size)
    loop = asyncio.new_event_loop()
    nc, stream, subject = loop.run_until_complete(_new_stream())
    try:
        with _Writes().watching() as writes, _space(subject) as (sp, agreement):
            follower = _Follower(admin_channel(sp.configs["a"]), agreement)
            if not follower.started.wait(10):
                raise SystemExit(f"the subscription did not start ({follower.error})")
            sent = loop.run_until_complete(_steady(nc, subject, payloads, rate))
            # The last window closes by time (window_seconds) once the feed stops.
            follower.wait_kept(max(sent), timeout=60)
            follower.close()
    finally:
        loop.run_until_complete(_drop_stream(nc, stream))
        loop.close()
    ms = sorted((writes.at[seq] - at) * 1000 for seq, at in sent.items())
    return {
        "messages": n,
        "rate_per_s": rate,
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max_ms": round(ms[-1], 2),
    }


async def _burst(nc: Any, subject: str, payloads: list[bytes]) -> None:
    js = nc.jetstream()
    pending = [await js.publish_async(subject, p) for p in payloads]  # type: ignore[attr-defined]
    await asyncio.gather(*pending)


class _Processes:
    """Registry, provider and consumer as ``tds serve`` processes (as a user runs them),
    the provider reading ``subject`` from this machine's NATS."""

    def __init__(self, root: Path, subject: str, ack_timeout: float) -> None:
        self.root = root
        _tds(root, "pki", "init", "--space", "city", "--out", "pki",
             "--participant", "gov:government", "--participant", "a:enterprise")  # fmt: skip
        ports = {"operator": _port(), "gov": _port(), "a": _port()}
        for pid, port in ports.items():
            extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
            _tds(root, "init", "--pki", "pki", "--participant", pid,
                 "--listen", f"127.0.0.1:{port}", "--out", f"{pid}.toml", *extra)  # fmt: skip
        config = root / "gov.toml"
        text = config.read_text().replace(
            "ack_timeout_seconds = 30.0", f"ack_timeout_seconds = {float(ack_timeout)}"
        )
        config.write_text(text + f'\n[sources.feed]\nurl = "{NATS_URL}"\n')
        self.procs: dict[str, subprocess.Popen[str]] = {}
        try:
            self._start(root, ports, subject)
        except BaseException:
            self.stop()
            raise

    def _start(self, root: Path, ports: dict[str, int], subject: str) -> None:
        self.procs["operator"] = _serve(root, "operator")
        # The consumer's syncs wait while this file exists (bench/_slow_fsync.c, with
        # 1 µs of delay otherwise): its disk is stuck, so it stops reading the stream at
        # its next window, while the process and its connections live on.
        self.pause = root / "consumer-disk-stuck"
        stuck = {**slow_fsync_env(root, 1), "TDS_BENCH_FSYNC_PAUSE_FILE": str(self.pause)}
        for pid in ("gov", "a"):
            _tds(root, "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                 "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki")  # fmt: skip
            self.procs[pid] = _serve(root, pid, stuck if pid == "a" else None)
        for pid in ("gov", "a"):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = json.loads(_tds(root, "status", "--config", f"{pid}.toml", "--json"))
                if status.get("revocation_list_issued_at"):
                    break
                time.sleep(0.2)
        product = root / "feed.toml"
        product.write_text(
            'id = "feed"\ntitle = "Bench feed"\ngrade = "general"\n'
            'fields = ["station", "seq", "mm", "pad"]\n'
            f'source = {{ kind = "stream", connection = "feed", subject = "{subject}" }}\n'
            '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
            "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
            'masks = { station = "hash" }\n'
        )
        _tds(root, "product", "add", str(product), "--config", "gov.toml")
        neg = _tds(root, "negotiate", "--config", "a.toml", "--provider", "gov",
                   "--product", "feed", "--offer", "o1", "--purpose", "research",
                   "--wait", "--json")  # fmt: skip
        self.agreement = json.loads(neg)["agreement_id"]

    def follower(self) -> _Follower:
        return _Follower(admin_channel(load_config(self.root / "a.toml")), self.agreement)

    def peaks(self) -> dict[str, float]:
        return {name: round(_peak_mb(p.pid), 1) for name, p in self.procs.items()}

    def rss(self) -> dict[str, float]:
        return {name: round(_rss_of(p.pid), 1) for name, p in self.procs.items()}

    def stop(self) -> None:
        self.pause.unlink(missing_ok=True)
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            p.wait(30)


def _rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def processes(n: int, size: int, stall: float) -> dict[str, Any]:
    """Throughput between ``tds serve`` processes, then their memory while the consumer's
    process is stopped (SIGSTOP) for ``stall`` seconds under ``n`` more messages."""
    payloads = _payloads(n, size)
    loop = asyncio.new_event_loop()
    nc, stream, subject = loop.run_until_complete(_nats_setup(payloads))
    try:
        plain = loop.run_until_complete(_nats_plain(subject, stream, n))
        with tempfile.TemporaryDirectory() as tmp:
            # The provider waits this long for a window's receipt before it suspends the
            # subscription: the stall must not reach it (what is measured is memory).
            space = _Processes(Path(tmp), subject, ack_timeout=stall + 30)
            try:
                started = time.perf_counter()
                follower = space.follower()
                follower.wait_kept(n, timeout=600)
                connectors = time.perf_counter() - started
                before = space.rss()
                space.pause.touch()
                stopped = time.perf_counter()
                loop.run_until_complete(_burst(nc, subject, payloads))
                time.sleep(max(0.0, stopped + stall - time.perf_counter()))
                during = space.rss()
                kept_during = follower.kept
                space.pause.unlink()
                follower.wait_kept(2 * n, timeout=600)
                caught_up = time.perf_counter() - stopped
                follower.close()
                peaks = space.peaks()
            finally:
                space.stop()
    finally:
        loop.run_until_complete(_drop_stream(nc, stream))
        loop.close()
    return {
        "messages": n,
        "plain_msgs_per_s": round(n / plain),
        "connectors_msgs_per_s": round(n / connectors),
        "ratio": round(plain / connectors, 3),
        "stall_s": stall,
        "rss_before_stall_mb": before,
        "rss_end_of_stall_mb": during,
        "held_at_end_of_stall": kept_during,
        "all_held_after_s": round(caught_up, 1),
        "peak_rss_mb": peaks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stall", type=float, default=30.0)
    parser.add_argument("--parts", default=",".join(PARTS), help="a comma-separated subset")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    result: dict[str, Any] = {}
    if "throughput" in parts:
        result["throughput"] = throughput(args.messages, args.size)
    if "latency" in parts:
        result["latency"] = latency(args.size, args.rate, args.seconds)
    if "processes" in parts:
        result["processes"] = processes(args.messages, args.size, args.stall)
    result["bench_peak_rss_mb"] = round(_rss_mb("VmHWM"), 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "throughput" in result:
        t = result["throughput"]
        print(
            f"throughput, {t['messages']} messages of {t['size']} B: plain client "
            f"{t['plain_msgs_per_s']}/s, connector to connector {t['connectors_msgs_per_s']}/s "
            f"(ratio {t['ratio']})"
        )
    if "latency" in result:
        lat = result["latency"]
        print(
            f"latency at {lat['rate_per_s']:g}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"max {lat['max_ms']} ms"
        )
    if "processes" in result:
        m = result["processes"]
        print(
            f"tds serve processes, {m['messages']} messages: plain client "
            f"{m['plain_msgs_per_s']}/s, connector to connector {m['connectors_msgs_per_s']}/s "
            f"(ratio {m['ratio']}); consumer stopped {m['stall_s']:g} s under as many again: "
            f"RSS {m['rss_before_stall_mb']} -> {m['rss_end_of_stall_mb']} MB, "
            f"{m['held_at_end_of_stall']} held at its end, all held "
            f"{m['all_held_after_s']} s after it stopped; peak RSS {m['peak_rss_mb']} MB"
        )
    print(f"this process's peak RSS (in-process parts) {result['bench_peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
