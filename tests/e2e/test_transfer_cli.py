"""A transfer as users run it: `tds serve` processes, `tds transfer` with the provider
killed (SIGKILL) and restarted mid-transfer; the pull resumes and ends with a verified hash
and a dual-signed receipt in both logs, which an audit export reconciles."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import TDS, Served, tds
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

SIZE = 192 * 1024 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("transfer-cli")
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "gov:government", "--participant", "a:enterprise",
        cwd=root,
    )  # fmt: skip
    ports = {"operator": free_port(), "gov": free_port(), "a": free_port()}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        extra += ["--source-root", "products"]  # where the product below lives
        tds(
            "init", "--pki", "pki", "--participant", pid, "--listen", f"127.0.0.1:{port}",
            "--out", f"{pid}.toml", *extra,
            cwd=root,
        )  # fmt: skip
    # Small chunks make the transfer long enough to kill the provider in the middle of it.
    for pid in ("gov", "a"):
        config = root / f"{pid}.toml"
        text = config.read_text()
        assert "chunk_bytes = 1048576" in text
        config.write_text(text.replace("chunk_bytes = 1048576", "chunk_bytes = 65536"))
    block = os.urandom(1024 * 1024)
    products = root / "products"
    products.mkdir()
    with (products / "big.bin").open("wb") as f:
        for i in range(SIZE // len(block)):
            f.write(i.to_bytes(8, "big") + block[8:])
    (products / "big.toml").write_text(
        'id = "big"\ntitle = "A large file"\ngrade = "general"\n'
        '[source]\nkind = "file"\npath = "big.bin"\n'
        '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
        "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\nmax_transfers = 5\n"
    )
    servers = {"operator": Served(root / "operator.toml", root)}
    try:
        for pid in ("gov", "a"):
            tds(
                "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki",
                cwd=root,
            )  # fmt: skip
            servers[pid] = Served(root / f"{pid}.toml", root)
        yield {"root": root, "servers": servers, "products": products}
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def _wait_ready(root: Path, config: str, field: str = "revocation_list_issued_at") -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = tds("status", "--config", config, "--json", cwd=root, check=False)
        if out.returncode == 0 and json.loads(out.stdout).get(field):
            return
        time.sleep(0.2)
    raise AssertionError(f"{config} never became ready")


def test_transfer_survives_a_killed_provider(world: dict[str, object]) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    servers = world["servers"]
    assert isinstance(servers, dict)
    _wait_ready(root, "a.toml")
    _wait_ready(root, "gov.toml")
    tds("product", "add", world["products"] / "big.toml", "--config", "gov.toml", cwd=root)  # type: ignore[operator]
    neg = tds(
        "negotiate", "--config", "a.toml", "--provider", "gov", "--product", "big",
        "--offer", "o1", "--purpose", "research", "--wait", "--json",
        cwd=root,
    )  # fmt: skip
    agreement = json.loads(neg.stdout)["agreement_id"]
    assert agreement

    transfer = subprocess.Popen(
        [*TDS, "transfer", "--agreement", agreement, "--out", "received.bin",
         "--config", "a.toml", "--json"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    holdings = root / "data" / "a" / "holdings"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = list(holdings.glob("*.part")) if holdings.exists() else []
        if parts and parts[0].stat().st_size > 8 * 1024 * 1024:
            break
        time.sleep(0.01)
    else:
        transfer.kill()
        raise AssertionError(f"the transfer never started: {transfer.communicate()}")
    held_at_kill = parts[0].stat().st_size
    gov = servers["gov"]
    gov.proc.send_signal(signal.SIGKILL)
    gov.proc.wait(10)
    gov.log.close()
    if gov.proc.stdout is not None:
        gov.proc.stdout.close()
    assert held_at_kill < SIZE, "the transfer finished before the provider was killed"
    time.sleep(1.0)  # the consumer sees the provider gone and retries
    servers["gov"] = Served(root / "gov.toml", root)

    out, err = transfer.communicate(timeout=180)
    assert transfer.returncode == 0, err
    result = json.loads(out)
    expected = hashlib.sha256((world["products"] / "big.bin").read_bytes()).hexdigest()  # type: ignore[operator]
    assert result["sha256"] == expected and result["state"] == "completed"
    assert hashlib.sha256((root / "received.bin").read_bytes()).hexdigest() == expected

    # Both logs hold the dual-signed receipt, and an auditor's reconciliation agrees.
    for pid in ("gov", "a"):
        tds(
            "audit", "fetch", "--config", "a.toml", "--connector", pid,
            "--out", f"export-{pid}", "--no-cosign",
            cwd=root,
        )  # fmt: skip
        shown = tds(
            "audit", "show", f"export-{pid}", "--type", "transfer.receipt", "--json", cwd=root
        )
        receipts = [
            e for e in json.loads(shown.stdout) if e["data"]["transfer"] == result["transfer"]
        ]
        assert len(receipts) == 1, shown.stdout
    rec = tds("audit", "reconcile", "export-gov", "export-a", "--json", cwd=root)
    assert json.loads(rec.stdout)["matched"] >= 1, rec.stdout

    listed = json.loads(tds("data", "list", "--config", "a.toml", "--json", cwd=root).stdout)
    assert [h["transfer"] for h in listed] == [result["transfer"]]
    metering = json.loads(
        tds("report", "metering", "--config", "gov.toml", "--json", cwd=root).stdout
    )
    assert metering["consumers"]["a"]["completed"] == 1


def _transfers(root: Path, config: str) -> list[str]:
    listed = tds("data", "list", "--all", "--config", config, "--json", cwd=root).stdout
    return sorted(t["transfer"] for t in json.loads(listed))


def test_transfer_refuses_an_existing_out_before_starting(world: dict[str, object]) -> None:
    """Issue 18, finding 11: `--out` naming an existing file was overwritten silently, and
    a directory failed only after the transfer was made and counted. Both are refused
    before the provider is asked; `--force` overwrites a file (never a directory)."""
    root = world["root"]
    assert isinstance(root, Path)
    products = world["products"]
    assert isinstance(products, Path)
    _wait_ready(root, "a.toml")
    _wait_ready(root, "gov.toml")
    (products / "small.bin").write_bytes(b"small product\n" * 100)
    (products / "small.toml").write_text(
        'id = "small"\ntitle = "A small file"\ngrade = "general"\n'
        '[source]\nkind = "file"\npath = "small.bin"\n'
        '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
        "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
    )
    tds("product", "add", products / "small.toml", "--config", "gov.toml", cwd=root)
    neg = tds(
        "negotiate", "--config", "a.toml", "--provider", "gov", "--product", "small",
        "--offer", "o1", "--purpose", "research", "--wait", "--json",
        cwd=root,
    )  # fmt: skip
    agreement = json.loads(neg.stdout)["agreement_id"]
    existing = root / "existing.bin"
    existing.write_bytes(b"keep me")
    (root / "a-directory").mkdir()
    before = (_transfers(root, "a.toml"), _transfers(root, "gov.toml"))

    def transfer(out: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return tds(
            "transfer", "--agreement", agreement, "--out", out, "--config", "a.toml", *extra,
            cwd=root, check=False,
        )  # fmt: skip

    refused = transfer("existing.bin")
    assert refused.returncode != 0 and "exists" in refused.stderr and "--force" in refused.stderr
    assert existing.read_bytes() == b"keep me"
    for extra in ((), ("--force",)):
        refused = transfer("a-directory", *extra)
        assert refused.returncode != 0 and "is a directory" in refused.stderr
    assert (_transfers(root, "a.toml"), _transfers(root, "gov.toml")) == before

    forced = transfer("existing.bin", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert existing.read_bytes() == (products / "small.bin").read_bytes()
