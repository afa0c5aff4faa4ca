"""Compute-to-data as users run it: `tds serve` processes, a compute-only product, `tds
compute` answering a grouped question as a table, refusing a question by patient id without
a traceback, spending ε until the budget is gone, `tds report metering` showing ε, and the
computation receipts reconciled from both logs by `tds audit reconcile`."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import Served, tds
from tests.e2e.test_transfer_cli import _wait_ready
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

PRODUCT = """id = "admissions"
title = "Hospital admissions"
grade = "important"
fields = ["patient_id", "district", "age_band", "cost"]

[source]
kind = "table"
format = "csv"
path = "admissions.csv"

[[offers]]
id = "o1"
purposes = ["research"]
valid_from_ns = 0
valid_until_ns = 4000000000000000000
delivery = ["compute"]

[offers.compute]
k = 10

[offers.compute.dimensions.district]
type = "text"

[offers.compute.dimensions.age_band]
type = "text"

[offers.compute.measures.cost]
aggregates = ["count", "sum", "avg"]
lower = 0
upper = 5000

[offers.compute.privacy]
epsilon_per_query = 1.0
epsilon_budget = 2.0
delta = 1e-6
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("compute-cli")
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "health:government", "--participant", "lab:enterprise",
        "--participant", "aud:auditor",
        cwd=root,
    )  # fmt: skip
    ports = {"operator": free_port(), "health": free_port(), "lab": free_port()}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        extra += ["--source-root", "products"]
        tds(
            "init", "--pki", "pki", "--participant", pid, "--listen", f"127.0.0.1:{port}",
            "--out", f"{pid}.toml", *extra,
            cwd=root,
        )  # fmt: skip
    tds("init", "--pki", "pki", "--participant", "aud", "--registry",
        f"127.0.0.1:{ports['operator']}", "--out", "aud.toml", cwd=root)  # fmt: skip
    products = root / "products"
    products.mkdir()
    with (products / "admissions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "district", "age_band", "cost"])
        n = 0
        for district, count in (("north", 400), ("south", 300), ("island", 4)):
            for i in range(count):
                writer.writerow([f"P{n:05d}", district, ("0-17", "18-64", "65+")[i % 3], 900 + i])
                n += 1
    (products / "admissions.toml").write_text(PRODUCT)
    servers = {"operator": Served(root / "operator.toml", root)}
    try:
        for pid in ("health", "lab"):
            tds(
                "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki",
                cwd=root,
            )  # fmt: skip
            servers[pid] = Served(root / f"{pid}.toml", root)
        tds("registry", "enrol", "--config", "operator.toml", "--participant", "aud",
            "--pki", "pki", cwd=root)  # fmt: skip
        yield root
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def test_compute_as_a_user_runs_it(world: Path) -> None:
    root = world
    _wait_ready(root, "lab.toml")
    _wait_ready(root, "health.toml")
    tds(
        "product", "add", root / "products" / "admissions.toml", "--config", "health.toml", cwd=root
    )
    listed = tds("catalog", "list", "--provider", "health", "--config", "lab.toml", cwd=root)
    assert "offer o1: compute only, k=10, by age_band, district" in listed.stdout, listed.stdout
    neg = tds(
        "negotiate", "--config", "lab.toml", "--provider", "health", "--product",
        "admissions", "--offer", "o1", "--purpose", "research", "--json",
        cwd=root,
    )  # fmt: skip
    pid = json.loads(neg.stdout)["pid"]
    # Important data: the provider's administrator approves the contract.
    pending = json.loads(
        tds(
            "negotiations", "list", "--pending", "--config", "health.toml", "--json", cwd=root
        ).stdout
    )
    tds("negotiations", "approve", pending[0]["pid"], "--config", "health.toml", cwd=root)
    agreement = ""
    for _ in range(100):
        shown = json.loads(
            tds("negotiations", "show", pid, "--config", "lab.toml", "--json", cwd=root).stdout
        )
        if shown["state"] == "FINALIZED":
            agreement = shown["agreement_id"]
            break
        time.sleep(0.1)
    assert agreement

    question = "SELECT district, count(*), avg(cost) FROM product GROUP BY district"
    human = tds("compute", "--agreement", agreement, question, "--config", "lab.toml", cwd=root)
    assert "north" in human.stdout and "island" not in human.stdout, human.stdout
    assert (
        "suppressed" in human.stdout and "ε spent 1 (differential privacy), 1 left" in human.stdout
    )
    answer = json.loads(
        tds(
            "compute",
            "--agreement",
            agreement,
            question,
            "--out",
            "answer.json",
            "--config",
            "lab.toml",
            "--json",
            cwd=root,
        ).stdout
    )
    assert answer["receipt"]["epsilon_left"] == 0
    assert json.loads((root / "answer.json").read_text()) == answer["answer"]

    # Refusals: one clear line, no traceback, exit 1.
    for refused_question, reason in (
        ("SELECT patient_id, count(*) FROM product GROUP BY patient_id", "not a declared"),
        (question, "privacy_budget_exhausted"),
    ):
        refused = tds(
            "compute", "--agreement", agreement, refused_question, "--config", "lab.toml",
            cwd=root, check=False,
        )  # fmt: skip
        assert refused.returncode == 1 and reason in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert "2 spent, 0 left" in refused.stderr

    metering = tds("report", "metering", "--config", "health.toml", cwd=root).stdout
    assert "2 answers, ε 2 of 2 spent (0 left)" in metering, metering

    for who in ("health", "lab"):
        tds(
            "audit", "fetch", "--config", "aud.toml", "--connector", who,
            "--out", f"export-{who}", "--no-cosign",
            cwd=root,
        )  # fmt: skip
        verified = tds("audit", "verify", f"export-{who}", cwd=root, check=False)
        assert "2 computation receipts" in verified.stdout, verified.stdout + verified.stderr
    rec = tds("audit", "reconcile", "export-health", "export-lab", cwd=root)
    assert "2 receipts match (2 of them computations)" in rec.stdout, rec.stdout
