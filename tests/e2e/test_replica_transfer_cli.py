"""Replicas share the data plane (issue 21, item 4), run as a user runs them: two `tds
serve` replicas of one provider on one PostgreSQL database, behind one address (a TCP
pass-through balancer, as Envoy's ``tcp_proxy`` would be); the consumer pulls part of a
masked table from replica A, A is SIGKILLed, the pull resumes on replica B, which makes the
delivered form again from the source and serves the rest under the same SHA-256; both
logs hold exactly one dual-signed receipt."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.e2e.test_cli import TDS, Served, tds
from tests.e2e.test_transfer_cli import _wait_ready
from tests.support.failover import FailoverProxy
from tests.support.ports import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROWS = 200_000
KILL_AFTER = 6 * 1024 * 1024
"""Bytes replica A has sent through the balancer when it is killed."""
A_RATE = 4 * 1024 * 1024
"""Bytes per second A may send, so the kill lands part way through the transfer."""


def _provider_transfer(postgres_url: str) -> tuple[str, int, str]:
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, size, sha256 FROM transfer WHERE role = 'provider'")
            ).one()
    finally:
        engine.dispose()
    return str(row[0]), int(row[1]), str(row[2])


def test_a_pull_started_on_one_replica_completes_on_another_after_a_kill(
    tmp_path: Path, postgres_url: str
) -> None:
    root = tmp_path
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "a:enterprise", "--participant", "b:enterprise",
        cwd=root,
    )  # fmt: skip
    reg, first, second, consumer = free_port(), free_port(), free_port(), free_port()
    registry = f"127.0.0.1:{reg}"
    tds("init", "--pki", "pki", "--participant", "operator", "--listen", registry,
        "--out", "operator.toml", cwd=root)  # fmt: skip
    for name, port in (("a1", first), ("a2", second)):
        tds(
            "init", "--pki", "pki", "--participant", "a", "--listen", f"127.0.0.1:{port}",
            "--registry", registry, "--database-url", postgres_url,
            "--data-dir", f"data-{name}", "--source-root", "products", "--out", f"{name}.toml",
            cwd=root,
        )  # fmt: skip
    tds("init", "--pki", "pki", "--participant", "b", "--listen", f"127.0.0.1:{consumer}",
        "--registry", registry, "--out", "b.toml", cwd=root)  # fmt: skip

    products = root / "products"
    products.mkdir()
    with (products / "readings.csv").open("w") as f:
        f.write("time,sensor,value,plate\n")
        for i in range(ROWS):
            f.write(
                f"2026-12-05T{i % 24:02d}:00:00,sensor-{i % 977:05d},{i * 0.37:.3f},沪A{i:06d}\n"
            )
    (products / "readings.toml").write_text(
        'id = "readings"\ntitle = "Roadside readings"\ngrade = "general"\n'
        'fields = ["time", "sensor", "value", "plate"]\n'
        '[source]\nkind = "table"\nformat = "csv"\npath = "readings.csv"\n'
        '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
        "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
        'permitted_fields = ["time", "sensor", "value", "plate"]\n'
        '[offers.masks]\nplate = "hash"\nvalue = { method = "generalise", step = 10 }\n'
    )
    # The directory names one address for participant a: the balancer in front of both.
    balancer = FailoverProxy([first, second], rate_bytes={0: A_RATE})
    served: dict[str, Served] = {"operator": Served(root / "operator.toml", root)}
    try:
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "a",
            "--address", f"127.0.0.1:{balancer.port}", "--pki", "pki", cwd=root)  # fmt: skip
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "b",
            "--address", f"127.0.0.1:{consumer}", "--pki", "pki", cwd=root)  # fmt: skip
        for name in ("a1", "a2", "b"):
            served[name] = Served(root / f"{name}.toml", root)
        for name in ("a1", "a2", "b"):
            _wait_ready(root, f"{name}.toml")
        tds("product", "add", products / "readings.toml", "--config", "a1.toml", cwd=root)
        neg = tds(
            "negotiate", "--config", "b.toml", "--provider", "a", "--product", "readings",
            "--offer", "o1", "--purpose", "research", "--wait", "--json",
            cwd=root,
        )  # fmt: skip
        agreement = json.loads(neg.stdout)["agreement_id"]

        pull = subprocess.Popen(
            [*TDS, "transfer", "--agreement", agreement, "--out", "received.csv",
             "--config", "b.toml", "--json"],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while balancer.sent[0] < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        transfer_id, size, sha256 = _provider_transfer(postgres_url)  # fixed on A
        assert balancer.sent[0] >= KILL_AFTER, "replica A never sent a part of the table"
        assert balancer.sent[1] == 0, "replica B was used before A was killed"
        assert not (root / "data-a2" / "transfers").exists()  # B holds no staged copy
        a1 = served.pop("a1")
        a1.proc.send_signal(signal.SIGKILL)
        a1.proc.wait(10)
        a1.log.close()
        if a1.proc.stdout is not None:
            a1.proc.stdout.close()
        assert balancer.sent[0] < size, "the transfer finished before replica A was killed"

        out, err = pull.communicate(timeout=240)
        assert pull.returncode == 0, err
        result = json.loads(out)
        assert (result["transfer"], result["state"]) == (transfer_id, "completed")
        assert result["sha256"] == sha256
        received = (root / "received.csv").read_bytes()
        assert len(received) == size and hashlib.sha256(received).hexdigest() == sha256
        assert "沪A".encode() not in received  # masked as A masked it
        # B served the rest from where the consumer was, not the whole table again.
        assert 0 < balancer.sent[1] < size

        # Exactly one dual-signed receipt in each log (the provider's is the one both
        # replicas write, fetched through the balancer from B), and they reconcile.
        for pid in ("a", "b"):
            tds("audit", "fetch", "--config", "b.toml", "--connector", pid,
                "--out", f"export-{pid}", "--no-cosign", cwd=root)  # fmt: skip
            shown = tds(
                "audit", "show", f"export-{pid}", "--type", "transfer.receipt", "--json",
                cwd=root,
            )  # fmt: skip
            receipts = [e for e in json.loads(shown.stdout) if e["data"]["transfer"] == transfer_id]
            assert len(receipts) == 1, shown.stdout
        rec = tds("audit", "reconcile", "export-a", "export-b", "--json", cwd=root)
        assert json.loads(rec.stdout)["matched"] == 1, rec.stdout
    finally:
        balancer.close()
        for s in reversed(list(served.values())):
            if s.proc.poll() is None:
                s.stop()
