"""Authorised operation of public data and personal data under consent, between real
connectors: grants carried in membership tokens, consents signed by the individual,
withdrawal stopping transfers and deleting the recipient's copy, the disclosure report."""

from __future__ import annotations

import csv
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from connector._proto.tds.v1 import (
    admin_pb2,
    registry_pb2,
    registry_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)
from connector.consent.register import verify_consent
from connector.demo.space import LocalSpace
from connector.errors import InvalidRequest, PermissionDenied
from connector.identity.names import Role
from connector.negotiation.agreement import parse_agreement
from connector.registry.grants import FIVE_YEARS_NS, verify_grant
from connector.rpc.channel import open_channel
from tests.integration.test_compute import confirmed
from tests.support.exchange import admin, agree, entries, logged_soon, offer, publish

NOW_NS = time.time_ns()
YEAR_NS = 365 * 86_400 * 10**9


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("city")
    data = root / "data"
    data.mkdir()
    with (data / "flows.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "road", "speed", "plate"])
        w.writerows([f"08:{i:02d}", f"Road-{i % 3}", 30 + i, f"沪A{i:05d}"] for i in range(40))
    with (data / "records.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "diagnosis", "medication"])
        w.writerows([f"2026-0{i}-01", f"dx-{i}", f"med-{i}"] for i in range(1, 9))
    (data / "big.bin").write_bytes(b"x" * (48 * 1024 * 1024))
    parts = [
        ("gov", Role.GOVERNMENT),
        ("opa", Role.ENTERPRISE),
        ("other", Role.ENTERPRISE),
        ("alice", Role.INDIVIDUAL),
        ("hosp", Role.ENTERPRISE),
    ]
    with LocalSpace.create(root, parts) as sp:
        sp.start_registry()
        for who, _ in parts:
            sp.start_connector(who)
        publish(
            sp,
            "gov",
            {
                "id": "flows",
                "title": "Traffic flows",
                "grade": "important",
                "tags": ["traffic"],
                "source": {"kind": "table", "path": "flows.csv", "format": "csv"},
                "fields": ["time", "road", "speed", "plate"],
                "offers": [
                    offer(
                        purposes=["traffic-analytics", "advertising"],
                        permitted_fields=["time", "road", "speed", "plate"],
                        masks={"plate": "hash"},
                    )
                ],
            },
            data,
        )
        admin(sp, "gov").RegisterProduct(
            admin_pb2.RegisterOwnProductRequest(product_id="flows", public=True), timeout=10
        )
        for pid, source in (
            ("records", {"kind": "table", "path": "records.csv", "format": "csv"}),
            ("scans", {"kind": "file", "path": "big.bin"}),
        ):
            publish(
                sp,
                "alice",
                {
                    "id": pid,
                    "title": pid,
                    "grade": "general",
                    "personal": True,
                    "tags": ["health"],
                    "source": source,
                    **({"fields": ["date", "diagnosis", "medication"]} if pid == "records" else {}),
                    "offers": [offer(purposes=["treatment", "research"])],
                },
                data,
            )
        sp.data = data  # type: ignore[attr-defined]
        yield sp


def _try_agree(space: LocalSpace, provider: str, consumer: str, product: str, purpose: str) -> str:
    try:
        return agree(space, provider, consumer, product, purpose=purpose, approve=True)
    except AssertionError as exc:
        return f"refused: {exc}"


def _consent(space: LocalSpace, recipient: str = "hosp", **kw: object) -> admin_pb2.ConsentInfo:
    request = admin_pb2.GrantConsentRequest(
        recipient=recipient,
        purposes=kw.get("purposes", ["treatment"]),  # type: ignore[arg-type]
        method="review by the treating physician",
        categories=kw.get("categories", ["health"]),  # type: ignore[arg-type]
        expires_ns=int(kw.get("expires_ns", NOW_NS + YEAR_NS)),  # type: ignore[call-overload]
    )
    return admin(space, "alice").GrantConsent(request, timeout=10)


# -- authorised operation of public data ----------------------------------------------


def test_grants_are_validated_and_admin_only(space: LocalSpace) -> None:
    with pytest.raises(InvalidRequest, match="at most 5 years"):
        space.grant(
            "opa",
            scope=["traffic"],
            purposes=["traffic-analytics"],
            start_ns=NOW_NS,
            end_ns=NOW_NS + FIVE_YEARS_NS + 1,
            body="City Data Bureau",
        )
    with pytest.raises(InvalidRequest, match="not by alice"):
        space.grant(
            "alice",
            scope=["traffic"],
            purposes=["x"],
            start_ns=NOW_NS,
            end_ns=NOW_NS + YEAR_NS,
            body="City Data Bureau",
        )
    # A member cannot grant itself anything.
    node = space.nodes["opa"]
    assert node.registry is not None
    stub = registry_pb2_grpc.RegistryServiceStub(
        open_channel(
            space.registry_address,
            node._tls.identity,  # type: ignore[union-attr]
            space=space.space,
            peer=space.manifest.operator_id,
            token=node.registry.token,
        )
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.GrantOperation(
            registry_pb2.GrantOperationRequest(
                participant_id="opa",
                scope=["traffic"],
                purposes=["x"],
                start_ns=NOW_NS,
                end_ns=NOW_NS + YEAR_NS,
                body="self-granted",
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nor can an enrolment smuggle grants in as an attribute.
    with pytest.raises(InvalidRequest, match="tds registry grant"):
        space.enrol(
            "other",
            space.nodes["other"].advertised_address,
            {"tds_grants": json.dumps([{"id": "fake", "scope": ["traffic"]}])},
            replace=True,
        )


def test_public_data_only_to_an_operator_within_scope_and_purpose(space: LocalSpace) -> None:
    refused = _try_agree(space, "gov", "other", "flows", "traffic-analytics")
    assert "no_operation_grant" in refused
    g = space.grant(
        "opa",
        scope=["traffic"],
        purposes=["traffic-analytics"],
        start_ns=NOW_NS - 86_400 * 10**9,
        end_ns=NOW_NS + 3 * YEAR_NS,
        body="City Data Bureau",
    )
    grant = verify_grant(g.signed, "operator", space.nodes["gov"]._signing_key_of)
    assert grant.scope == ("traffic",) and grant.participant == "opa"
    space.refresh()  # opa's next token carries the grant
    assert "purpose_outside_grant" in _try_agree(space, "gov", "opa", "flows", "advertising")
    agreement_id = agree(space, "gov", "opa", "flows", purpose="traffic-analytics", approve=True)
    info = admin(space, "opa").ListNegotiations(admin_pb2.ListNegotiationsRequest(), timeout=10)
    signed = next(n.agreement for n in info.negotiations if n.agreement_id == agreement_id)
    assert parse_agreement(signed).obligations["operation_grant"] == g.id
    t = space.nodes["opa"].receiver.run(agreement_id)  # type: ignore[union-attr]
    text = Path(t.path).read_text()
    assert t.state == "completed" and "沪A" not in text

    report = json.loads(
        admin(space, "gov")
        .DisclosureReport(
            admin_pb2.DisclosureReportRequest(period=dt.datetime.now(dt.UTC).year), timeout=10
        )
        .report_json
    )
    (op,) = report["operators"]
    assert op["operator"] == "opa" and op["transfers"] == 1 and op["bytes"] == t.size
    assert op["grants"][0]["id"] == g.id and op["grants"][0]["body"] == "City Data Bureau"
    (product,) = op["products"]
    assert product["product"] == "flows" and product["registration_code"]
    (index,) = product["receipt_log_indices"]
    gov_log = space.nodes["gov"].log
    assert gov_log is not None
    ((_, body),) = gov_log.entries(index, index + 1)
    assert json.loads(body)["kind"] == "transfer.receipt"
    last_year = json.loads(
        admin(space, "gov")
        .DisclosureReport(admin_pb2.DisclosureReportRequest(period=2001), timeout=10)
        .report_json
    )
    assert last_year["operators"] == []

    # Revoking the grant: the operator's next token lacks it and the next transfer is refused.
    space.revoke_grant(g.id, "scope ended")
    space.refresh()
    with pytest.raises(PermissionDenied) as denied:
        space.nodes["opa"].receiver.run(agreement_id)  # type: ignore[union-attr]
    assert "no_operation_grant" in str(denied.value)
    listed = space.nodes["gov"].registry.list_grants("opa", include_revoked=True)  # type: ignore[union-attr]
    assert [(x.id, x.revoked, x.revoked_reason) for x in listed] == [(g.id, True, "scope ended")]
    logged = entries(space, "operator", "registry.grant_revoked")
    assert [e["data"]["grant"] for e in logged] == [g.id]


def test_the_disclosure_report_counts_answers_given_from_public_data(space: LocalSpace) -> None:
    """Compute-to-data from public data is disclosed like a copy: per operator and product,
    the answers and the ε they spent, each with its receipt's index in the provider's log."""
    rules = {
        "k": 5,
        "dimensions": {"road": {"type": "text"}},
        "measures": {"speed": {"aggregates": ["count", "avg"], "lower": 0, "upper": 200}},
        "privacy": {"epsilon_per_query": 1.0, "epsilon_budget": 4.0, "delta": 1e-6},
    }
    publish(
        space,
        "gov",
        {
            "id": "flow-stats",
            "title": "Traffic flow statistics",
            "grade": "general",
            "tags": ["traffic"],
            "source": {"kind": "table", "path": "flows.csv", "format": "csv"},
            "fields": ["time", "road", "speed", "plate"],
            "offers": [offer(purposes=["traffic-analytics"], delivery=["compute"], compute=rules)],
        },
        space.data,  # type: ignore[attr-defined]
    )
    admin(space, "gov").RegisterProduct(
        admin_pb2.RegisterOwnProductRequest(product_id="flow-stats", public=True), timeout=10
    )
    space.grant(
        "opa",
        scope=["traffic"],
        purposes=["traffic-analytics"],
        start_ns=NOW_NS - 86_400 * 10**9,
        end_ns=NOW_NS + YEAR_NS,
        body="City Data Bureau",
    )
    space.refresh()
    agreement_id = agree(space, "gov", "opa", "flow-stats", purpose="traffic-analytics")
    asker = space.nodes["opa"].asker
    assert asker is not None
    for _ in range(2):
        r = asker.ask(agreement_id, "SELECT road, count(*) FROM product GROUP BY road")
        # The countersignature reaches the provider after the answer (in the background).
        assert confirmed(space, "gov", r.computation_id)
    report = json.loads(
        admin(space, "gov")
        .DisclosureReport(
            admin_pb2.DisclosureReportRequest(period=dt.datetime.now(dt.UTC).year), timeout=10
        )
        .report_json
    )
    (op,) = [o for o in report["operators"] if o["operator"] == "opa"]
    (stats,) = [p for p in op["products"] if p["product"] == "flow-stats"]
    assert (stats["computations"], stats["epsilon_spent"], stats["transfers"]) == (2, 2.0, 0)
    assert stats["metered_all_time"]["computations"] == 2
    assert op["computations"] >= 2 and report["computations"] >= 2
    gov_log = space.nodes["gov"].log
    assert gov_log is not None
    for index in stats["receipt_log_indices"]:
        ((_, body),) = gov_log.entries(index, index + 1)
        assert json.loads(body)["kind"] == "compute.receipt"


# -- personal data under consent --------------------------------------------------------


def test_consent_is_given_by_individuals_only_and_validated(space: LocalSpace) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin(space, "hosp").GrantConsent(
            admin_pb2.GrantConsentRequest(
                recipient="gov",
                purposes=["x"],
                method="m",
                categories=["c"],
                expires_ns=NOW_NS + YEAR_NS,
            ),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for bad in (
        {"expires_ns": NOW_NS - 1},
        {"purposes": []},
        {"categories": ["Not A Label"]},
    ):
        with pytest.raises(grpc.RpcError) as err:
            _consent(space, **bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    listed = admin(space, "alice").ListConsents(admin_pb2.ListConsentsRequest(), timeout=10)
    assert list(listed.consents) == []  # nothing was recorded by the refusals


def test_personal_data_flows_only_under_consent_and_withdrawal_deletes(
    space: LocalSpace,
) -> None:
    assert "no_consent" in _try_agree(space, "alice", "hosp", "records", "treatment")
    # A consent to someone else, or for another purpose, does not help.
    _consent(space, recipient="other")
    assert "no_consent" in _try_agree(space, "alice", "hosp", "records", "treatment")
    c = _consent(space)
    consent = verify_consent(c.signed, space.nodes["hosp"]._signing_key_of)
    assert consent.subject == "alice" and consent.recipient == "hosp"
    assert "consent_purpose_mismatch" in _try_agree(space, "alice", "hosp", "records", "research")
    agreement_id = agree(space, "alice", "hosp", "records", purpose="treatment")
    hosp = space.nodes["hosp"]
    assert hosp.receiver is not None and hosp.sweeper is not None
    t = hosp.receiver.run(agreement_id)
    assert t.state == "completed" and "dx-1" in Path(t.path).read_text()
    assert t.obligations["delete_on_consent_withdrawal"] is True

    withdrawn = admin(space, "alice").WithdrawConsent(
        admin_pb2.WithdrawConsentRequest(consent_id=c.id, reason="changed my mind"), timeout=10
    )
    assert withdrawn.withdrawn and list(withdrawn.revoked_agreements) == [agreement_id]
    with pytest.raises(PermissionDenied) as denied:
        hosp.receiver.run(agreement_id)
    assert "consent_withdrawn" in str(denied.value) or "agreement_revoked" in str(denied.value)
    # The signed revocation naming the consent sweeps the hospital's holdings as it
    # arrives (no sweep is run here).
    logged = logged_soon(space, "hosp", "holding.deleted", transfer=t.id)
    assert len(logged) == 1 and logged[0]["data"]["reason"] == "consent_withdrawn"
    assert hosp.sweeper.sweep() == []  # waits for the one running; nothing is deleted twice
    assert not Path(t.path).exists()
    alice_log = [e["kind"] for e in entries(space, "alice") if e["kind"].startswith("consent.")]
    assert alice_log == ["consent.granted", "consent.granted", "consent.withdrawn"]
    # A new contract is refused as well.
    assert "consent_withdrawn" in _try_agree(space, "alice", "hosp", "records", "treatment")
    with pytest.raises(grpc.RpcError) as err:
        admin(space, "alice").WithdrawConsent(
            admin_pb2.WithdrawConsentRequest(consent_id=c.id), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_withdrawal_stops_a_running_transfer_within_a_second(space: LocalSpace) -> None:
    c = _consent(space, categories=["scans"])
    agreement_id = agree(space, "alice", "hosp", "scans", purpose="treatment")
    node = space.nodes["hosp"]
    assert node.registry is not None
    stub = transfer_pb2_grpc.TransferServiceStub(
        open_channel(
            space.nodes["alice"].advertised_address,
            node._tls.identity,  # type: ignore[union-attr]
            space=space.space,
            peer="alice",
            token=node.registry.token,
        )
    )
    m = stub.StartTransfer(transfer_pb2.StartTransferRequest(agreement_id=agreement_id), timeout=10)
    withdrawn_at: list[float] = []

    def withdraw() -> None:
        time.sleep(0.5)
        withdrawn_at.append(time.monotonic())
        admin(space, "alice").WithdrawConsent(
            admin_pb2.WithdrawConsentRequest(consent_id=c.id), timeout=10
        )

    threading.Thread(target=withdraw).start()
    received = 0
    with pytest.raises(grpc.RpcError) as err:
        for chunk in stub.Pull(transfer_pb2.PullRequest(transfer_id=m.transfer_id), timeout=60):
            received += len(chunk.data)
            time.sleep(0.05)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert time.monotonic() - withdrawn_at[0] < 1.0
    assert 0 < received < m.size
    stopped = [
        e
        for e in entries(space, "alice", "transfer.stopped")
        if e["data"]["transfer"] == m.transfer_id
    ]
    assert len(stopped) == 1
