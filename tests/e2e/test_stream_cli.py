"""Streams as users run them: `tds serve` connectors, the provider's configuration naming
the machine's NATS server, `tds product add` of a JetStream subject, `tds negotiate`,
`tds subscribe` stopped with Ctrl-C (SIGINT) and run again (it resumes), `tds data list`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli import TDS, Served, tds
from tests.sources.conftest import NATS_URL, JetStream, _jetstream
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def js() -> Iterator[JetStream]:
    yield from _jetstream(NATS_URL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, js: JetStream) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("stream-cli")
    tds(
        "pki", "init", "--space", "city", "--out", "pki",
        "--participant", "gov:government", "--participant", "a:enterprise",
        cwd=root,
    )  # fmt: skip
    ports = {"operator": free_port(), "gov": free_port(), "a": free_port()}
    for pid, port in ports.items():
        extra = [] if pid == "operator" else ["--registry", f"127.0.0.1:{ports['operator']}"]
        tds(
            "init", "--pki", "pki", "--participant", pid, "--listen", f"127.0.0.1:{port}",
            "--out", f"{pid}.toml", *extra,
            cwd=root,
        )  # fmt: skip
    with (root / "gov.toml").open("a") as f:
        f.write(f'\n[sources.weather]\nurl = "{NATS_URL}"\n')
    with (root / "gov.toml").open("r+") as f:
        text = f.read().replace("[stream]\nwindow_messages = 1000", "[stream]\nwindow_messages = 5")
        f.seek(0)
        f.write(text)
        f.truncate()
    servers = {"operator": Served(root / "operator.toml", root)}
    try:
        for pid in ("gov", "a"):
            tds(
                "registry", "enrol", "--config", "operator.toml", "--participant", pid,
                "--address", f"127.0.0.1:{ports[pid]}", "--pki", "pki",
                cwd=root,
            )  # fmt: skip
            servers[pid] = Served(root / f"{pid}.toml", root)
        for pid in ("gov", "a"):
            deadline = time.monotonic() + 20
            while True:
                out = tds("status", "--config", f"{pid}.toml", "--json", cwd=root, check=False)
                if out.returncode == 0 and json.loads(out.stdout).get("revocation_list_issued_at"):
                    break
                assert time.monotonic() < deadline, f"{pid} never became ready"
                time.sleep(0.2)
        yield root
    finally:
        for server in servers.values():
            if server.proc.poll() is None:
                server.stop()


def readings(start: int, n: int) -> list[dict[str, object]]:
    return [
        {"station": f"S{i:03d}", "operator": f"Op {i}", "mm": i} for i in range(start, start + n)
    ]


def subscribe_until_kept(
    root: Path, agreement: str, kept: int, *extra: str | Path
) -> dict[str, object]:
    """Run `tds subscribe --json`, wait until `tds data list` shows ``kept``, press Ctrl-C."""
    proc = subprocess.Popen(
        [*TDS, "subscribe", "--agreement", agreement, "--config", "a.toml", "--json", *extra],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            listed = json.loads(
                tds("data", "list", "--config", "a.toml", "--json", cwd=root).stdout
            )
            streams = [
                r for r in listed if r.get("kind") == "stream" and r["agreement"] == agreement
            ]
            if streams and streams[0]["kept_sequence"] >= kept:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, streams
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    result: dict[str, object] = json.loads(out)
    return result


def test_subscribe_suspends_on_ctrl_c_and_resumes_where_it_stopped(
    world: Path, js: JetStream
) -> None:
    subject = js.stream()
    js.publish_json(subject, *readings(0, 10))
    agreement = publish_and_agree(world, subject, "rain")
    first = subscribe_until_kept(world, agreement, 10)
    assert first["state"] == "SUSPENDED"
    js.publish_json(subject, *readings(10, 5))
    second = subscribe_until_kept(world, agreement, 15)
    assert second["kept_sequence"] == 15
    listed = json.loads(tds("data", "list", "--config", "a.toml", "--json", cwd=world).stdout)
    (held,) = [r for r in listed if r.get("kind") == "stream" and r["agreement"] == agreement]
    assert (held["state"], held["kept_sequence"], held["messages"]) == ("SUSPENDED", 15, 15)
    lines = [
        json.loads(line)
        for segment in sorted(Path(held["path"]).glob("0*.jsonl"))
        for line in segment.read_text().splitlines()
    ]
    assert [line["sequence"] for line in lines] == list(range(1, 16))
    assert all(line["record"]["operator"] != "Op 0" for line in lines)
    human = tds("data", "list", "--config", "a.toml", cwd=world).stdout
    assert "stream" in human and "15 messages to sequence 15" in human


def publish_and_agree(world: Path, subject: str, pid: str) -> str:
    """Publish ``subject`` as stream product ``pid`` (`tds product add`) and negotiate it
    for "a" (`tds negotiate`); the agreement id."""
    description = world / f"{pid}.json"
    description.write_text(
        json.dumps(
            {
                "id": pid,
                "title": "Rain gauges",
                "grade": "general",
                "fields": ["station", "operator", "mm"],
                "source": {"kind": "stream", "connection": "weather", "subject": subject},
                "offers": [
                    {
                        "id": "o1",
                        "purposes": ["flood-warning"],
                        "valid_from_ns": 0,
                        "valid_until_ns": 4_000_000_000_000_000_000,
                        "masks": {"operator": "redact"},
                    }
                ],
            }
        )
    )
    tds("product", "add", description, "--config", "gov.toml", cwd=world)
    neg = tds(
        "negotiate", "--config", "a.toml", "--provider", "gov", "--product", pid,
        "--offer", "o1", "--purpose", "flood-warning", "--wait", "--json",
        cwd=world,
    )  # fmt: skip
    agreement: str = json.loads(neg.stdout)["agreement_id"]
    return agreement


def provider_messages(world: Path, agreement: str, expected: int) -> int:
    """The messages the provider's metering counts under ``agreement`` once it reads
    ``expected`` (what a subscription counted ahead is given back when it ends), or what it
    reads after 10 s; and no transfers."""
    deadline = time.monotonic() + 10
    while True:
        report = json.loads(
            tds("report", "metering", "--config", "gov.toml", "--json", cwd=world).stdout
        )
        (metered,) = [m for m in report["agreements"] if m["agreement"] == agreement]
        if metered["messages"] == expected or time.monotonic() > deadline:
            assert metered["transfers"] == 0
            return int(metered["messages"])
        time.sleep(0.2)


def test_subscribe_copies_segments_to_out_and_data_stop_ends_streams_from_either_side(
    world: Path, js: JetStream
) -> None:
    subject = js.stream()
    js.publish_json(subject, *readings(0, 10))
    agreement = publish_and_agree(world, subject, "rain-out")
    # A --out that is not a directory one can write to is refused before subscribing.
    blocker = world / "not-a-dir"
    blocker.write_text("x")
    for bad in (blocker, blocker / "below"):
        refused = tds(
            "subscribe", "--agreement", agreement, "--config", "a.toml", "--out", bad,
            cwd=world, check=False,
        )  # fmt: skip
        assert refused.returncode == 1
        assert f"--out {bad}: not a directory you can write to" in refused.stderr
    listed = json.loads(tds("data", "list", "--config", "a.toml", "--json", cwd=world).stdout)
    assert not [r for r in listed if r.get("kind") == "stream" and r["agreement"] == agreement]
    out = world / "exported"
    first = subscribe_until_kept(world, agreement, 10, "--out", out)
    assert first["out"] == str(out)
    # The provider's end of the first subscription comes at its next check after the
    # consumer left; records published before it would be sent into the closed call and
    # counted (the provider meters what it sends, receipted or not: a consumer that never
    # signs must not get a refund by leaving). So publish more once it has ended.
    assert provider_messages(world, agreement, 10) == 10
    js.publish_json(subject, *readings(10, 5))
    subscribe_until_kept(world, agreement, 15, "--out", out)  # resumes, copies the rest
    listed = json.loads(tds("data", "list", "--config", "a.toml", "--json", cwd=world).stdout)
    (held,) = [r for r in listed if r.get("kind") == "stream" and r["agreement"] == agreement]
    holding = sorted(Path(held["path"]).glob("0*.jsonl"))
    copies = sorted(out.glob("*.jsonl"))
    assert [p.name for p in copies] == [p.name for p in holding] and len(copies) == 3
    assert [p.read_bytes() for p in copies] == [p.read_bytes() for p in holding]
    assert not list(out.glob(".*.part"))
    # The provider's metering counts the streamed messages (the JSON and the human report),
    # once the provider has given back what it counted ahead for the ended subscription.
    assert provider_messages(world, agreement, 15) == 15
    human = tds("report", "metering", "--config", "gov.toml", cwd=world).stdout
    per_agreement, per_consumer = human.split("Per consumer:")
    assert f"{agreement}" in per_agreement and "15/∞ messages streamed" in per_agreement
    assert "messages streamed" in per_consumer
    # The consumer ends its stream: TERMINATED on both sides, and a rerun is refused.
    stopped = json.loads(
        tds(
            "data", "stop", agreement, "--reason", "season over", "--config", "a.toml",
            "--json", cwd=world,
        ).stdout
    )  # fmt: skip
    assert (stopped["role"], stopped["state"], stopped["counterparty_told"]) == (
        "consumer",
        "TERMINATED",
        True,
    )
    again = tds("data", "stop", agreement, "--config", "gov.toml", cwd=world, check=False)
    assert again.returncode == 1 and "already TERMINATED" in again.stderr
    rerun = tds("subscribe", "--agreement", agreement, "--config", "a.toml", cwd=world, check=False)
    assert rerun.returncode == 1 and "terminated" in rerun.stderr
    # The provider ends a stream it serves (a second agreement on the same feed).
    second = publish_and_agree(world, subject, "rain-out-2")
    subscribe_until_kept(world, second, 15)
    by_provider = tds("data", "stop", second, "--config", "gov.toml", cwd=world)
    assert f"Stream of agreement {second} is TERMINATED" in by_provider.stdout
    unknown = tds("data", "stop", "ag-" + "0" * 32, "--config", "a.toml", cwd=world, check=False)
    assert unknown.returncode == 1 and "no stream under agreement" in unknown.stderr
