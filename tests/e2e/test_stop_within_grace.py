"""``tds serve`` stops within its grace, whatever it was sent (issue 18, finding 10)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import registry_pb2, registry_pb2_grpc
from connector.config import render_config
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from tests.e2e.test_cli import TDS
from tests.support.malformed import call_raw, probe_channel, tds_rpcs
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

GRACE = 2.0
MARGIN = 3.0  # closing and flushing after the grace (serve's MARGIN)


def test_sigterm_after_a_burst_of_malformed_calls_stops_within_the_grace(tmp_path: Path) -> None:
    # Every malformed call logged a traceback (grpc's own, on stderr); with nobody reading
    # stderr the pipe filled, every thread that logged blocked, and SIGTERM did nothing
    # until the reader woke up (over a minute). Here nobody ever reads stderr.
    with LocalSpace.create(tmp_path, [("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]) as sp:
        sp.start_registry()
        port = free_port()
        cfg = sp.write_config("a", f"127.0.0.1:{port}", sp.registry_address)
        cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, grace_seconds=GRACE))
        (tmp_path / "a.toml").write_text(render_config(cfg))
        sp.enrol("a", f"127.0.0.1:{port}")
        sp.enrol("b", "127.0.0.1:1")
        proc = subprocess.Popen(
            [*TDS, "serve", "--config", str(tmp_path / "a.toml")],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # never read
        )
        try:
            assert proc.stdout is not None
            assert b"listening" in proc.stdout.readline()
            codes = _burst(sp, port)
            assert grpc.StatusCode.INTERNAL not in codes, codes
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(GRACE + MARGIN + 2)
            except subprocess.TimeoutExpired:
                pytest.fail("tds serve did not stop within the grace after SIGTERM")
            assert code == 0
            assert time.monotonic() - started < GRACE + MARGIN
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def _burst(sp: LocalSpace, port: int, rounds: int = 40) -> dict[grpc.StatusCode, int]:
    """Random bytes to every method as a member, as the admin and with no token, in parallel."""
    b, a = sp.manifest.participant("b"), sp.manifest.participant("a")
    pki = sp.pki_dir
    op = sp.manifest.operator_id
    with probe_channel(
        pki, sp.space, sp.nodes[op].port, op, pki / b.tls_key, pki / b.tls_cert, None
    ) as ch:
        token = (
            registry_pb2_grpc.RegistryServiceStub(ch)
            .IssueToken(registry_pb2.IssueTokenRequest(), timeout=10)
            .token
        )
    channels = [
        probe_channel(pki, sp.space, port, "a", pki / b.tls_key, pki / b.tls_cert, token),
        probe_channel(pki, sp.space, port, "a", pki / a.admin_key, pki / a.admin_cert, None),
        probe_channel(pki, sp.space, port, "a", pki / b.tls_key, pki / b.tls_cert, None),
    ]
    rpcs = tds_rpcs()
    codes: dict[grpc.StatusCode, int] = {}

    def one(i: int) -> grpc.StatusCode:
        body = os.urandom(1 + i % 64)
        return call_raw(channels[i % 3], rpcs[i % len(rpcs)], [body, body])[0]

    try:
        with ThreadPoolExecutor(8) as pool:
            for code in pool.map(one, range(rounds * len(rpcs))):
                codes[code] = codes.get(code, 0) + 1
    finally:
        for channel in channels:
            channel.close()
    return codes
