"""The CLI as a user runs it: pki init, init, serve, registry enrol, ping, status, stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

pytestmark = pytest.mark.slow

TDS = [sys.executable, "-m", "connector"]


def tds(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*TDS, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"tds {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


class Served:
    """A ``tds serve`` process."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.log = (cwd / f"{config.stem}.log").open("w+")
        self.proc = subprocess.Popen(
            [*TDS, "serve", "--config", str(config)],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.wait(5)
            self.proc.stdout.close()
            self.log.seek(0)
            logged = self.log.read()
            self.log.close()
            raise AssertionError(f"serve did not start: {line}{logged}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        self.log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("cli")
    out = tds(
        "pki",
        "init",
        "--space",
        "city",
        "--out",
        "pki",
        "--participant",
        "a:enterprise",
        "--participant",
        "b:government",
        "--json",
        cwd=root,
    )
    manifest = json.loads(out.stdout)
    ports = {"operator": free_port(), "a": free_port(), "b": free_port()}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        tds(
            "init",
            "--pki",
            "pki",
            "--participant",
            pid,
            "--listen",
            f"127.0.0.1:{port}",
            "--out",
            f"{pid}.toml",
            *extra,
            cwd=root,
        )
    registry = Served(root / "operator.toml", root)
    servers = {"operator": registry}
    try:
        for pid in ("a", "b"):
            tds(
                "registry",
                "enrol",
                "--config",
                "operator.toml",
                "--participant",
                pid,
                "--address",
                f"127.0.0.1:{ports[pid]}",
                "--pki",
                "pki",
                cwd=root,
            )
            servers[pid] = Served(root / f"{pid}.toml", root)
        yield {"root": root, "manifest": manifest, "ports": ports, "servers": servers}
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def test_pki_manifest_lists_every_file(world: dict[str, object]) -> None:
    manifest = world["manifest"]
    assert isinstance(manifest, dict)
    ids = [p["id"] for p in manifest["participants"]]
    assert ids == ["operator", "a", "b"]
    for p in manifest["participants"]:
        for key in ("tls_cert", "tls_key", "signing_key", "admin_cert", "admin_key"):
            assert Path(p[key]).is_file()
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", manifest["ca_cert"], p["tls_cert"]],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def test_connectors_look_each_other_up_and_call_over_mtls(world: dict[str, object]) -> None:
    root = world["root"]
    assert isinstance(root, Path)

    def pings() -> bool:
        return tds("ping", "b", "--config", "a.toml", cwd=root, check=False).returncode == 0

    wait_for(pings)
    a_to_b = json.loads(tds("ping", "b", "--config", "a.toml", "--json", cwd=root).stdout)
    b_to_a = json.loads(tds("ping", "a", "--config", "b.toml", "--json", cwd=root).stdout)
    assert (a_to_b["responder_id"], a_to_b["caller_id"], a_to_b["caller_role"]) == (
        "b",
        "a",
        "enterprise",
    )
    assert (b_to_a["responder_id"], b_to_a["caller_id"], b_to_a["caller_role"]) == (
        "a",
        "b",
        "government",
    )
    listing = json.loads(tds("registry", "list", "--config", "a.toml", "--json", cwd=root).stdout)
    assert [p["id"] for p in listing] == ["a", "b", "operator"]
    status = json.loads(tds("status", "--config", "a.toml", "--json", cwd=root).stdout)
    assert status["participant_id"] == "a" and status["token_expires_at"] > time.time()


def test_member_cannot_enrol(world: dict[str, object]) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    # a's config holds a's admin certificate, which is not the operator's.
    result = tds(
        "registry",
        "enrol",
        "--config",
        "a.toml",
        "--participant",
        "x",
        "--pki",
        "pki",
        cwd=root,
        check=False,
    )
    assert result.returncode == 1
    assert "tds: error:" in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_refused_clearly(world: dict[str, object]) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    result = tds("serve", "--config", "a.toml", cwd=root, check=False)
    assert result.returncode == 1
    assert "port is in use" in result.stderr and "Traceback" not in result.stderr


def test_missing_key_file_is_named(world: dict[str, object], tmp_path: Path) -> None:
    root = world["root"]
    assert isinstance(root, Path)
    text = (root / "a.toml").read_text().replace("tls.key", "missing.key")
    (root / "broken.toml").write_text(text)
    result = tds("serve", "--config", "broken.toml", cwd=root, check=False)
    assert result.returncode == 1
    assert "missing.key" in result.stderr and "Traceback" not in result.stderr


def test_malformed_config_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[participant]\nid = 3\n")
    result = tds("serve", "--config", "bad.toml", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "participant.id must be a string" in result.stderr


def test_sigterm_stops_gracefully(world: dict[str, object]) -> None:
    servers = world["servers"]
    assert isinstance(servers, dict)
    server = servers["b"]
    assert server.stop() == 0
    log_path = Path(server.log.name)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "stopped" for line in lines)
    assert server.proc.poll() == 0


def test_closed_output_pipe_is_quiet_like_sigpipe(tmp_path: Path) -> None:
    """``tds ... | head -1`` must not print an internal error when head goes away."""
    proc = subprocess.Popen(
        [*TDS, "policy", "test"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    with proc.stderr:
        stderr = proc.stderr.read()
    assert proc.wait(60) == 141, stderr
    assert stderr == ""
