"""The DSP 2025-1 HTTPS binding against connectors started as users run them: a client
written from the specification's text, every answer validated against the shared schemas.
Each test is named after the specification section it checks (the anchors of the HTTPS
bindings in eclipse-dataspace-protocol-base/DataspaceProtocol: ``catalog-request-post``,
``negotiations-request-post``, ``exposure-of-dataspace-protocol-versions``…)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from connector._proto.tds.v1 import admin_pb2, catalog_pb2, catalog_pb2_grpc, negotiation_pb2
from connector.config import DspConfig
from connector.demo.space import LocalSpace
from connector.dsp import DspBinding, tls_context
from connector.errors import ConfigError, NotFound, Unavailable
from connector.identity.names import Role, participant_dns_name, participant_uri
from connector.identity.pki import init_space
from connector.negotiation.agreement import verify_agreement
from connector.negotiation.dsp import SIGNED_AGREEMENT
from connector.negotiation.negotiator import Received
from connector.negotiation.states import State
from connector.rpc.auth import Caller
from tests.integration.test_authentication import ca_pem, own_token, pem, raw_channel
from tests.support.dsp_client import Answer, DspClient
from tests.support.exchange import FAR, admin, entries, publish
from tests.unit.negotiation.test_dsp import VECTORS, validate

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")

OPEN = ("bus-stops", "parking", "traffic")
RESTRICTED = "tenders"
IMPORTANT = "water-mains"  # grade important: the contract policy asks for approval
BODY_LIMIT = 4096


def product(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "title": pid,
        "grade": "general",
        "tags": ["mobility"],
        "source": {"kind": "file", "path": "data.bin"},
        "offers": [
            {"id": "o1", "purposes": ["research"], "valid_from_ns": 0, "valid_until_ns": FAR}
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("dsp")
    (root / "data.bin").write_bytes(b"x" * 100)
    with LocalSpace.create(
        root,
        [
            ("gov", Role.GOVERNMENT),
            ("a", Role.ENTERPRISE),
            ("b", Role.ENTERPRISE),
            ("r", Role.ENTERPRISE),
        ],
    ) as sp:
        sp.start_registry()
        sp.start_connector(
            "gov",
            dsp=DspConfig(listen="127.0.0.1:0", max_body_bytes=BODY_LIMIT, page_size=2),
        )
        # a and b are tds consumers with bindings of their own: the provider's callbacks
        # go there.
        for member in ("a", "b"):
            sp.start_connector(member, dsp=DspConfig(listen="127.0.0.1:0"))
        sp.start_connector("r")
        for pid in OPEN:
            publish(sp, "gov", product(pid), root)
        publish(sp, "gov", product(RESTRICTED, access={"allow_list": ["b"]}), root)
        publish(
            sp, "gov", product(IMPORTANT, grade="important", access={"allow_list": ["b"]}), root
        )
        yield sp


def client(
    space: LocalSpace,
    member: str = "a",
    *,
    certificate: str = "tls",
    token: str | None = "",
) -> DspClient:
    """gov's binding as ``member`` calls it: its ``certificate`` ("tls", "admin" or "" for
    none) and its own token (``token=""``), another value, or none (``None``)."""
    binding = space.nodes["gov"].dsp
    assert binding is not None

    def authorization() -> str | None:
        return f"Bearer {own_token(space, member)}" if token == "" else token

    return DspClient(
        base=binding.base_url,
        server_name=participant_dns_name("city", "gov"),
        ca_pem=ca_pem(space),
        cert_pem=pem(space, member, f"{certificate}_cert") if certificate else None,
        key_pem=pem(space, member, f"{certificate}_key") if certificate else None,
        authorization=authorization,
    )


def conforms(answer: Answer, schema: str) -> dict[str, Any]:
    validate(answer.body, schema)
    return dict(answer.body)


def refused(answer: Answer, status: int, kind: str, fragment: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    schema = {
        "CatalogError": "catalog/catalog-error-schema.json",
        "ContractNegotiationError": "negotiation/contract-negotiation-error-schema.json",
    }[kind]
    body = conforms(answer, schema)
    assert body["@type"] == kind
    assert fragment in " ".join(body["reason"]), body["reason"]


def catalog_request() -> dict[str, Any]:
    return json.loads((VECTORS / "catalog/example/catalog-request-message.json").read_text())


def contract_request(consumer_pid: str, *, purpose: str = "research", pid: str = "traffic") -> dict:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": consumer_pid,
        "offer": {
            "@type": "Offer",
            "@id": f"urn:tds:offer:{pid}/o1",
            "target": f"urn:tds:dataset:{pid}",
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": purpose}
                    ],
                }
            ],
        },
        # Every member of a LocalSpace is registered on 127.0.0.1.
        "callbackAddress": "https://127.0.0.1:8443/callback",
    }


def termination(provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractNegotiationTerminationMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "code": "consumer-cancelled",
        "reason": ["no longer needed"],
    }


def provider_negotiations(space: LocalSpace) -> list[Any]:
    return list(
        admin(space, "gov")
        .ListNegotiations(admin_pb2.ListNegotiationsRequest(), timeout=10)
        .negotiations
    )


# -- common: exposure of versions -------------------------------------------------------


def test_exposure_of_versions_https_binding_needs_no_identity(space: LocalSpace) -> None:
    answer = client(space, certificate="", token=None).call("GET", "/.well-known/dspace-version")
    assert answer.status == 200
    body = conforms(answer, "common/protocol-version-schema.json")
    (version,) = body["protocolVersions"]
    assert (version["version"], version["binding"], version["path"]) == ("2025-1", "HTTPS", "/")
    assert version["auth"]["protocol"] == "tds-mtls-membership"


# -- catalog ----------------------------------------------------------------------------


def test_catalog_request_post_is_filtered_as_list_products(space: LocalSpace) -> None:
    for member in ("a", "b"):
        seen: list[str] = []
        url = "/catalog/request"
        while url:
            answer = client(space, member).call("POST", url, catalog_request())
            assert answer.status == 200, answer.body
            body = conforms(answer, "catalog/catalog-schema.json")
            assert body["participantId"] == participant_uri("city", "gov")
            seen += [d["@id"].removeprefix("urn:tds:dataset:") for d in body.get("dataset", [])]
            url = answer.links().get("next", "")
        grpc_view = catalog_pb2_grpc.CatalogServiceStub(
            raw_channel(
                space,
                "gov",
                pem(space, member, "tls_key"),
                pem(space, member, "tls_cert"),
                own_token(space, member),
            )
        ).ListProducts(catalog_pb2.ListProductsRequest(), timeout=10)
        assert seen == sorted(p.id for p in grpc_view.products)
        assert (RESTRICTED in seen) == (member == "b")


def test_catalog_pagination_next_links_bound_to_the_caller(space: LocalSpace) -> None:
    # page_size 2 over bus-stops, parking | tenders, traffic | water-mains: a sees three,
    # on pages cut where the catalog's own paging cuts them (one decision per page).
    pages: list[list[str]] = []
    answer = client(space).call("POST", "/catalog/request", catalog_request())
    while True:
        assert answer.status == 200, answer.body
        conforms(answer, "catalog/catalog-schema.json")
        pages.append([d["@id"] for d in answer.body.get("dataset", [])])
        assert "previous" not in answer.links()  # the catalog's tokens only go forward
        following = answer.links().get("next")
        if not following:
            break
        answer = client(space).call("POST", following, catalog_request())
    assert pages[0] == ["urn:tds:dataset:bus-stops", "urn:tds:dataset:parking"]
    assert [d for page in pages for d in page] == [
        "urn:tds:dataset:bus-stops",
        "urn:tds:dataset:parking",
        "urn:tds:dataset:traffic",
    ]
    # A's next link is a's: b cannot follow it, and a made-up token is refused.
    first = client(space).call("POST", "/catalog/request", catalog_request())
    refused(
        client(space, "b").call("POST", first.links()["next"], catalog_request()),
        400,
        "CatalogError",
        "token",
    )
    forged = client(space).call(
        "POST", "/catalog/request?continuationToken=not-a-token", catalog_request()
    )
    refused(forged, 400, "CatalogError", "token")


def test_catalog_datasets_get_hidden_looks_missing(space: LocalSpace) -> None:
    shown = client(space, "b").call("GET", f"/catalog/datasets/urn:tds:dataset:{RESTRICTED}")
    assert shown.status == 200
    assert conforms(shown, "catalog/dataset-schema.json")["@id"] == f"urn:tds:dataset:{RESTRICTED}"
    hidden = client(space, "a").call("GET", f"/catalog/datasets/urn:tds:dataset:{RESTRICTED}")
    missing = client(space, "a").call("GET", "/catalog/datasets/urn:tds:dataset:nothing")
    refused(hidden, 404, "CatalogError", "not found")
    refused(missing, 404, "CatalogError", "not found")
    assert hidden.body["reason"][0].replace(RESTRICTED, "X") == missing.body["reason"][0].replace(
        "nothing", "X"
    )


def test_catalog_request_post_unsupported_filter_is_400(space: LocalSpace) -> None:
    message = {**catalog_request(), "filter": [{"title": "x"}]}
    refused(client(space).call("POST", "/catalog/request", message), 400, "CatalogError", "filter")


# -- contract negotiation, provider side ------------------------------------------------


def test_negotiations_request_post_runs_on_the_grpc_state_machine(space: LocalSpace) -> None:
    before = {n.pid for n in provider_negotiations(space)}
    answer = client(space).call("POST", "/negotiations/request", contract_request("urn:uuid:c-1"))
    assert answer.status == 201, answer.body
    body = conforms(answer, "negotiation/contract-negotiation-schema.json")
    assert body["consumerPid"] == "urn:uuid:c-1"
    assert body["state"] == "AGREED"  # the embedded policy agrees at once
    pid = body["providerPid"].removeprefix("urn:tds:process:")
    # The same record the gRPC admin API lists, with its agreement and audit entries.
    (new,) = [n for n in provider_negotiations(space) if n.pid not in before]
    assert (new.pid, new.state, new.counterparty) == (pid, "AGREED", "a")
    assert new.agreement_id
    moves = [e for e in entries(space, "gov", "negotiation.transition") if e["data"]["pid"] == pid]
    assert [m["data"]["to"] for m in moves] == ["REQUESTED", "AGREED"]
    # A repeated message is the same answer, and nothing changes.
    again = client(space).call("POST", "/negotiations/request", contract_request("urn:uuid:c-1"))
    assert (again.status, again.body) == (201, body)
    assert len(provider_negotiations(space)) == len(before) + 1
    # 8.2.1: the provider's view of it.
    shown = client(space).call("GET", f"/negotiations/{body['providerPid']}")
    assert conforms(shown, "negotiation/contract-negotiation-schema.json") == body


def test_negotiations_providerpid_termination_post_and_another_participants_process(
    space: LocalSpace,
) -> None:
    started = client(space).call("POST", "/negotiations/request", contract_request("urn:uuid:c-2"))
    provider_pid = started.body["providerPid"]
    # b names a's process: as missing as one that does not exist, and nothing changes.
    stranger = client(space, "b").call(
        "POST",
        f"/negotiations/{provider_pid}/termination",
        termination(provider_pid, "urn:uuid:c-2"),
    )
    refused(stranger, 404, "ContractNegotiationError", "no such negotiation")
    refused(
        client(space, "b").call("GET", f"/negotiations/{provider_pid}"),
        404,
        "ContractNegotiationError",
        "no such negotiation",
    )
    assert client(space).call("GET", f"/negotiations/{provider_pid}").body["state"] == "AGREED"
    ended = client(space).call(
        "POST",
        f"/negotiations/{provider_pid}/termination",
        termination(provider_pid, "urn:uuid:c-2"),
    )
    assert ended.status == 200, ended.body
    assert client(space).call("GET", f"/negotiations/{provider_pid}").body["state"] == "TERMINATED"
    pid = provider_pid.removeprefix("urn:tds:process:")
    moves = [e for e in entries(space, "gov", "negotiation.transition") if e["data"]["pid"] == pid]
    assert moves[-1]["data"]["to"] == "TERMINATED"
    assert moves[-1]["data"]["reasons"] == ["no longer needed"]
    # Repeated: same answer, no second transition.
    again = client(space).call(
        "POST",
        f"/negotiations/{provider_pid}/termination",
        termination(provider_pid, "urn:uuid:c-2"),
    )
    assert again.status == 200
    after = [e for e in entries(space, "gov", "negotiation.transition") if e["data"]["pid"] == pid]
    assert len(after) == len(moves)


# -- bad input: the DSP error, the right status, nothing changed ------------------------


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[]", 400, "JSON object"),
        (json.dumps({"@type": "ContractRequestMessage"}).encode(), 400, "no @context"),
        (
            json.dumps(
                {"@context": ["https://evil.example/context.jsonld"], "@type": "X"}
            ).encode(),
            400,
            "not one this connector resolves",
        ),
        (
            json.dumps(
                {**contract_request("urn:uuid:c-x"), "@type": "ContractOfferMessage"}
            ).encode(),
            400,
            "this endpoint takes ContractRequestMessage",
        ),
        (
            json.dumps(
                {k: v for k, v in contract_request("urn:uuid:c-x").items() if k != "consumerPid"}
            ).encode(),
            400,
            "fails its DSP 2025-1 schema",
        ),
        (
            json.dumps(
                {**contract_request("urn:uuid:c-x"), "callbackAddress": "http://127.0.0.1/cb"}
            ).encode(),
            400,
            "https",
        ),
        (
            json.dumps(
                {**contract_request("urn:uuid:c-x"), "callbackAddress": "https://10.0.0.7/cb"}
            ).encode(),
            400,
            "on the host the operator registered for a (127.0.0.1)",
        ),
        (
            json.dumps(
                {
                    **contract_request("urn:uuid:c-x"),
                    "callbackAddress": "https://u:p@127.0.0.1/cb",
                }
            ).encode(),
            400,
            "credentials",
        ),
        (
            json.dumps({**contract_request("urn:uuid:c-x"), "providerPid": "urn:x"}).encode(),
            400,
            "fails 'oneOf'",
        ),
        (json.dumps(contract_request("urn:uuid:c-x", purpose="")).encode(), 400, "purpose"),
        (json.dumps(contract_request("urn:uuid:c-x", pid="nothing")).encode(), 404, "not found"),
        (b"{" + b" " * BODY_LIMIT + b"}", 413, "larger than this connector accepts"),
    ],
    ids=[
        "not-json",
        "not-object",
        "no-context",
        "remote-context",
        "unknown-type",
        "schema",
        "callback-not-https",
        "callback-not-registered-host",
        "callback-with-credentials",
        "initial-with-provider-pid",
        "no-purpose",
        "unknown-dataset",
        "too-large",
    ],
)
def test_contract_negotiation_error_bad_request_changes_nothing(
    space: LocalSpace, body: bytes, status: int, fragment: str
) -> None:
    before = len(provider_negotiations(space))
    logged = len(entries(space, "gov"))
    answer = client(space).call("POST", "/negotiations/request", raw=body)
    refused(answer, status, "ContractNegotiationError", fragment)
    assert len(provider_negotiations(space)) == before
    kinds = [e["kind"] for e in entries(space, "gov")[logged:]]
    assert "negotiation.transition" not in kinds


def test_object_not_found_wrong_process_id_is_404(space: LocalSpace) -> None:
    for pid in ("urn:tds:process:nope", "urn:uuid:c-1"):
        refused(
            client(space).call("GET", f"/negotiations/{pid}"),
            404,
            "ContractNegotiationError",
            "no such negotiation",
        )


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"certificate": ""}, "no client certificate"),
        ({"token": None}, "no membership token"),
        ({"token": "Basic abc"}, "Bearer"),
    ],
    ids=["no-certificate", "no-token", "not-bearer"],
)
def test_authorization_missing_identity_is_401(
    space: LocalSpace, kw: dict[str, Any], fragment: str
) -> None:
    before = len(provider_negotiations(space))
    for method, path, body, kind in (
        ("POST", "/catalog/request", catalog_request(), "CatalogError"),
        (
            "POST",
            "/negotiations/request",
            contract_request("urn:uuid:c-9"),
            "ContractNegotiationError",
        ),
    ):
        refused(client(space, **kw).call(method, path, body), 401, kind, fragment)
    assert len(provider_negotiations(space)) == before


def test_authorization_token_bound_to_another_certificate_is_401(space: LocalSpace) -> None:
    # a's certificate with b's token: the token's cnf binds it to b's certificate.
    stolen = f"Bearer {own_token(space, 'b')}"
    answer = client(space, "a", token=stolen).call("POST", "/catalog/request", catalog_request())
    refused(answer, 401, "CatalogError", "membership token is for 'b'")


@pytest.mark.parametrize(
    "path", ["/catalog/request", "/negotiations/request", "/negotiations/urn:uuid:c-1/termination"]
)
@pytest.mark.parametrize(
    "kw", [{"certificate": "", "token": None}, {"token": None}], ids=["anonymous", "no-token"]
)
def test_authorization_missing_identity_is_401_before_the_body_is_read(
    space: LocalSpace, path: str, kw: dict[str, Any]
) -> None:
    """TLS lets a client without a certificate connect (for the version document): it
    must not make the server buffer a body it will refuse. The request announces a body
    of the full size limit and sends none of it: the 401 comes at once. A server that read
    the body before authenticating would still be waiting for it."""
    caller = client(space, **kw)
    url = urllib.parse.urlsplit(caller.base)
    assert url.hostname and url.port
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_LIMIT}\r\n\r\n"
    )
    answer = b""
    with (
        socket.create_connection((url.hostname, url.port), timeout=5) as raw,
        caller.ssl_context().wrap_socket(raw, server_hostname=caller.server_name) as tls,
    ):
        tls.sendall(head.encode())
        try:
            while b"\r\n\r\n" not in answer and (chunk := tls.recv(4096)):
                answer += chunk
        except TimeoutError:
            pytest.fail("no answer in 5 s: the server waits for the body before authenticating")
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]


def test_state_transition_errors_terminated_stays_terminated(space: LocalSpace) -> None:
    refused_at_once = client(space, "b").call(
        "POST", "/negotiations/request", contract_request("urn:uuid:c-3", purpose="marketing")
    )
    # The contract policy refuses a purpose the offer does not name: TERMINATED at once.
    assert refused_at_once.status == 201, refused_at_once.body
    assert refused_at_once.body["state"] == "TERMINATED"
    pid = refused_at_once.body["providerPid"]
    again = client(space, "b").call(
        "POST", f"/negotiations/{pid}/termination", termination(pid, "urn:uuid:c-3")
    )
    assert again.status == 200
    assert client(space, "b").call("GET", f"/negotiations/{pid}").body["state"] == "TERMINATED"


def test_endpoints_not_built_are_404_not_stubs(space: LocalSpace) -> None:
    for path in (
        "/negotiations/offers",  # a provider-initiated offer: tds always starts with a request
    ):
        # /negotiations/offers is the path of GET /negotiations/{pid}: POST is 405 there.
        assert client(space).call("POST", path, {}).status in (404, 405)


def test_authorization_admin_certificate_is_refused(space: LocalSpace) -> None:
    # gov's own administrator certificate makes no member calls, over DSP as over gRPC.
    answer = client(space, "gov", certificate="admin", token=f"Bearer {own_token(space, 'gov')}")
    refused(
        answer.call("POST", "/catalog/request", catalog_request()),
        403,
        "CatalogError",
        "administrator certificates cannot make member calls",
    )


def test_mutual_tls_certificate_of_another_ca_fails_the_handshake(
    space: LocalSpace, tmp_path: Path
) -> None:
    # The same participant name and space, issued by a CA that is not the space's.
    forged = init_space(tmp_path / "other", "city", [("a", Role.ENTERPRISE)]).participant("a")
    stranger = client(space)
    stranger.cert_pem = (tmp_path / "other" / forged.tls_cert).read_bytes()
    stranger.key_pem = (tmp_path / "other" / forged.tls_key).read_bytes()
    before = len(provider_negotiations(space))
    with pytest.raises(aiohttp.ClientError):
        stranger.call("POST", "/negotiations/request", contract_request("urn:uuid:c-forged"))
    assert len(provider_negotiations(space)) == before


def test_negotiations_request_post_concurrent_repeats_make_one_negotiation(
    space: LocalSpace,
) -> None:
    before = len(provider_negotiations(space))
    message = contract_request("urn:uuid:c-concurrent")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _: client(space).call("POST", "/negotiations/request", message), range(6)
            )
        )
    assert {a.status for a in answers} == {201}, [a.body for a in answers]
    assert len({a.body["providerPid"] for a in answers}) == 1
    assert len(provider_negotiations(space)) == before + 1


def test_negotiations_request_post_waits_for_the_providers_approval(space: LocalSpace) -> None:
    answer = client(space, "b").call(
        "POST", "/negotiations/request", contract_request("urn:uuid:c-4", pid=IMPORTANT)
    )
    assert answer.status == 201, answer.body
    assert answer.body["state"] == "REQUESTED"
    pid = answer.body["providerPid"].removeprefix("urn:tds:process:")
    waiting = admin(space, "gov").ListNegotiations(
        admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=10
    )
    assert pid in [n.pid for n in waiting.negotiations]
    admin(space, "gov").RejectNegotiation(
        admin_pb2.NegotiationRef(pid=pid, reason="not now"), timeout=10
    )
    shown = client(space, "b").call("GET", f"/negotiations/{answer.body['providerPid']}")
    assert shown.body["state"] == "TERMINATED"


def test_binding_on_a_busy_port_is_a_config_error(space: LocalSpace) -> None:
    gov = space.nodes["gov"]
    assert gov.dsp is not None and gov.catalog is not None and gov.negotiator is not None
    cfg = space.configs["gov"]
    second = DspBinding(
        settings=DspConfig(listen=f"127.0.0.1:{gov.dsp.port}"),
        participant="gov",
        space="city",
        catalog=gov.catalog,
        negotiator=gov.negotiator,
        authenticator=gov.dsp.exchange.authenticator,
        tls=tls_context(cfg.pki.tls_cert, cfg.pki.tls_key, ca_pem(space)),
        registered_host=lambda _: "127.0.0.1",
    )
    with pytest.raises(ConfigError, match=f"dsp.listen 127.0.0.1:{gov.dsp.port}"):
        second.start()
    # The serving binding is untouched.
    assert client(space).call("POST", "/catalog/request", catalog_request()).status == 200


def test_negotiations_request_post_needs_the_consumers_own_binding(space: LocalSpace) -> None:
    # r serves no binding: the provider could not call it back, so nothing is sent.
    binding = space.nodes["gov"].dsp
    assert binding is not None
    before = len(provider_negotiations(space))
    ended = admin(space, "r").StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov",
            product_id="parking",
            offer_id="o1",
            purpose="research",
            wait_ms=20_000,
            dsp_url=binding.base_url,
        ),
        timeout=30,
    )
    assert ended.state == "TERMINATED"
    assert "serves no Dataspace Protocol binding" in " ".join(ended.reasons)
    assert len(provider_negotiations(space)) == before


def test_authorization_revoked_participant_is_refused(space: LocalSpace) -> None:
    # Last: r is revoked for good. Its token is still unexpired; the list refuses it.
    token = f"Bearer {own_token(space, 'r')}"
    assert (
        client(space, "r", token=token).call("POST", "/catalog/request", catalog_request()).status
        == 200
    )
    space.revoke("r", "test: revoked")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answer = client(space, "r", token=token).call("POST", "/catalog/request", catalog_request())
        if answer.status != 200:
            break
        time.sleep(0.2)
    refused(answer, 401, "CatalogError", "revoked")


# -- two tds connectors over the binding alone ------------------------------------------


def outbox_methods(space: LocalSpace, who: str, pid: str) -> list[str]:
    node = space.nodes[who]
    assert node.db is not None
    with node.db.transaction() as tx:
        rows = tx.all("SELECT method FROM outbox WHERE negotiation_pid = ? ORDER BY id", (pid,))
    return [r[0] for r in rows]


def dsp_negotiation(
    space: LocalSpace, product: str = "parking", *, consumer: str = "a", **kw: Any
) -> Any:
    binding = space.nodes["gov"].dsp
    assert binding is not None
    return admin(space, consumer).StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov",
            product_id=product,
            offer_id="o1",
            purpose=kw.get("purpose", "research"),
            wait_ms=kw.get("wait_ms", 20_000),
            dsp_url=kw.get("dsp_url", binding.base_url),
        ),
        timeout=30,
    )


def transitions(space: LocalSpace, who: str, pid: str) -> list[str]:
    return [
        m["data"]["to"]
        for m in entries(space, who, "negotiation.transition")
        if m["data"]["pid"] == pid
    ]


def test_negotiations_consumerpid_agreement_and_events_post_two_tds_connectors_finalize(
    space: LocalSpace,
) -> None:
    mine = dsp_negotiation(space)
    assert mine.state == "FINALIZED", mine
    (theirs,) = [n for n in provider_negotiations(space) if n.agreement_id == mine.agreement_id]
    assert (theirs.state, theirs.counterparty) == ("FINALIZED", "a")
    # The same dual-signed agreement on both sides, verifying against the directory keys.
    provider_copy = space.nodes["gov"].negotiator.get(theirs.pid).agreement  # type: ignore[union-attr]
    consumer_copy = space.nodes["a"].negotiator.get(mine.pid).agreement  # type: ignore[union-attr]
    assert provider_copy == consumer_copy and provider_copy
    verify_agreement(provider_copy, space.nodes["a"]._signing_key_of)
    # Every message went over DSP, through each side's outbox: none over gRPC.
    assert outbox_methods(space, "a", mine.pid) == ["dsp:RequestContract", "dsp:VerifyAgreement"]
    assert outbox_methods(space, "gov", theirs.pid) == ["dsp:SendAgreement", "dsp:Finalize"]
    # The same audit entries as a negotiation over gRPC.
    assert transitions(space, "gov", theirs.pid) == ["REQUESTED", "AGREED", "FINALIZED"]
    assert transitions(space, "a", mine.pid) == ["REQUESTED", "VERIFIED", "FINALIZED"]
    grpc = admin(space, "a").StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov", product_id="parking", offer_id="o1", purpose="research", wait_ms=20_000
        ),
        timeout=30,
    )
    assert grpc.state == "FINALIZED"
    assert transitions(space, "a", grpc.pid) == transitions(space, "a", mine.pid)


def test_negotiations_consumerpid_agreement_post_parses_the_agreement_once(
    space: LocalSpace,
) -> None:
    """The consumer's binding parses the signed agreement (to check the @id its message
    names) and hands the terms to the negotiator with the text they were parsed from,
    which verifies that text without parsing it again."""
    negotiator = space.nodes["a"].negotiator
    assert negotiator is not None
    handed: list[tuple[str, Any]] = []
    receive = negotiator.receive_agreement

    def watched(caller: Caller, msg: Any, **kw: Any) -> Any:
        handed.append((msg.agreement, kw.get("parsed")))
        return receive(caller, msg, **kw)

    negotiator.receive_agreement = watched  # type: ignore[method-assign]
    try:
        mine = dsp_negotiation(space)
    finally:
        del negotiator.receive_agreement
    assert mine.state == "FINALIZED", mine
    ((signed, parsed),) = handed
    assert parsed is not None and parsed.signed == signed
    assert parsed.agreement.id == mine.agreement_id


def test_negotiations_consumerpid_events_post_racing_the_verification_answer_changes_nothing(
    space: LocalSpace,
) -> None:
    """The FINALIZED event and the answer to the consumer's verification race for the same
    move: an event that read the negotiation VERIFIED, and finds it FINALIZED when it
    writes, is answered FINALIZED and changes nothing (it was refused with a 400, and the
    provider's outbox gave up on it, logging an error)."""
    mine = dsp_negotiation(space)
    assert mine.state == "FINALIZED", mine
    negotiator = space.nodes["a"].negotiator
    assert negotiator is not None
    store = negotiator._store
    final = store.get(mine.pid)
    as_read = dataclasses.replace(final, state=State.VERIFIED)  # before the answer's commit
    store.get_noting = lambda pid, message_id: (as_read, False)  # type: ignore[method-assign]
    try:
        ack = negotiator.receive_final(
            Caller(participant="gov", kind="participant", certificate_serial=0,
                   certificate_thumbprint=""),
            negotiation_pb2.NegotiationEvent(
                message_id="dsp-racing-event", provider_pid=final.counterparty_pid,
                consumer_pid=mine.pid, state="FINALIZED",
            ),
        )  # fmt: skip
    finally:
        del store.get_noting
    assert ack.state == "FINALIZED"
    assert store.get(mine.pid) == final
    assert transitions(space, "a", mine.pid) == ["REQUESTED", "VERIFIED", "FINALIZED"]


def test_negotiations_consumerpid_events_post_a_read_handed_over_is_rechecked_and_taken_once(
    space: LocalSpace,
) -> None:
    """The row the binding read for a message (``Received``) is the negotiator's first
    read: stale (VERIFIED, FINALIZED by the verification's answer since), the move refuses
    it under its own transaction and the event is answered as a repeat, changing nothing;
    it is taken once, and only for the process and message it was read for."""
    mine = dsp_negotiation(space)
    assert mine.state == "FINALIZED", mine
    negotiator = space.nodes["a"].negotiator
    assert negotiator is not None
    store = negotiator._store
    final = store.get(mine.pid)
    gov = Caller(
        participant="gov", kind="participant", certificate_serial=0, certificate_thumbprint=""
    )
    event = negotiation_pb2.NegotiationEvent(
        message_id="dsp-handed-over-event",
        provider_pid=final.counterparty_pid,
        consumer_pid=mine.pid,
        state="FINALIZED",
    )
    stale = dataclasses.replace(final, state=State.VERIFIED)
    read = Received(mine.pid, event.message_id, stale, False)
    ack = negotiator.receive_final(gov, event, read=read)
    assert ack.state == "FINALIZED"
    assert read.taken and read.take(mine.pid, event.message_id) is None
    assert store.get(mine.pid) == final
    assert transitions(space, "a", mine.pid) == ["REQUESTED", "VERIFIED", "FINALIZED"]
    # Read for another message or process: not used (the negotiator reads its own).
    other = Received(mine.pid, "dsp-another-message", stale, False)
    assert other.take(mine.pid, event.message_id) is None and not other.taken
    assert other.take("another-pid", "dsp-another-message") is None and not other.taken
    # Another participant's process is refused on a handed-over row as on one read.
    b = dataclasses.replace(gov, participant="b")
    with pytest.raises(NotFound):
        negotiator.receive_final(b, event, read=Received(mine.pid, event.message_id, final, False))


def test_revocation_of_an_agreement_negotiated_over_dsp_reaches_the_tds_consumer(
    space: LocalSpace,
) -> None:
    # DSP has no message for revoking a FINALIZED agreement: the revocation goes over gRPC
    # to a tds consumer, which must learn of it to delete what it holds.
    mine = dsp_negotiation(space)
    assert mine.state == "FINALIZED", mine
    (theirs,) = [n for n in provider_negotiations(space) if n.agreement_id == mine.agreement_id]
    admin(space, "gov").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(agreement_id=mine.agreement_id, reason="test: revoked"),
        timeout=10,
    )
    deadline = time.monotonic() + 15
    info = admin(space, "a").GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
    while not info.revocation and time.monotonic() < deadline:
        time.sleep(0.1)
        info = admin(space, "a").GetNegotiation(admin_pb2.NegotiationRef(pid=mine.pid), timeout=10)
    assert info.revocation
    assert outbox_methods(space, "gov", theirs.pid)[-1] == "RevokeAgreement"


def test_a_registry_outage_while_sending_is_retried_not_the_end_of_the_negotiation(
    space: LocalSpace,
) -> None:
    # The peer's registered host cannot be looked up for a moment (the directory is stale
    # and the registry unreachable): the outbox tries again, the negotiation goes on.
    delivery = space.nodes["a"].dsp_delivery
    assert delivery is not None
    looked_up = delivery._registered_host
    failures = [Unavailable("registry unreachable (test)")] * 2

    def flaky(participant: str) -> str:
        if failures:
            raise failures.pop()
        return looked_up(participant)

    delivery._registered_host = flaky
    try:
        mine = dsp_negotiation(space)
    finally:
        delivery._registered_host = looked_up
    assert not failures
    assert mine.state == "FINALIZED", mine


def test_negotiations_providerpid_agreement_verification_post_repeated_changes_nothing(
    space: LocalSpace,
) -> None:
    mine = dsp_negotiation(space)
    (theirs,) = [n for n in provider_negotiations(space) if n.agreement_id == mine.agreement_id]
    gov = space.nodes["gov"].negotiator
    assert gov is not None
    countersigned = gov.get(theirs.pid).agreement
    before = len(entries(space, "gov"))
    verification = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": f"urn:tds:process:{theirs.pid}",
        "consumerPid": f"urn:tds:process:{mine.pid}",
        SIGNED_AGREEMENT: countersigned,
    }
    path = f"/negotiations/urn:tds:process:{theirs.pid}/agreement/verification"
    again = client(space, "a").call("POST", path, verification)
    assert again.status == 200, again.body
    assert conforms(again, "negotiation/contract-negotiation-schema.json")["state"] == "FINALIZED"
    assert len(entries(space, "gov")) == before
    assert outbox_methods(space, "gov", theirs.pid) == ["dsp:SendAgreement", "dsp:Finalize"]
    # b names a's process: as missing as one that does not exist.
    refused(
        client(space, "b").call("POST", path, verification),
        404,
        "ContractNegotiationError",
        "no such negotiation",
    )


def test_negotiations_providerpid_agreement_verification_post_reads_the_negotiation_once(
    space: LocalSpace,
) -> None:
    """The binding's check that the process is the caller's and the negotiator's first
    read (the row, and whether the message was processed) are one read, not two: over a
    whole negotiation the provider reads its row once outside the moves' own
    transactions (for the verification), and a repeat of that message once more."""
    gov = space.nodes["gov"].negotiator
    assert gov is not None
    store = gov._store
    reads: list[tuple[str, str]] = []
    get, get_noting = store.get, store.get_noting

    def counted_get(pid: str) -> Any:
        reads.append(("get", pid))
        return get(pid)

    def counted_get_noting(pid: str, message_id: str) -> Any:
        reads.append(("get_noting", pid))
        return get_noting(pid, message_id)

    store.get = counted_get  # type: ignore[method-assign]
    store.get_noting = counted_get_noting  # type: ignore[method-assign]
    try:
        mine = dsp_negotiation(space)
        assert mine.state == "FINALIZED", mine
        (theirs,) = [n for n in provider_negotiations(space) if n.agreement_id == mine.agreement_id]
        assert [r for r in reads if r[1] == theirs.pid] == [("get_noting", theirs.pid)]
        path = f"/negotiations/urn:tds:process:{theirs.pid}/agreement/verification"
        repeat = verification_of(
            f"urn:tds:process:{theirs.pid}",
            f"urn:tds:process:{mine.pid}",
            **{SIGNED_AGREEMENT: gov.get(theirs.pid).agreement},
        )
        del reads[:]
        again = client(space, "a").call("POST", path, repeat)
        assert again.status == 200, again.body
        assert again.body["state"] == "FINALIZED"
        assert reads == [("get_noting", theirs.pid)]
        # Read once, the caller is still checked on it: b naming a's process is refused.
        refused(
            client(space, "b").call("POST", path, repeat),
            404,
            "ContractNegotiationError",
            "no such negotiation",
        )
    finally:
        del store.get, store.get_noting
    assert outbox_methods(space, "gov", theirs.pid) == ["dsp:SendAgreement", "dsp:Finalize"]


def verification_of(provider_pid: str, consumer_pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        **extra,
    }


def event_of(provider_pid: str, consumer_pid: str, event: str) -> dict[str, Any]:
    return {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractNegotiationEventMessage",
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "eventType": event,
    }


@pytest.mark.parametrize(
    ("suffix", "message", "status", "fragment"),
    [
        (
            "agreement/verification",
            lambda p, c: verification_of(p, c),
            400,
            "both parties have signed it",
        ),
        (
            "agreement/verification",
            lambda p, c: verification_of(p, c, **{SIGNED_AGREEMENT: "{}"}),
            400,
            "",
        ),
        ("events", lambda p, c: event_of(p, c, "ACCEPTED"), 400, "cannot move to ACCEPTED"),
        ("events", lambda p, c: event_of(p, c, "FINALIZED"), 400, "takes ACCEPTED events"),
        ("events", lambda p, c: event_of(p, "urn:uuid:someone-else", "ACCEPTED"), 404, "no such"),
        ("events", lambda p, c: {**event_of(p, c, "ACCEPTED"), "@type": "X"}, 400, "@type"),
        ("agreement", lambda p, c: event_of(p, c, "ACCEPTED"), 400, "ContractAgreementMessage"),
    ],
    ids=[
        "verification-without-countersignature",
        "verification-forged-countersignature",
        "accepted-with-no-offer-out-of-order",
        "finalized-sent-to-the-provider",
        "another-consumer-process",
        "unknown-type",
        "agreement-callback-on-a-provider-process",
    ],
)
def test_state_transition_errors_provider_side_change_nothing(
    space: LocalSpace, suffix: str, message: Any, status: int, fragment: str
) -> None:
    consumer_pid = f"urn:uuid:bad-{suffix.replace('/', '-')}-{status}-{len(fragment)}"
    started = client(space, "b").call(
        "POST", "/negotiations/request", contract_request(consumer_pid)
    )
    assert started.body["state"] == "AGREED", started.body
    provider_pid = started.body["providerPid"]
    pid = provider_pid.removeprefix("urn:tds:process:")
    logged = transitions(space, "gov", pid)
    answer = client(space, "b").call(
        "POST", f"/negotiations/{provider_pid}/{suffix}", message(provider_pid, consumer_pid)
    )
    refused(answer, status, "ContractNegotiationError", fragment)
    assert answer.body["providerPid"] == provider_pid
    assert client(space, "b").call("GET", f"/negotiations/{provider_pid}").body["state"] == "AGREED"
    assert transitions(space, "gov", pid) == logged


def test_negotiations_request_post_callback_only_to_the_registered_host(
    space: LocalSpace,
) -> None:
    # a's connector is told to negotiate with a "provider binding" on a host gov is not
    # registered at (localhost is not 127.0.0.1): it must not connect there at all.
    listener = socket.socket()
    listener.bind(("localhost", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    try:
        ended = dsp_negotiation(space, dsp_url=f"https://localhost:{port}")
        assert ended.state == "TERMINATED", ended
        assert "host the operator registered for gov" in " ".join(ended.reasons)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came
    finally:
        listener.close()
    with pytest.raises(grpc.RpcError) as refused_at_once:
        dsp_negotiation(space, dsp_url=f"http://127.0.0.1:{port}")
    assert refused_at_once.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_negotiations_consumerpid_agreement_post_after_the_providers_approval(
    space: LocalSpace, decision: str
) -> None:
    # An offer that waits for the provider's admin: the agreement, or the rejection,
    # reaches the tds consumer later, at its callback address, through gov's outbox.
    waiting = dsp_negotiation(space, IMPORTANT, consumer="b", wait_ms=0)
    provider = admin(space, "gov")
    deadline = time.monotonic() + 20
    theirs: list[Any] = []
    while not theirs and time.monotonic() < deadline:
        found = provider.ListNegotiations(
            admin_pb2.ListNegotiationsRequest(pending_approval=True), timeout=10
        ).negotiations
        theirs = [n for n in found if n.counterparty_pid == waiting.pid]
        time.sleep(0.05)
    (pending,) = theirs
    if decision == "approve":
        provider.ApproveNegotiation(admin_pb2.NegotiationRef(pid=pending.pid), timeout=10)
    else:
        provider.RejectNegotiation(
            admin_pb2.NegotiationRef(pid=pending.pid, reason="not this year"), timeout=10
        )
    final = admin(space, "b").GetNegotiation(
        admin_pb2.NegotiationRef(pid=waiting.pid, wait_ms=20_000), timeout=30
    )
    if decision == "approve":
        assert final.state == "FINALIZED", final
        assert outbox_methods(space, "gov", pending.pid) == ["dsp:SendAgreement", "dsp:Finalize"]
    else:
        assert (final.state, list(final.reasons)) == ("TERMINATED", ["not this year"])
        assert outbox_methods(space, "gov", pending.pid) == ["dsp:Terminate"]


def test_negotiations_consumerpid_agreement_post_goes_only_to_the_consumers_own_server(
    space: LocalSpace,
) -> None:
    # a names b's binding as its callback: the right host, the wrong participant. gov's
    # push must not reach it: b's server certificate is not a's (TLS refuses the name).
    b_binding = space.nodes["b"].dsp
    assert b_binding is not None
    message = {**contract_request("urn:uuid:c-elsewhere"), "callbackAddress": b_binding.base_url}
    started = client(space, "a").call("POST", "/negotiations/request", message)
    assert started.body["state"] == "AGREED", started.body
    pid = started.body["providerPid"].removeprefix("urn:tds:process:")
    gov = space.nodes["gov"]
    assert gov.db is not None
    deadline = time.monotonic() + 20
    row = None
    while time.monotonic() < deadline:
        with gov.db.transaction() as tx:
            row = tx.one(
                "SELECT method, status, attempts, last_error FROM outbox WHERE negotiation_pid = ?",
                (pid,),
            )
        if row is not None and row[2] >= 1:
            break
        time.sleep(0.05)
    assert row is not None
    method, status, attempts, error = row
    assert (method, status) == ("dsp:SendAgreement", "pending"), row
    assert attempts >= 1 and "certificate" in error.lower(), error
    # Nothing was taken: the negotiation on gov still waits for its consumer.
    assert (
        client(space, "a").call("GET", f"/negotiations/{started.body['providerPid']}").body["state"]
        == "AGREED"
    )


def test_negotiations_request_post_refused_at_once_ends_the_tds_consumers_side(
    space: LocalSpace,
) -> None:
    # The contract policy refuses a purpose the offer does not name: TERMINATED in the
    # provider's answer, and so on the consumer, with nothing more sent either way.
    ended = dsp_negotiation(space, purpose="marketing")
    assert ended.state == "TERMINATED", ended
    assert list(ended.reasons) == ["the provider refused the request at once"]
    assert outbox_methods(space, "a", ended.pid) == ["dsp:RequestContract"]
    (theirs,) = [n for n in provider_negotiations(space) if n.counterparty_pid.endswith(ended.pid)]
    assert theirs.state == "TERMINATED"
    assert outbox_methods(space, "gov", theirs.pid) == []


def test_negotiations_providerpid_termination_post_sent_by_a_tds_consumer(
    space: LocalSpace,
) -> None:
    # b's admin ends a negotiation that waits for gov's approval: the termination goes to
    # gov's binding through b's outbox, and gov's record ends with b's reason.
    waiting = dsp_negotiation(space, IMPORTANT, consumer="b", wait_ms=0)
    deadline = time.monotonic() + 20
    mine = waiting
    while not mine.counterparty_pid and time.monotonic() < deadline:  # until gov answered
        time.sleep(0.05)
        mine = admin(space, "b").GetNegotiation(
            admin_pb2.NegotiationRef(pid=waiting.pid), timeout=10
        )
    assert mine.state == "REQUESTED", mine
    admin(space, "b").TerminateNegotiation(
        admin_pb2.NegotiationRef(pid=waiting.pid, reason="found it elsewhere"), timeout=10
    )
    theirs = mine.counterparty_pid
    while time.monotonic() < deadline:
        shown = admin(space, "gov").GetNegotiation(admin_pb2.NegotiationRef(pid=theirs), timeout=10)
        if shown.state == "TERMINATED":
            break
        time.sleep(0.05)
    assert (shown.state, list(shown.reasons)) == ("TERMINATED", ["found it elsewhere"])
    assert outbox_methods(space, "b", waiting.pid) == ["dsp:RequestContract", "dsp:Terminate"]


@pytest.mark.parametrize(
    "consumer_pid",
    ["urn:uuid:x/../../catalog/request", "urn:uuid:x?y=1", "urn:uuid:x#frag", "a%2Fb", "x\ny"],
)
def test_contract_negotiation_error_a_process_id_that_could_reach_a_url_is_400(
    space: LocalSpace, consumer_pid: str
) -> None:
    # The consumer's pid becomes a record key and a segment of the callback URL the
    # provider posts to: one that could change that path is refused, nothing recorded.
    before = len(provider_negotiations(space))
    answer = client(space).call("POST", "/negotiations/request", contract_request(consumer_pid))
    refused(answer, 400, "ContractNegotiationError", "process id")
    assert len(provider_negotiations(space)) == before
