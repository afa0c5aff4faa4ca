"""Two replicas of one connector on PostgreSQL: one log, checkpoints that only grow."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from connector.audit.verify import verify
from connector.cli.main import main
from connector.demo.space import LocalSpace
from connector.identity.names import Role
from connector.node import Node

pytestmark = pytest.mark.postgres


def test_replicas_sign_checkpoints_an_auditor_verifies(tmp_path: Path, postgres_url: str) -> None:
    """Issue 18, finding 2: replicas signed checkpoints over their own trees in memory.

    Two connectors of participant ``a`` share one PostgreSQL database and append and
    sign concurrently; an auditor then fetches (and cosigns) the log from each replica
    with ``tds audit fetch`` and verifies it offline: no checkpoint may be smaller than
    the one before it, and each must match the entries.
    """
    with LocalSpace.create(tmp_path, [("a", Role.ENTERPRISE), ("aud", Role.AUDITOR)]) as sp:
        sp.start_registry()
        first = sp.start_connector("a", database_url=postgres_url)
        second = Node(sp.write_config("a", "127.0.0.1:0", sp.registry_address, postgres_url))
        second.start()
        sp.nodes["a-2"] = second
        assert second.wait_ready(10)
        sp.enrol("aud", "")
        sp.write_config("aud", "", sp.registry_address)
        errors: list[BaseException] = []

        def work(node: Node, w: int) -> None:
            assert node.log is not None
            try:
                for n in range(10):
                    node.log.record("test.replica", parties=[], data={"w": w, "n": n})
                    node.log.checkpoint()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=work, args=((first, second)[w % 2], w)) for w in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert first.log is not None
        first.log.record("test.replica", parties=[], data={"last": True})
        first.log.checkpoint()  # then the replica that did not append signs (when fetched)
        for name, node in (("from-second", second), ("from-first", first)):
            out = tmp_path / name
            target = f"a@127.0.0.1:{node.port}"
            args = ["audit", "fetch", "--config", str(tmp_path / "aud.toml"), "--connector", target]
            assert main([*args, "--out", str(out)]) == 0
            report = verify(out)
            assert report.ok, report.problems
            assert report.checkpoints >= 2 and report.cosignatures == {"aud": 1}
