"""Compute-to-data (可用不可见) between two connectors: answers with a computation receipt both
sign and log, every question the rules do not allow refused with its reason and nothing
spent, the differencing attack refused, copy and compute kept apart by the offer, and the
privacy budget holding under concurrent questions."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, compute_pb2, compute_pb2_grpc
from connector.audit.canonical import canonical_json
from connector.compute.receipt import verify_computation_receipt
from connector.compute.store import CONFIRMED, ComputationStore
from connector.demo.space import LocalSpace
from connector.errors import VerificationError
from connector.identity.names import Role
from connector.node.clients import admin_channel
from tests.support.exchange import admin, agree, altered, entries, offer, publish

FIELDS = ["patient_id", "district", "age_band", "year", "cost"]
RULES: dict[str, Any] = {
    "k": 5,
    "dimensions": {
        "district": {"type": "text"},
        "age_band": {"type": "text"},
        "year": {"type": "integer"},
    },
    "measures": {"cost": {"aggregates": ["count", "sum", "avg"], "lower": 0, "upper": 100000}},
}
DP_RULES = {**RULES, "privacy": {"epsilon_per_query": 1.0, "epsilon_budget": 3.0, "delta": 1e-6}}


def rows() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bands = ["0-17", "18-64", "65-89"]
    for district in ("north", "south", "east"):
        for i in range(30):
            out.append({"district": district, "age_band": bands[i % 3], "cost": 1000 + 37 * i})
    out += [{"district": "island", "age_band": "18-64", "cost": 5000}] * 3  # a small group
    out.append({"district": "north", "age_band": "90+", "cost": 88000})  # one person
    return [{"patient_id": f"P{n:05d}", "year": 2026, **row} for n, row in enumerate(out)]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("compute")
    data = root / "provider-data"
    data.mkdir()
    with (data / "admissions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows())
    parts = [("health", Role.GOVERNMENT), ("lab", Role.ENTERPRISE)]
    with LocalSpace.create(root, parts) as sp:
        sp.start_registry()
        for who in ("health", "lab"):
            sp.start_connector(who)
        source = {"kind": "table", "format": "csv", "path": "admissions.csv"}
        for pid, grade, terms in (
            ("admissions", "important", {"delivery": ["compute"], "compute": RULES}),
            ("admissions-dp", "important", {"delivery": ["compute"], "compute": DP_RULES}),
            ("admissions-copy", "general", {}),
        ):
            publish(
                sp,
                "health",
                {
                    "id": pid,
                    "title": pid,
                    "grade": grade,
                    "fields": FIELDS,
                    "source": source,
                    "offers": [offer(**terms)],
                },
                data,
            )
        sp.data = data  # type: ignore[attr-defined]
        yield sp


def ask(space: LocalSpace, agreement: str, question: str) -> compute_pb2.ComputeResponse:
    stub = compute_pb2_grpc.ComputeServiceStub(admin_channel(space.configs["lab"]))
    response: compute_pb2.ComputeResponse = stub.Ask(
        compute_pb2.ComputeRequest(agreement_id=agreement, question=question), timeout=60
    )
    return response


@pytest.fixture(scope="module")
def plain(space: LocalSpace) -> str:
    return agree(space, "health", "lab", "admissions", approve=True)


def confirmed(space: LocalSpace, who: str, computation: str, within: float = 10.0) -> bool:
    """Whether ``who`` holds ``computation`` as confirmed, waiting up to ``within`` seconds."""
    db = space.nodes[who].db
    assert db is not None
    deadline = time.monotonic() + within
    while ComputationStore(db).get(computation).state != CONFIRMED:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def spent(space: LocalSpace, agreement: str) -> tuple[int, int]:
    db = space.nodes["health"].db
    assert db is not None
    used = ComputationStore(db).usage(agreement)
    return used.computations, used.spent_micro


def test_an_answer_comes_with_a_receipt_both_sign_and_log(space: LocalSpace, plain: str) -> None:
    r = ask(
        space,
        plain,
        "SELECT district, count(*), avg(cost) FROM product WHERE year = 2026 GROUP BY district",
    )
    answer = json.loads(r.answer)
    assert answer["columns"] == ["district", "count", "avg_cost"]
    by_district = {row[0]: row for row in answer["rows"]}
    assert set(by_district) == {"north", "south", "east"}  # island (3 < k) suppressed
    assert answer["suppressed"] == 1
    assert by_district["south"][1] == 30
    receipt = verify_computation_receipt(r.receipt, space.nodes["health"]._signing_key_of)
    assert (receipt.provider, receipt.consumer, receipt.agreement) == ("health", "lab", plain)
    assert receipt.suppressed == 1 and receipt.rows == 3 and receipt.epsilon_spent == 0
    assert receipt.source_state.startswith("sha256:")
    assert "GROUP BY district" in receipt.query
    # The countersignature reaches the provider after the answer, off its path.
    for who in ("lab", "health"):
        assert confirmed(space, who, r.computation_id)
        logged = [
            e["data"]["receipt"]
            for e in entries(space, who, "compute.receipt")
            if e["data"]["computation"] == r.computation_id
        ]
        assert logged == [r.receipt]


@pytest.mark.parametrize(
    ("question", "reason"),
    [
        ("DELETE FROM product", "SELECT"),
        ("UPDATE product SET cost = 0", "SELECT"),
        ("SELECT district, count(*) FROM product GROUP BY district FOR UPDATE", "lock"),
        ("SELECT district, count(*) FROM product GROUP BY district; DROP TABLE product", "one"),
        ("SELECT count(*) FROM read_csv('/etc/passwd')", "table functions"),
        ("SELECT district, count(*) FROM product WHERE district = pg_read_file('x')", "literal"),
        ("SELECT * FROM product", "SELECT *"),
        ("SELECT patient_id FROM product", "not a declared dimension"),
        ("SELECT cost FROM product", "raw values never leave"),
        ("SELECT patient_id, count(*) FROM product GROUP BY patient_id", "patient_id"),
        ("SELECT district, max(cost) FROM product GROUP BY district", "max"),
        ("SELECT p.district, count(*) FROM product p JOIN product q ON true GROUP BY 1", "a join"),
        ("SELECT count(*) FROM (SELECT * FROM product) AS t", "subqueries"),
        ("SELECT district, count(*) OVER () FROM product", "window"),
        ("SELEC district FROM", "not valid SQL"),
        ("SELECT district, count(*) FROM product GROUP BY district" + " " * 20000, "bytes"),
        ('{"dimensions": ["patient_id"], "aggregates": [{"fn": "count"}]}', "patient_id"),
        ("{not json", "JSON"),
        ("", "empty"),
    ],
)
def test_questions_the_rules_do_not_allow_are_refused_and_nothing_is_spent(
    space: LocalSpace, plain: str, question: str, reason: str
) -> None:
    before = spent(space, plain)
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, plain, question)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert reason.lower() in (caught.value.details() or "").lower()
    assert "Traceback" not in (caught.value.details() or "")
    assert spent(space, plain) == before


def test_the_provider_refuses_what_a_consumer_connector_would_not_send(
    space: LocalSpace, plain: str
) -> None:
    # Straight to the provider's ComputeService, as a modified consumer connector would call.
    node = space.nodes["lab"]
    channel = node._member_channel("health")
    stub = compute_pb2_grpc.ComputeServiceStub(channel)
    before = spent(space, plain)
    try:
        for question, reason in (
            ("SELECT count(*) FROM product" + " " * 70_000, "bytes"),
            ("SELECT count(*) FROM product; SELECT 1", "one statement"),
            ("[1]", "only SELECT"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Compute(
                    compute_pb2.ComputeRequest(agreement_id=plain, question=question), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in (caught.value.details() or "")
        with pytest.raises(grpc.RpcError) as caught:
            stub.ConfirmComputation(
                compute_pb2.ConfirmComputationRequest(
                    computation_id="cp-" + "0" * 32, receipt="{}"
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.ConfirmComputation(
                compute_pb2.ConfirmComputationRequest(computation_id="../cp-nope", receipt="{}"),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        channel.close()
    assert spent(space, plain) == before


def test_two_questions_differing_by_one_filter_cannot_reveal_one_person(
    space: LocalSpace, plain: str
) -> None:
    # Only one person in the data is aged 90+. The sum over everyone, then the sum over
    # everyone not aged 90+, would give that person's cost by subtraction.
    whole = json.loads(ask(space, plain, "SELECT sum(cost) FROM product").answer)
    assert whole["rows"] and whole["suppressed"] == 0
    before = spent(space, plain)
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, plain, "SELECT sum(cost) FROM product WHERE age_band <> '90+'")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "fewer than 5 rows" in (caught.value.details() or "")
    assert spent(space, plain) == before  # the refusal spends nothing
    # Nor does grouping by the band show the 90+ group on its own.
    grouped = json.loads(
        ask(space, plain, "SELECT age_band, sum(cost) FROM product GROUP BY age_band").answer
    )
    assert "90+" not in {row[0] for row in grouped["rows"]} and grouped["suppressed"] == 1


def test_copy_and_compute_stay_apart_as_the_offer_says(space: LocalSpace, plain: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(
            admin(space, "lab").Transfer(admin_pb2.TransferRequest(agreement_id=plain), timeout=30)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "copy_not_offered" in (caught.value.details() or "")
    copy = agree(space, "health", "lab", "admissions-copy")
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, copy, "SELECT district, count(*) FROM product GROUP BY district")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "compute_not_offered" in (caught.value.details() or "")
    assert spent(space, copy) == (0, 0)
    refused = [
        e for e in entries(space, "health", "compute.refused") if e["data"]["agreement"] == copy
    ]
    assert refused and "compute_not_offered" in refused[-1]["data"]["reason"]


def test_the_privacy_budget_holds_and_the_refusal_says_what_is_left(space: LocalSpace) -> None:
    agreement = agree(space, "health", "lab", "admissions-dp", approve=True)
    question = "SELECT district, count(*), avg(cost) FROM product GROUP BY district"
    for n in range(3):
        r = ask(space, agreement, question)
        receipt = verify_computation_receipt(r.receipt, space.nodes["health"]._signing_key_of)
        assert receipt.epsilon_spent == 1.0 and receipt.epsilon_left == 2.0 - n
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, agreement, question)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = caught.value.details() or ""
    assert "privacy_budget_exhausted" in details and "3 spent, 0 left" in details
    assert spent(space, agreement) == (3, 3_000_000)


def test_concurrent_questions_cannot_overspend(space: LocalSpace) -> None:
    agreement = agree(space, "health", "lab", "admissions-dp", approve=True)
    barrier = threading.Barrier(8)

    def one(_: int) -> str:
        barrier.wait()
        try:
            ask(space, agreement, "SELECT count(*) FROM product")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
            assert "privacy_budget_exhausted" in (exc.details() or "")
            return "refused"
        return "answered"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(one, range(8)))
    assert outcomes.count("answered") == 3 and outcomes.count("refused") == 5
    assert spent(space, agreement) == (3, 3_000_000)


def test_a_missing_source_spends_nothing(space: LocalSpace) -> None:
    agreement = agree(space, "health", "lab", "admissions-dp", approve=True)
    path = space.data / "admissions.csv"  # type: ignore[attr-defined]
    moved = path.with_suffix(".away")
    path.rename(moved)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            ask(space, agreement, "SELECT count(*) FROM product")
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "missing" in (caught.value.details() or "")
    finally:
        moved.rename(path)
    assert spent(space, agreement) == (0, 0)


def test_a_revoked_agreement_answers_nothing(space: LocalSpace) -> None:
    agreement = agree(space, "health", "lab", "admissions-dp", approve=True)
    question = "SELECT count(*) FROM product"
    # Straight to the provider, as a consumer connector that ignored the revocation would.
    channel = space.nodes["lab"]._member_channel("health")
    stub = compute_pb2_grpc.ComputeServiceStub(channel)
    try:
        # Answered: the provider now remembers this agreement's verification; the
        # revocation must still hold for the very next question.
        stub.Compute(compute_pb2.ComputeRequest(agreement_id=agreement, question=question))
        admin(space, "health").RevokeAgreement(
            admin_pb2.RevokeAgreementRequest(agreement_id=agreement, reason="study ended"),
            timeout=10,
        )
        before = spent(space, agreement)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Compute(
                compute_pb2.ComputeRequest(agreement_id=agreement, question=question), timeout=30
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "agreement_revoked" in (caught.value.details() or "")
        assert spent(space, agreement) == before
    finally:
        channel.close()


def _health_row(space: LocalSpace, agreement: str, signed: str | None = None) -> str:
    """The provider's stored agreement text, replaced by ``signed`` if given, behind the
    connector's back (as someone with access to its database file would)."""
    db = space.nodes["health"].db
    assert db is not None and db.engine.url.database is not None
    with contextlib.closing(sqlite3.connect(db.engine.url.database)) as conn, conn:
        [(text,)] = conn.execute(
            "SELECT agreement FROM negotiation WHERE agreement_id = ?", (agreement,)
        ).fetchall()
        if signed is not None:
            conn.execute(
                "UPDATE negotiation SET agreement = ? WHERE agreement_id = ?", (signed, agreement)
            )
    return str(text)


def test_an_agreement_edited_after_it_was_verified_is_refused_for_the_next_question(
    space: LocalSpace,
) -> None:
    agreement = agree(space, "health", "lab", "admissions-dp", approve=True)
    question = "SELECT count(*) FROM product"
    ask(space, agreement, question)  # verified, and remembered
    signed = _health_row(space, agreement)
    _health_row(space, agreement, altered(signed, product="admissions-copy"))
    try:
        before = spent(space, agreement)
        with pytest.raises(grpc.RpcError) as caught:
            ask(space, agreement, question)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"the stored agreement {agreement} does not verify" in (caught.value.details() or "")
        assert spent(space, agreement) == before
    finally:
        _health_row(space, agreement, signed)
    ask(space, agreement, question)  # the text that was signed answers again


def test_a_changed_source_is_read_again_and_named_in_the_receipt(
    space: LocalSpace, plain: str
) -> None:
    """The provider keeps a loaded table while the file is the same; a changed file is
    loaded again, and the receipt names the state the answer was computed on."""
    path = space.data / "admissions.csv"  # type: ignore[attr-defined]
    original = path.read_bytes()
    question = "SELECT count(*) FROM product WHERE year = 2026"

    def count_and_state() -> tuple[int, str]:
        r = ask(space, plain, question)
        receipt = verify_computation_receipt(r.receipt, space.nodes["health"]._signing_key_of)
        return json.loads(r.answer)["rows"][0][0], receipt.source_state

    first = count_and_state()
    assert first == (len(rows()), f"sha256:{hashlib.sha256(original).hexdigest()}")
    assert count_and_state() == first  # the same file: the same state
    extra = [{**row, "patient_id": f"Q{n:05d}"} for n, row in enumerate(rows()[:5])]
    try:
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerows(extra)
        changed = count_and_state()
        assert changed == (
            len(rows()) + 5,
            f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}",
        )
    finally:
        path.write_bytes(original)
    assert count_and_state() == first


def test_a_countersignature_owed_when_the_consumer_stops_is_sent_after_its_restart(
    space: LocalSpace, plain: str
) -> None:
    from connector.compute.store import ANSWERED
    from connector.node import Node

    lab = space.nodes["lab"]
    assert lab.asker is not None
    # As if the consumer died right after answering: its record and log entry are
    # committed, the confirmation not sent yet.
    lab.asker.stop()
    r = ask(space, plain, "SELECT district, count(*) FROM product GROUP BY district")
    for who in ("lab", "health"):
        db = space.nodes[who].db
        assert db is not None
        assert ComputationStore(db).get(r.computation_id).state == ANSWERED
    lab.stop(grace=0)
    restarted = Node(space.configs["lab"])
    restarted.start()
    space.nodes["lab"] = restarted
    assert restarted.wait_ready(10)
    for who in ("lab", "health"):
        assert confirmed(space, who, r.computation_id), who
    logged = [
        e["data"]["receipt"]
        for e in entries(space, "health", "compute.receipt")
        if e["data"]["computation"] == r.computation_id
    ]
    assert logged == [r.receipt]


def _lab_row(space: LocalSpace, agreement_id: str, **set_: str) -> str:
    """The consumer's stored agreement text; columns set to ``set_`` behind the
    connector's back (as someone with access to its database file would)."""
    db = space.nodes["lab"].db
    assert db is not None and db.engine.url.database is not None
    with contextlib.closing(sqlite3.connect(db.engine.url.database)) as conn, conn:
        [(text,)] = conn.execute(
            "SELECT agreement FROM negotiation WHERE agreement_id = ?", (agreement_id,)
        ).fetchall()
        for column, value in set_.items():
            assert column in ("agreement", "revocation")
            conn.execute(
                f"UPDATE negotiation SET {column} = ? WHERE agreement_id = ?",  # noqa: S608
                (value, agreement_id),
            )
    return str(text)


def test_the_consumer_keeps_its_parsed_agreement_but_never_a_revocation_or_an_edit(
    space: LocalSpace,
) -> None:
    """The consumer parses its stored agreement once per exact text: the row is read for
    every question, so a revocation recorded after the parse stops the next question,
    and a stored text changed in any byte is parsed anew, never answered from the copy."""
    agreement = agree(space, "health", "lab", "admissions-dp", approve=True)
    receiver = space.nodes["lab"].receiver
    assert receiver is not None
    question = "SELECT count(*) FROM product"
    ask(space, agreement, question)  # parsed, and kept
    first = receiver.agreement_of(agreement)
    assert receiver.agreement_of(agreement) is first  # the kept parse of the same text
    signed = _lab_row(space, agreement)
    # Another text under the same id is parsed anew: one naming another product, in
    # canonical form, reads as such; one not in canonical form is refused.
    doc = json.loads(signed)
    payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
    encoded = base64.urlsafe_b64encode(canonical_json({**payload, "product": "admissions-copy"}))
    other = json.dumps({**doc, "payload": encoded.rstrip(b"=").decode()}, separators=(",", ":"))
    try:
        _lab_row(space, agreement, agreement=other)
        assert receiver.agreement_of(agreement).product == "admissions-copy"
        _lab_row(space, agreement, agreement=altered(signed, product="admissions-copy"))
        with pytest.raises(VerificationError, match="not in canonical"):
            receiver.agreement_of(agreement)
    finally:
        _lab_row(space, agreement, agreement=signed)
    assert receiver.agreement_of(agreement).product == "admissions-dp"
    # Revoked after the parse was kept: refused at once, by the consumer, nothing asked.
    before = spent(space, agreement)
    _lab_row(space, agreement, revocation="{}")
    with pytest.raises(grpc.RpcError) as caught:
        ask(space, agreement, question)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"agreement {agreement} was revoked by the provider" in (caught.value.details() or "")
    assert spent(space, agreement) == before
