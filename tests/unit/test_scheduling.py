"""``tds serve`` runs its threads in Linux's batch scheduling class (in a child process
here, so the test run's own threads keep theirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="scheduling classes are Linux's"
)

CHILD = r"""
import json, os, threading
from connector.node.scheduling import batch_scheduling

ready, stop = threading.Event(), threading.Event()

def early():  # started before the call, as gRPC's own threads are
    ready.set()
    stop.wait()

def idle():  # an operator put this one in another class
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    ready.set()
    stop.wait()

threads = {}
for target in (early, idle):
    ready.clear()
    t = threading.Thread(target=target)
    t.start()
    ready.wait()
    threads[target.__name__] = t
moved = batch_scheduling()
out = {name: os.sched_getscheduler(t.native_id) for name, t in threads.items()}

def later():
    out["later"] = os.sched_getscheduler(0)

t = threading.Thread(target=later)
t.start()
t.join()
out["main"] = os.sched_getscheduler(0)
out["moved"] = moved
stop.set()
print(json.dumps(out))
"""


def run_child(**env: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=True,
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


def batch_allowed() -> bool:
    """Whether this sandbox lets a process change its scheduling class at all."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def test_every_thread_moves_to_batch_and_new_threads_inherit_it() -> None:
    if not batch_allowed():
        pytest.skip("this sandbox refuses sched_setscheduler (the connector then runs as is)")
    got = run_child()
    assert got["main"] == got["early"] == got["later"] == os.SCHED_BATCH
    assert got["idle"] == os.SCHED_IDLE  # another class is left as the operator set it
    assert got["moved"] >= 2


def test_the_environment_can_leave_threads_alone() -> None:
    got = run_child(TDS_SCHED_BATCH="0")
    assert got["main"] == got["early"] == got["later"] == os.SCHED_OTHER
    assert got["moved"] == 0
