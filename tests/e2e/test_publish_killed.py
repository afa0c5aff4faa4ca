"""A replica killed in the middle of a batch publish leaves no half-published batch (issue
21, bad input): `tds product add` of 300 files to a `tds serve` on PostgreSQL, the server
killed (SIGKILL) once in each phase of the publish; another replica on the same database,
running throughout, then lists all 300 or none, every round.

The phases are those the database shows: the request not yet served, the descriptions
being validated, the batch's log entries durable but its products not yet committed (the
window between the log's write and the catalog's transaction), and the products
committed (before the client heard back). Each kill waits for its phase to show (polling
the database) instead of sweeping fixed delays: four rounds reach every phase where a
sweep 50 ms apart took up to 40."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.e2e.test_cli import TDS, Served, tds
from tests.support.ports import free_port

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


class Database:
    """What the replicas' database holds of one round's batch: its log entries and its
    products (each batch is one write: zero, or all ``BATCH``)."""

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)

    def logged(self, round_: int) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM log_entry WHERE kind = 'catalog.product_published' "
            "AND position(%s::bytea in body) > 0",
            (f'"product":"r{round_}-'.encode(),),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def stored(self, round_: int) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM product WHERE id LIKE %s", (f"r{round_}-%",)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._conn.close()


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far (Linux ``/proc``): a server's rises only
    while it serves something."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], adding: subprocess.Popen[str], what: str) -> None:
    """Poll ``condition`` every few ms, as long as the client is still publishing."""
    deadline = time.monotonic() + 60
    while not condition():
        assert adding.poll() is None, f"the publish ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within 60 s"
        time.sleep(0.002)


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
    survivor: Served | None = None
    db = Database(postgres_url)
    try:
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "a",
            "--address", f"127.0.0.1:{ports['a1']}", "--pki", "pki", cwd=root)  # fmt: skip
        survivor = Served(root / "a2.toml", root)
        spent: dict[str, float] = {}

        def publish_killed(round_: int, phase: str, when: Callable[[float], bool]) -> int:
            """Publish batch ``round_`` to a1, kill a1 once ``when(CPU seconds a1 spent
            since the client started)`` holds, and return what the running replica a2
            lists of the batch then (0 or BATCH)."""
            files = write_batch(root, round_)
            victim = Served(root / "a1.toml", root)
            pid = victim.proc.pid
            idle = cpu_seconds(pid)
            adding = subprocess.Popen(
                [*TDS, "product", "add", *files, "--config", "a1.toml"],
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(lambda: when(cpu_seconds(pid) - idle), adding, phase)
            spent[phase] = cpu_seconds(pid) - idle
            victim.proc.kill()  # no goodbye: as a crashed replica
            victim.proc.wait(10)
            victim.log.close()
            if victim.proc.stdout is not None:
                victim.proc.stdout.close()
            _, refused = adding.communicate(timeout=60)
            assert "Traceback" not in refused
            count = published(root, "a2.toml", round_)
            assert count in (0, BATCH), (phase, count)
            assert db.stored(round_) == count and db.logged(round_) in (0, BATCH)
            return count

        # The log's durable write, then the catalog's transaction: kill between the two
        # (the transaction takes several times the CPU the batch took to reach the log).
        assert publish_killed(1, "log entries durable", lambda _: db.logged(1) == BATCH) == 0
        assert db.logged(1) == BATCH
        # Committed: the client may not hear back, the batch is whole.
        assert publish_killed(2, "products committed", lambda _: db.stored(2) > 0) == BATCH
        # Not yet served: the client is still starting.
        assert publish_killed(3, "not yet served", lambda _: True) == 0
        assert db.logged(3) == 0
        # Serving the request (its handshake, receiving and validating the descriptions):
        # a1 has spent half the CPU time that the first round took to reach the log.
        half = spent["log entries durable"] / 2
        assert half > 0, spent
        assert publish_killed(4, "validating", lambda cpu: cpu >= half) == 0
        assert db.logged(4) == 0, ("the kill meant for validation came after the log", spent)

        tds("product", "add", *write_batch(root, 99), "--config", "a2.toml", cwd=root)
        assert published(root, "a2.toml", 99) == BATCH
    finally:
        db.close()
        if survivor is not None:
            survivor.stop()
        operator.stop()
