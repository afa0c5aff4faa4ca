"""A dead registry, as users meet it (issue 18, finding 5): `tds serve` processes, the
registry killed with SIGKILL; `tds transfer` under an agreement made before still
completes, and `tds negotiate --wait --timeout` gives up in time, saying the registry is
unreachable and how old the cached directory is, instead of hanging."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import Served, tds
from tests.e2e.test_transfer_cli import _wait_ready
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("registry-down-cli")
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "gov:government", "--participant", "a:enterprise",
        "--participant", "b:enterprise",
        cwd=root,
    )  # fmt: skip
    ports = {pid: free_port() for pid in ("operator", "gov", "a", "b")}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        if pid == "gov":  # its product's file lies beside the configs
            extra += ["--source-root", str(root)]
        tds(
            "init", "--pki", "pki", "--participant", pid, "--listen", f"127.0.0.1:{port}",
            "--out", f"{pid}.toml", *extra,
            cwd=root,
        )  # fmt: skip
    # b may use its cached directory for 3 s only once the registry is gone.
    config = root / "b.toml"
    text = config.read_text()
    for default, short in (
        ("directory_refresh_seconds = 30.0", "directory_refresh_seconds = 1.0"),
        ("directory_max_age_seconds = 3600.0", "directory_max_age_seconds = 3.0"),
    ):
        assert default in text
        text = text.replace(default, short)
    config.write_text(text)
    (root / "f.bin").write_bytes(os.urandom(512 * 1024))
    (root / "f.toml").write_text(
        'id = "f"\ntitle = "A file"\ngrade = "general"\n'
        '[source]\nkind = "file"\npath = "f.bin"\n'
        '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
        "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
    )
    servers = {"operator": Served(root / "operator.toml", root)}
    try:
        for pid in ("gov", "a", "b"):
            tds(
                "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki",
                cwd=root,
            )  # fmt: skip
            servers[pid] = Served(root / f"{pid}.toml", root)
        for pid in ("gov", "a", "b"):
            _wait_ready(root, f"{pid}.toml", "directory_issued_at")
        tds("product", "add", root / "f.toml", "--config", "gov.toml", cwd=root)
        neg = tds(
            "negotiate", "--config", "a.toml", "--provider", "gov", "--product", "f",
            "--offer", "o1", "--purpose", "research", "--wait", "--json",
            cwd=root,
        )  # fmt: skip
        (root / "agreement").write_text(json.loads(neg.stdout)["agreement_id"])
        registry = servers.pop("operator")
        registry.proc.send_signal(signal.SIGKILL)
        registry.proc.wait(10)
        registry.log.close()
        if registry.proc.stdout is not None:
            registry.proc.stdout.close()
        yield root
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def test_tds_transfer_completes_with_the_registry_killed(world: Path) -> None:
    agreement = (world / "agreement").read_text()
    out = tds(
        "transfer", "--agreement", agreement, "--out", "received.bin",
        "--config", "a.toml", "--json",
        cwd=world, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    expected = hashlib.sha256((world / "f.bin").read_bytes()).hexdigest()
    assert result["state"] == "completed" and result["sha256"] == expected
    assert hashlib.sha256((world / "received.bin").read_bytes()).hexdigest() == expected
    status = json.loads(tds("status", "--config", "a.toml", "--json", cwd=world).stdout)
    assert 0 <= status["directory_age_seconds"] <= status["directory_max_age_seconds"]


def test_tds_negotiate_wait_gives_up_at_its_timeout_saying_why(world: Path) -> None:
    time.sleep(3.5)  # b's cached directory is now past its maximum age of 3 s
    started = time.monotonic()
    out = tds(
        "negotiate", "--config", "b.toml", "--provider", "gov", "--product", "f",
        "--offer", "o1", "--purpose", "research", "--wait", "--timeout", "4",
        cwd=world, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    assert took < 15, f"took {took:.1f} s"
    err = out.stderr
    assert "gave up after 4 s" in err and "is still REQUESTED" in err, err
    assert "cannot reach the registry" in err, err
    assert "cached directory is" in err and "(max 3)" in err, err
