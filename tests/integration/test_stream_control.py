"""Controlling a running stream, between connectors, against the machine's NATS JetStream:
an agreement's message limit and its per-period limits, and `tds data stop` from either
side (through the admin API).

The provider's clock is the wall clock plus an offset the test moves, so a new period
starts without waiting for one.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import (
    admin_pb2,
    catalog_pb2,
    catalog_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
)
from connector.config import StreamConfig
from connector.demo.space import LocalSpace
from connector.dsp.jsonld import check_outgoing
from connector.identity.names import Role
from connector.node.clients import admin_channel
from connector.sources.nats_connection import NatsConnection
from connector.transfer.store import CONSUMER, PROVIDER
from connector.transfer.stream_store import STARTED, SUSPENDED, TERMINATED
from connector.transfer.subscriber import stream_holding
from tests.integration.test_catalog import as_member
from tests.sources.conftest import NATS_URL, JetStream, _jetstream
from tests.support.exchange import admin, agree, entries, logged_soon, offer, publish
from tests.support.streams import FIELDS, Follower, held, readings


class OffsetClock:
    """The wall clock, moved on by ``advance``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture(scope="module")
def js() -> Iterator[JetStream]:
    yield from _jetstream(NATS_URL)


@pytest.fixture(scope="module")
def clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture
def moved(clock: OffsetClock) -> Iterator[OffsetClock]:
    """The provider's clock, to move in a test; back to the wall clock afterwards (tokens
    the registry issues by the wall clock would otherwise look expired to it)."""
    yield clock
    clock.offset = 0.0


@pytest.fixture(scope="module")
def space(
    tmp_path_factory: pytest.TempPathFactory, js: JetStream, clock: OffsetClock
) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("stream-limits")
    sources: dict[str, Any] = {"weather": NatsConnection("weather", NATS_URL)}
    settings = StreamConfig(window_messages=5, window_seconds=0.3, ack_timeout_seconds=5)
    parts = [
        ("gov", Role.GOVERNMENT),
        ("a", Role.ENTERPRISE),
        ("b", Role.ENTERPRISE),
        ("gone", Role.ENTERPRISE),  # a provider stopped mid-test
    ]
    with LocalSpace.create(root, parts) as sp:
        sp.start_registry()
        sp.start_connector("gov", sources=sources, stream=settings, clock=clock)
        sp.start_connector("a")
        sp.start_connector("b")
        sp.start_connector("gone", sources=sources, stream=settings)
        yield sp


def limited_feed(space: LocalSpace, js: JetStream, base: Path, **terms: Any) -> tuple[str, str]:
    """A fresh subject published as a stream product whose offer has ``terms``."""
    subject = js.stream()
    pid = "rain-" + subject.rsplit("_", 1)[-1]
    publish(
        space,
        "gov",
        {
            "id": pid,
            "title": "Rain gauges",
            "grade": "general",
            "fields": FIELDS,
            "source": {"kind": "stream", "connection": "weather", "subject": subject},
            "offers": [offer(**terms)],
        },
        base,
    )
    return pid, subject


def ended(space: LocalSpace, kind: str, agreement: str) -> list[dict[str, Any]]:
    return [e["data"] for e in entries(space, "gov", kind) if e["data"]["agreement"] == agreement]


def listed_offers(space: LocalSpace, member: str, product: str) -> list[catalog_pb2.OfferTerms]:
    """The product's offers in the provider's catalog as ``member`` reads it over gRPC."""
    token, found = "", []
    with as_member(space, member) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        while True:
            request = catalog_pb2.ListProductsRequest(page_token=token)
            page = stub.ListProducts(request, timeout=10)
            found += [p for p in page.products if p.id == product]
            token = page.next_page_token
            if not token:
                break
    assert len(found) == 1, [p.id for p in found]
    return list(found[0].offers)


def test_a_members_listing_shows_a_stream_offers_limits_before_any_agreement(
    space: LocalSpace, js: JetStream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from connector.cli.main import main

    limits = {"period": "hour", "max_messages": 100, "max_bytes": 20000}
    pid, _ = limited_feed(space, js, tmp_path, max_messages=1000, per_period=limits)
    plain, _ = limited_feed(space, js, tmp_path)
    (offer,) = listed_offers(space, "a", pid)
    assert offer.max_messages == 1000 and offer.HasField("per_period")
    assert (offer.per_period.period, offer.per_period.max_messages) == ("hour", 100)
    assert offer.per_period.max_bytes == 20000
    (unlimited,) = listed_offers(space, "a", plain)
    assert unlimited.max_messages == 0 and not unlimited.HasField("per_period")
    # As a person reads it: the line under the product names the offer's limits.
    argv = ["catalog", "list", "--provider", "gov", "--config", str(space.root / "a.toml")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(pid + " "))
    assert lines[at + 1].strip() == (
        "offer o1: at most 1000 messages in all, 100 messages and 20000 bytes per hour"
    )
    after_plain = lines[
        next(i for i, line in enumerate(lines) if line.startswith(plain + " ")) + 1 :
    ]
    assert not after_plain or not after_plain[0].startswith("    offer")
    # As a Dataspace Protocol catalog: ODRL constraints, and the document validates.
    assert main([*argv, "--dsp"]) == 0
    document = check_outgoing("Catalog", json.loads(capsys.readouterr().out))
    (dataset,) = [d for d in document["dataset"] if d["@id"] == f"urn:tds:dataset:{pid}"]
    rule = dataset["hasPolicy"][0]["permission"][0]
    assert [c for c in rule["constraint"] if c["leftOperand"].startswith("urn:tds:")] == [
        {"leftOperand": "urn:tds:messageCount", "operator": "lteq", "rightOperand": "1000"},
        {"leftOperand": "urn:tds:messageCountPerHour", "operator": "lteq", "rightOperand": "100"},
        {"leftOperand": "urn:tds:byteCountPerHour", "operator": "lteq", "rightOperand": "20000"},
    ]


def test_the_message_limit_stops_the_stream_after_exactly_that_many(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    pid, subject = limited_feed(space, js, tmp_path, max_messages=12)
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(30))
    f = Follower(space, "a", agreement)
    f.wait_end(15)
    assert f.error is not None and f.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "message_limit_reached" in (f.error.details() or "")
    stopped = ended(space, "stream.stopped", agreement)
    assert stopped[-1]["reason"] == "message_limit_reached"
    assert stopped[-1]["sent"] == 12 and stopped[-1]["last_sequence"] == 12
    store = space.nodes["gov"].stream_store
    assert store is not None
    assert store.usage(agreement)[0] == 12  # what was counted ahead was given back
    assert store.get(agreement, PROVIDER).state == TERMINATED
    assert len(held(space, "a", agreement)) <= 12
    # The stream is over: a new subscription is refused and nothing more is counted.
    again = Follower(space, "a", agreement)
    again.wait_end(10)
    assert again.error is not None
    assert again.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert store.usage(agreement)[0] == 12


def test_a_period_limit_suspends_the_stream_until_the_next_period(
    space: LocalSpace, js: JetStream, moved: OffsetClock, tmp_path: Path
) -> None:
    clock = moved
    # Start at the beginning of a minute, so the first period does not end mid-test.
    clock.advance(60 - clock.now() % 60 + 0.5)
    pid, subject = limited_feed(
        space, js, tmp_path, per_period={"period": "minute", "max_messages": 7}
    )
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(30))
    f = Follower(space, "a", agreement)
    f.wait_end(15)
    assert f.error is not None and f.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "period_message_limit_reached" in (f.error.details() or "")
    suspended = ended(space, "stream.suspended", agreement)
    assert suspended[-1]["reason"] == "period_message_limit_reached"
    assert suspended[-1]["sent"] == 7
    store = space.nodes["gov"].stream_store
    assert store is not None
    state = store.get(agreement, PROVIDER)
    assert (state.state, state.reason) == (SUSPENDED, "period_message_limit_reached")
    # In the same minute the usage policy refuses a new subscription; nothing changes.
    refused = Follower(space, "a", agreement)
    refused.wait_end(10)
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "period_message_limit_reached" in (refused.error.details() or "")
    assert store.get(agreement, PROVIDER).state == SUSPENDED
    assert store.usage(agreement)[0] == 7
    # The next minute allows 7 more, resumed from the last countersigned window.
    clock.advance(60)
    resumed = Follower(space, "a", agreement)
    resumed.wait_end(15)
    assert resumed.error is not None
    assert "period_message_limit_reached" in (resumed.error.details() or "")
    kept = [line["sequence"] for line in held(space, "a", agreement)]
    assert kept == list(range(1, len(kept) + 1)) and 7 <= len(kept) <= 14, str(kept)
    assert store.usage(agreement)[0] == 14


def stop(space: LocalSpace, who: str, agreement: str, reason: str = "") -> Any:
    channel = admin_channel(space.configs[who])
    try:
        return stream_pb2_grpc.StreamServiceStub(channel).StopStream(
            stream_pb2.StopStreamRequest(agreement_id=agreement, reason=reason), timeout=20
        )
    finally:
        channel.close()


def running(space: LocalSpace, js: JetStream, base: Path) -> tuple[str, Follower]:
    """An agreement of "a" whose stream is running, with a first window kept."""
    pid, subject = limited_feed(space, js, base)
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(5))
    f = Follower(space, "a", agreement)
    f.wait_kept(5)
    return agreement, f


def states(space: LocalSpace, agreement: str) -> tuple[str, str]:
    gov, a = space.nodes["gov"].stream_store, space.nodes["a"].stream_store
    assert gov is not None and a is not None
    return gov.get(agreement, PROVIDER).state, a.get(agreement, CONSUMER).state


def test_the_consumer_stops_its_own_stream_for_good(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    agreement, f = running(space, js, tmp_path)
    r = stop(space, "a", agreement, "the flood is over")
    assert (r.role, r.state, r.reason, r.counterparty_told) == (
        "consumer",
        TERMINATED,
        "the flood is over",
        True,
    )
    f.wait_end(5)
    assert states(space, agreement) == (TERMINATED, TERMINATED)
    for who in ("a", "gov"):
        (logged,) = ended_by(space, who, agreement)
        assert (logged["by"], logged["reason"]) == ("consumer", "the flood is over")
    # It stays stopped: no new subscription, and the holding is kept (it was not revoked).
    again = Follower(space, "a", agreement)
    again.wait_end(10)
    assert again.error is not None
    assert again.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(held(space, "a", agreement)) == 5


def test_the_provider_stops_a_stream_it_serves_within_a_second(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    agreement, f = running(space, js, tmp_path)
    asked = time.monotonic()
    r = stop(space, "gov", agreement, "station maintenance")
    assert (r.role, r.state) == ("provider", TERMINATED)
    f.wait_end(5)
    assert f.ended_at - asked < 1.0
    assert f.error is not None and f.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "station maintenance" in (f.error.details() or "")
    assert states(space, agreement) == (TERMINATED, TERMINATED)
    (logged,) = ended_by(space, "gov", agreement)
    assert (logged["by"], logged["reason"]) == ("provider", "station maintenance")
    stopped = ended(space, "stream.stopped", agreement)
    assert stopped[-1]["reason"] == "station maintenance"


@pytest.mark.parametrize("who", ["gov", "a"])
def test_stops_at_once_stop_the_stream_once_and_log_it_once(
    space: LocalSpace, js: JetStream, tmp_path: Path, who: str
) -> None:
    """Several stops at the same moment (an operator's double click, two replicas) all see
    a running stream; one stops it, the others are told it is stopped already, and the
    stopping side's log says ``stream.terminated`` once."""
    agreement, f = running(space, js, tmp_path)
    start = threading.Barrier(6)
    outcomes: list[str] = []

    def one(n: int) -> None:
        start.wait()
        try:
            stop(space, who, agreement, f"stop {n}")
            outcomes.append("stopped")
        except grpc.RpcError as err:
            outcomes.append(err.code().name)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["FAILED_PRECONDITION"] * 5 + ["stopped"]
    f.wait_end(5)
    assert states(space, agreement) == (TERMINATED, TERMINATED)
    assert len(ended_by(space, who, agreement)) == 1


def test_the_consumer_stops_its_stream_when_the_provider_cannot_be_told(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    subject = js.stream()
    publish(
        space,
        "gone",
        {
            "id": "rain-gone",
            "title": "Rain gauges",
            "grade": "general",
            "fields": FIELDS,
            "source": {"kind": "stream", "connection": "weather", "subject": subject},
            "offers": [offer()],
        },
        tmp_path,
    )
    agreement = agree(space, "gone", "a", "rain-gone")
    js.publish_json(subject, *readings(5))
    f = Follower(space, "a", agreement)
    f.wait_kept(5)
    f.stop()
    space.nodes.pop("gone").stop(grace=0)  # and out of the space (its refresh, its stop)
    r = stop(space, "a", agreement, "provider gone")
    # The consumer's own termination stands and is logged; it says the provider was not told.
    assert (r.role, r.state, r.counterparty_told) == ("consumer", TERMINATED, False)
    store = space.nodes["a"].stream_store
    assert store is not None
    assert store.get(agreement, CONSUMER).state == TERMINATED
    (logged,) = ended_by(space, "a", agreement)
    assert logged["reason"] == "provider gone"


def test_stopping_an_unknown_or_someone_elses_stream_changes_nothing(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    agreement, f = running(space, js, tmp_path)
    try:
        before = {who: len(entries(space, who)) for who in ("gov", "a", "b")}
        for who, target, code in [
            ("a", "ag-" + "0" * 32, grpc.StatusCode.NOT_FOUND),  # no such agreement
            ("b", agreement, grpc.StatusCode.NOT_FOUND),  # a's agreement, from b's admin
            ("a", "tr-" + "0" * 32, grpc.StatusCode.INVALID_ARGUMENT),  # not an agreement
            ("a", "ag-../../x", grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stop(space, who, target)
            assert caught.value.code() == code, (who, target)
        # Another member telling the provider to end a's stream: as if there were none.
        channel = space.nodes["b"]._member_channel("gov")
        with pytest.raises(grpc.RpcError) as caught:
            stream_pb2_grpc.StreamServiceStub(channel).TerminateStream(
                stream_pb2.TerminateStreamRequest(agreement_id=agreement, reason="mine now"),
                timeout=10,
            )
        channel.close()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert {who: len(entries(space, who)) for who in ("gov", "a", "b")} == before
        assert states(space, agreement) == (STARTED, STARTED)
        f.wait_kept(5)
        assert f.error is None
    finally:
        f.stop()
    # A stream already terminated is not terminated twice.
    stop(space, "gov", agreement)
    with pytest.raises(grpc.RpcError) as caught:
        stop(space, "gov", agreement)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(ended_by(space, "gov", agreement)) == 1


def test_a_consumer_that_forges_its_stop_reason_changes_nothing(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    """The reason a consumer's connector sends goes into the provider's log and state: a
    line break (a forged log line) or an endless text is refused at the boundary, and the
    stream runs on, unlogged."""
    agreement, f = running(space, js, tmp_path)
    try:
        before = len(entries(space, "gov"))
        channel = space.nodes["a"]._member_channel("gov")
        try:
            for reason in ("done\n[ok ] provider agreed to delete everything", "x" * 5000):
                with pytest.raises(grpc.RpcError) as caught:
                    stream_pb2_grpc.StreamServiceStub(channel).TerminateStream(
                        stream_pb2.TerminateStreamRequest(agreement_id=agreement, reason=reason),
                        timeout=10,
                    )
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "reason" in (caught.value.details() or "")
        finally:
            channel.close()
        assert len(entries(space, "gov")) == before
        assert states(space, agreement) == (STARTED, STARTED)
        f.wait_kept(5)
        assert f.error is None
    finally:
        f.stop()


def ended_by(space: LocalSpace, who: str, agreement: str) -> list[dict[str, Any]]:
    return [
        e["data"]
        for e in entries(space, who, "stream.terminated")
        if e["data"]["agreement"] == agreement
    ]


def sweep_until(space: LocalSpace, who: str, agreement: str, timeout: float = 10) -> str:
    """Run the consumer's holdings sweep (as its background thread does) until the stream
    holding of ``agreement`` is deleted; the reason."""
    sweeper = space.nodes[who].sweeper
    assert sweeper is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for deleted, reason in sweeper.sweep():
            if deleted == agreement:
                return reason
        time.sleep(0.1)
    raise AssertionError(f"the holding of {agreement} was not deleted")


def test_a_stream_holding_is_deleted_after_its_time_by_the_holdings_sweep(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    delete_after_ns = time.time_ns() + 3 * 10**9
    pid, subject = limited_feed(
        space, js, tmp_path, obligations={"delete_after_ns": delete_after_ns}
    )
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(5))
    f = Follower(space, "a", agreement)
    f.wait_kept(5)
    f.stop()
    directory = stream_holding(space.configs["a"].data_dir / "holdings", agreement)
    store = space.nodes["a"].stream_store
    assert store is not None
    # The provider's decision carried the obligation; the consumer keeps the holding under it.
    assert store.get(agreement, CONSUMER).obligations["delete_after_ns"] == delete_after_ns
    sweeper = space.nodes["a"].sweeper
    assert sweeper is not None
    assert agreement not in [held for held, _ in sweeper.sweep()]
    assert len(held(space, "a", agreement)) == 5
    assert sweep_until(space, "a", agreement) == "delete_after"
    assert time.time_ns() >= delete_after_ns
    assert not directory.exists()
    (logged,) = [
        e["data"]
        for e in entries(space, "a", "stream.deleted")
        if e["data"]["agreement"] == agreement
    ]
    assert (logged["reason"], logged["messages"], logged["kept_sequence"]) == ("delete_after", 5, 5)
    assert store.get(agreement, CONSUMER).deleted_ms > 0
    # Deleted once: a second sweep neither deletes nor logs again, a subscription is refused.
    assert agreement not in [held for held, _ in sweeper.sweep()]
    again = Follower(space, "a", agreement)
    again.wait_end(10)
    assert again.error is not None
    assert again.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        len(
            [
                e
                for e in entries(space, "a", "stream.deleted")
                if e["data"]["agreement"] == agreement
            ]
        )
        == 1
    )


def test_a_stream_holding_is_deleted_when_the_agreement_is_revoked_while_not_subscribed(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    agreement, f = running(space, js, tmp_path)
    f.stop()
    sweeper = space.nodes["a"].sweeper
    assert sweeper is not None
    assert agreement not in [held for held, _ in sweeper.sweep()]
    admin(space, "gov").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="emergency over"),
        timeout=10,
    )
    # The signed revocation sweeps the holding as it arrives (no sweep is run here).
    assert [
        e["data"]["reason"] for e in logged_soon(space, "a", "stream.deleted", agreement=agreement)
    ] == ["agreement_revoked"]
    assert sweeper.sweep() == []  # waits for the one running; nothing is deleted twice
    assert not stream_holding(space.configs["a"].data_dir / "holdings", agreement).exists()


def test_metering_and_the_disclosure_report_count_streamed_messages_and_bytes(
    space: LocalSpace, js: JetStream, tmp_path: Path
) -> None:
    """Live public data is disclosed like copies and answers: per operator and product, the
    messages and bytes of its countersigned windows, each window's log index listed."""
    subject = js.stream()
    pid = "rain-public-" + subject.rsplit("_", 1)[-1]
    publish(
        space,
        "gov",
        {
            "id": pid,
            "title": "Rain gauges",
            "grade": "general",
            "tags": ["weather"],
            "fields": FIELDS,
            "source": {"kind": "stream", "connection": "weather", "subject": subject},
            "offers": [offer(max_messages=1000)],
        },
        tmp_path,
    )
    admin(space, "gov").RegisterProduct(
        admin_pb2.RegisterOwnProductRequest(product_id=pid, public=True), timeout=10
    )
    day = 86_400 * 10**9
    space.grant(
        "a",
        scope=["weather"],
        purposes=["research"],
        start_ns=time.time_ns() - day,
        end_ns=time.time_ns() + 30 * day,
        body="Meteorological Bureau",
    )
    space.refresh()
    agreement = agree(space, "gov", "a", pid)
    js.publish_json(subject, *readings(10))
    f = Follower(space, "a", agreement)
    f.wait_kept(10)
    f.stop()
    store = space.nodes["gov"].stream_store
    assert store is not None
    windows = [w for w, _ in store.windows(agreement, PROVIDER)]
    assert sum(w.count for w in windows) == 10
    deadline = time.monotonic() + 5  # what was counted ahead is given back as it ends
    while store.usage(agreement)[0] != 10 and time.monotonic() < deadline:
        time.sleep(0.05)

    metering = admin(space, "gov").MeteringReport(admin_pb2.MeteringReportRequest(), timeout=10)
    (m,) = [m for m in metering.agreements if m.agreement_id == agreement]
    assert (m.messages, m.max_messages, m.bytes) == (10, 1000, sum(w.bytes for w in windows))
    assert (m.consumer, m.transfers) == ("a", 0)

    year = dt.datetime.fromtimestamp(space.nodes["gov"].clock.now(), dt.UTC).year
    report = json.loads(
        admin(space, "gov")
        .DisclosureReport(admin_pb2.DisclosureReportRequest(period=year), timeout=10)
        .report_json
    )
    (op,) = [o for o in report["operators"] if o["operator"] == "a"]
    (row,) = [p for p in op["products"] if p["agreement"] == agreement]
    assert (row["stream_windows"], row["messages"], row["stream_bytes"]) == (
        len(windows),
        10,
        sum(w.bytes for w in windows),
    )
    assert (row["transfers"], row["metered_all_time"]["messages"]) == (0, 10)
    assert op["messages"] >= 10 and report["messages"] >= 10
    assert report["stream_bytes"] >= row["stream_bytes"]
    gov_log = space.nodes["gov"].log
    assert gov_log is not None
    kinds = [
        json.loads(body)["kind"]
        for index in row["receipt_log_indices"]
        for _, body in gov_log.entries(index, index + 1)
    ]
    assert kinds == ["stream.window"] * len(windows)
    # Another year discloses none of it.
    earlier = json.loads(
        admin(space, "gov")
        .DisclosureReport(admin_pb2.DisclosureReportRequest(period=year - 1), timeout=10)
        .report_json
    )
    assert earlier["messages"] == 0
