"""Two replicas of one participant on PostgreSQL, run as a user runs them (issue 18,
finding 2): `tds serve` twice on one database, both adding to the log and signing
checkpoints at once; the auditor fetches the log from each with `tds audit fetch` and
`tds audit verify` finds no checkpoint smaller than the one before it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.e2e.test_cli import Served, tds
from tests.support.ports import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_two_served_replicas_sign_only_growing_checkpoints(
    tmp_path: Path, postgres_url: str
) -> None:
    root = tmp_path
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "a:enterprise", "--participant", "aud:auditor",
        cwd=root,
    )  # fmt: skip
    reg, first, second = free_port(), free_port(), free_port()
    registry = f"127.0.0.1:{reg}"
    tds("init", "--pki", "pki", "--participant", "operator", "--listen", registry,
        "--out", "operator.toml", cwd=root)  # fmt: skip
    for name, port in (("a1", first), ("a2", second)):
        tds(
            "init", "--pki", "pki", "--participant", "a", "--listen", f"127.0.0.1:{port}",
            "--registry", registry, "--database-url", postgres_url,
            "--data-dir", f"data-{name}", "--source-root", str(root), "--out", f"{name}.toml",
            cwd=root,
        )  # fmt: skip
        config = root / f"{name}.toml"
        text = config.read_text()
        assert "checkpoint_interval_seconds = 60.0" in text
        config.write_text(text.replace(
            "checkpoint_interval_seconds = 60.0", "checkpoint_interval_seconds = 1.0"
        ))  # fmt: skip
    tds("init", "--pki", "pki", "--participant", "aud", "--registry", registry,
        "--out", "aud.toml", cwd=root)  # fmt: skip
    (root / "f.bin").write_bytes(b"replicated\n")
    served = [Served(root / "operator.toml", root)]
    try:
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "a",
            "--address", f"127.0.0.1:{first}", "--pki", "pki", cwd=root)  # fmt: skip
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "aud",
            "--pki", "pki", cwd=root)  # fmt: skip
        served += [Served(root / "a1.toml", root), Served(root / "a2.toml", root)]
        failures: list[str] = []

        def publish(replica: str, w: int) -> None:
            # Each admin action is a log entry, appended by the replica it was sent to.
            for n in range(6):
                pid = f"p{w}x{n}"
                (root / f"{pid}.toml").write_text(
                    f'id = "{pid}"\ntitle = "Replicated"\ngrade = "general"\n'
                    f'[source]\nkind = "file"\npath = "{root / "f.bin"}"\n'
                    '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
                    "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
                )
                got = tds("product", "add", f"{pid}.toml", "--config", f"{replica}.toml",
                          cwd=root, check=False)  # fmt: skip
                if got.returncode != 0:
                    failures.append(got.stderr)

        workers = [
            threading.Thread(target=publish, args=(("a1", "a2")[w % 2], w)) for w in range(4)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
        assert failures == []
        for name, port in (("a2", second), ("a1", first)):
            tds("audit", "fetch", "--config", "aud.toml", "--connector", f"a@127.0.0.1:{port}",
                "--out", f"export-{name}", cwd=root)  # fmt: skip
            report = json.loads(tds("audit", "verify", f"export-{name}", "--json", cwd=root).stdout)
            assert report["ok"], report
            assert report["checkpoints"] >= 2, report
    finally:
        for s in reversed(served):
            s.stop()
