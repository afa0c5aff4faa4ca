"""A replica killed in the middle of a batch publish leaves no half-published batch (issue
21, bad input): `tds product add` of 300 files to a `tds serve` on PostgreSQL, the server
killed (SIGKILL) 50 ms later each round until a batch gets through; another replica on the
same database then lists all 300 or none, every round."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_cli import TDS, Served, free_port, tds

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BATCH = 300


def write_batch(root: Path, round_: int) -> list[str]:
    names = []
    for n in range(BATCH):
        pid = f"r{round_}-p{n:03d}"
        (root / f"{pid}.toml").write_text(
            f'id = "{pid}"\ntitle = "Killed mid-publish"\ngrade = "general"\n'
            f'[source]\nkind = "file"\npath = "{root / "f.bin"}"\n'
            '[[offers]]\nid = "o1"\npurposes = ["research"]\n'
            "valid_from_ns = 0\nvalid_until_ns = 4000000000000000000\n"
        )
        names.append(f"{pid}.toml")
    return names


def published(root: Path, config: str, round_: int) -> int:
    listed = json.loads(tds("product", "list", "--config", config, "--json", cwd=root).stdout)
    return sum(1 for p in listed if p["id"].startswith(f"r{round_}-"))


def test_a_replica_killed_mid_publish_leaves_all_or_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    root = tmp_path
    tds("pki", "init", "--space", "city", "--out", "pki", "--participant", "a:enterprise",
        cwd=root)  # fmt: skip
    registry = f"127.0.0.1:{free_port()}"
    tds("init", "--pki", "pki", "--participant", "operator", "--listen", registry,
        "--out", "operator.toml", cwd=root)  # fmt: skip
    ports = {}
    for name in ("a1", "a2"):
        ports[name] = free_port()
        tds(
            "init", "--pki", "pki", "--participant", "a", "--listen",
            f"127.0.0.1:{ports[name]}", "--registry", registry, "--database-url", postgres_url,
            "--data-dir", f"data-{name}", "--source-root", str(root), "--out", f"{name}.toml",
            cwd=root,
        )  # fmt: skip
    (root / "f.bin").write_bytes(b"data\n")
    operator = Served(root / "operator.toml", root)
    try:
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "a",
            "--address", f"127.0.0.1:{ports['a1']}", "--pki", "pki", cwd=root)  # fmt: skip
        # Kill later each round, 50 ms apart, until a batch got through: the kills sweep
        # the whole publish, its validation, log entries and transaction included.
        outcomes: list[int] = []
        for round_ in range(40):
            delay = 0.3 + 0.05 * round_
            files = write_batch(root, round_)
            victim = Served(root / "a1.toml", root)
            adding = subprocess.Popen(
                [*TDS, "product", "add", *files, "--config", "a1.toml"],
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(delay)
            victim.proc.kill()  # no goodbye: as a crashed replica
            victim.proc.wait(10)
            victim.log.close()
            if victim.proc.stdout is not None:
                victim.proc.stdout.close()
            _, refused = adding.communicate(timeout=60)
            assert "Traceback" not in refused
            survivor = Served(root / "a2.toml", root)
            try:
                count = published(root, "a2.toml", round_)
            finally:
                survivor.stop()
            assert count in (0, BATCH), (delay, count)
            outcomes.append(count)
            if count == BATCH:
                break
        assert outcomes[0] == 0 and outcomes[-1] == BATCH, outcomes
        replica = Served(root / "a2.toml", root)
        try:
            tds("product", "add", *write_batch(root, 99), "--config", "a2.toml", cwd=root)
            assert published(root, "a2.toml", 99) == BATCH
        finally:
            replica.stop()
    finally:
        operator.stop()
