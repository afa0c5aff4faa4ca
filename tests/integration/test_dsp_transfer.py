"""The DSP 2025-1 transfer process over the HTTPS binding, with an ``HttpData`` pull.

Two tds connectors transfer over the binding alone (request → start → pull →
completion with the dual-signed receipt), and a client written from the specification
drives the provider as a connector of another make would, its callback a listener with
that member's certificate. Each test is named after the section of the transfer process
HTTPS binding it checks (``transfers-request-post``, ``transfers-providerpid-completion-
post``…); every answer is validated against ``../shared/vectors/dsp-2025-1/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from connector._proto.tds.v1 import admin_pb2
from connector.config import DspConfig
from connector.demo.space import LocalSpace
from connector.dsp.transfers import MANIFEST, SIGNED_RECEIPT
from connector.identity.names import Role, participant_dns_name
from connector.webserver import BackgroundSite
from tests.integration.test_authentication import ca_pem, own_token, pem
from tests.support.dsp_client import Answer, DspClient
from tests.support.exchange import FAR, admin, entries, publish
from tests.unit.negotiation.test_dsp import VECTORS, validate

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")

SIZE = 3 * 1024 * 1024 + 12345  # more than one chunk, not a multiple of one
BODY_LIMIT = 4096
CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]


class Callback:
    """A consumer's callback address as a connector of another make serves it: an HTTPS
    listener with the member's own certificate that keeps what it is sent."""

    def __init__(self, space: LocalSpace, member: str, status: int = 200) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._site = BackgroundSite(f"callback-{member}")
        me = space.manifest.participant(member)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(space.pki_dir / me.tls_cert), str(space.pki_dir / me.tls_key))

        async def take(request: web.Request) -> web.Response:
            self.received.append((request.path, await request.json()))
            return web.Response(status=status)

        app = web.Application()
        app.router.add_post("/{tail:.*}", take)
        self.port = self._site.start(app, "127.0.0.1", 0, ssl_context=context)
        self.url = f"https://127.0.0.1:{self.port}"

    def start_message(self, consumer_pid: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path, body in self.received:
                if path == f"/transfers/{consumer_pid}/start":
                    return body
            time.sleep(0.05)
        raise AssertionError(f"no start message for {consumer_pid}: {self.received}")

    def stop(self) -> None:
        self._site.stop()


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("dsp-transfer")
    (root / "data.bin").write_bytes(os.urandom(SIZE))
    with LocalSpace.create(
        root, [("gov", Role.GOVERNMENT), ("a", Role.ENTERPRISE), ("b", Role.ENTERPRISE)]
    ) as sp:
        sp.start_registry()
        sp.start_connector("gov", dsp=DspConfig(listen="127.0.0.1:0", max_body_bytes=BODY_LIMIT))
        for member in ("a", "b"):
            sp.start_connector(member, dsp=DspConfig(listen="127.0.0.1:0"))
        publish(
            sp,
            "gov",
            {
                "id": "flows",
                "title": "flows",
                "grade": "general",
                "tags": ["mobility"],
                "source": {"kind": "file", "path": "data.bin"},
                "offers": [
                    {
                        "id": "o1",
                        "purposes": ["research"],
                        "valid_from_ns": 0,
                        "valid_until_ns": FAR,
                    }
                ],
            },
            root,
        )
        yield sp


@pytest.fixture(scope="module")
def callback(space: LocalSpace) -> Iterator[Callback]:
    listener = Callback(space, "a")
    yield listener
    listener.stop()


def provider_url(space: LocalSpace) -> str:
    binding = space.nodes["gov"].dsp
    assert binding is not None
    return binding.base_url


def client(
    space: LocalSpace, member: str = "a", *, token: str | None = "", cert: bool = True
) -> DspClient:
    """gov's binding as ``member`` calls it: its certificate (or none) and its membership
    token (``""``), another ``Authorization`` value, or none (``None``)."""
    return DspClient(
        base=provider_url(space),
        server_name=participant_dns_name("city", "gov"),
        ca_pem=ca_pem(space),
        cert_pem=pem(space, member, "tls_cert") if cert else None,
        key_pem=pem(space, member, "tls_key") if cert else None,
        authorization=lambda: f"Bearer {own_token(space, member)}" if token == "" else token,
    )


def agreement(space: LocalSpace, consumer: str = "a") -> str:
    """A FINALIZED agreement of ``consumer`` with gov, negotiated over DSP."""
    n = admin(space, consumer).StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov",
            product_id="flows",
            offer_id="o1",
            purpose="research",
            wait_ms=20_000,
            dsp_url=provider_url(space),
        ),
        timeout=30,
    )
    assert n.state == "FINALIZED", n
    return str(n.agreement_id)


def request(consumer_pid: str, agreement_id: str, callback: str, **extra: Any) -> dict[str, Any]:
    return {
        "@context": CONTEXT,
        "@type": "TransferRequestMessage",
        "consumerPid": consumer_pid,
        "agreementId": f"urn:tds:agreement:{agreement_id}",
        "format": "HttpData-PULL",
        "callbackAddress": callback,
        **extra,
    }


def message(kind: str, provider_pid: str, consumer_pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "@context": CONTEXT,
        "@type": kind,
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        **extra,
    }


def conforms(
    answer: Answer, schema: str = "transfer/transfer-process-schema.json"
) -> dict[str, Any]:
    validate(answer.body, schema)
    return dict(answer.body)


def refused(answer: Answer, status: int, fragment: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    body = conforms(answer, "transfer/transfer-error-schema.json")
    assert body["@type"] == "TransferError"
    assert fragment in " ".join(body["reason"]), body["reason"]


def provider_transfers(space: LocalSpace) -> list[Any]:
    node = space.nodes["gov"]
    assert node.db is not None
    with node.db.transaction() as tx:
        return tx.all("SELECT id, state, receipt FROM transfer WHERE role = 'provider'")


def dsp_rows(space: LocalSpace) -> list[Any]:
    node = space.nodes["gov"]
    assert node.db is not None
    with node.db.transaction() as tx:
        return tx.all("SELECT transfer_id, state FROM dsp_transfer ORDER BY created_ms")


def data_address(start: dict[str, Any]) -> tuple[str, str]:
    address = start["dataAddress"]
    props = {p["name"]: p["value"] for p in address["endpointProperties"]}
    return address["endpoint"], props["authorization"]


def pull(
    space: LocalSpace,
    endpoint: str,
    token: str | None,
    *,
    member: str = "a",
    cert: bool = True,
    range_: str = "",
) -> tuple[int, bytes, dict[str, list[str]]]:
    """GET the data address as ``member`` (raw bytes, not JSON)."""
    import asyncio

    import aiohttp

    c = client(space, member, token=None, cert=cert)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if range_:
        headers["Range"] = range_

    async def run() -> tuple[int, bytes, dict[str, list[str]]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                endpoint, headers=headers, ssl=c.ssl_context(), server_hostname=c.server_name
            ) as response,
        ):
            body = await response.read()
            return (
                response.status,
                body,
                {k: response.headers.getall(k) for k in set(response.headers.keys())},
            )

    return asyncio.run(run())


_counter = iter(range(10**6))


def started(space: LocalSpace, callback: Callback) -> tuple[str, str, str, str]:
    """A process started by a's foreign-style client: (providerPid, consumerPid, endpoint,
    token)."""
    consumer_pid = f"urn:uuid:test-{next(_counter)}-{time.time_ns()}"
    answer = client(space).call(
        "POST", "/transfers/request", request(consumer_pid, agreement(space), callback.url)
    )
    assert answer.status == 201, answer.body
    body = conforms(answer)
    start = callback.start_message(consumer_pid)
    validate(start, "transfer/transfer-start-message-schema.json")
    endpoint, token = data_address(start)
    return body["providerPid"], consumer_pid, endpoint, token


def error_of(status: int, body: bytes, fragment: str) -> None:
    document = json.loads(body)
    validate(document, "transfer/transfer-error-schema.json")
    assert fragment in " ".join(document["reason"]), (status, document)


# -- two tds connectors over the binding alone -----------------------------------------


def test_transfers_request_post_two_tds_connectors_pull_and_complete(space: LocalSpace) -> None:
    agreement_id = agreement(space)
    events = list(
        admin(space, "a").Transfer(
            admin_pb2.TransferRequest(agreement_id=agreement_id, dsp_url=provider_url(space)),
            timeout=120,
        )
    )
    final = events[-1]
    assert final.event == "completed", [(e.event, e.detail) for e in events]
    digest = hashlib.sha256((space.root / "data.bin").read_bytes()).hexdigest()
    assert final.sha256 == digest and final.size == SIZE
    # The same bytes as a gRPC pull of the same product, under the same agreement.
    grpc_final = list(
        admin(space, "a").Transfer(
            admin_pb2.TransferRequest(agreement_id=agreement_id), timeout=120
        )
    )[-1]
    assert grpc_final.event == "completed" and grpc_final.sha256 == final.sha256
    # One dual-signed receipt for the DSP transfer, on both sides, the same document.
    transfer_id = final.transfer_id
    (provider_row,) = [r for r in provider_transfers(space) if r[0] == transfer_id]
    assert provider_row[1] == "completed" and provider_row[2] == final.transfer.receipt
    receipts = [
        e for e in entries(space, "gov", "transfer.receipt") if e["data"]["transfer"] == transfer_id
    ]
    assert len(receipts) == 1
    consumer_receipts = [
        e for e in entries(space, "a", "transfer.receipt") if e["data"]["transfer"] == transfer_id
    ]
    assert len(consumer_receipts) == 1
    assert consumer_receipts[0]["data"]["receipt"] == receipts[0]["data"]["receipt"]
    # The same audit entries as the gRPC transfer (started, receipt), and metering counts both.
    kinds = {
        e["kind"]
        for e in entries(space, "gov")
        if e["kind"].startswith("transfer.") and e["data"].get("transfer") == transfer_id
    }
    assert kinds == {"transfer.started", "transfer.receipt"}
    # Both processes, provider's and consumer's, are COMPLETED.
    assert dict(dsp_rows(space))[transfer_id] == "COMPLETED"


def test_transfers_request_post_dsp_url_off_the_registered_host_is_refused(
    space: LocalSpace,
) -> None:
    agreement_id = agreement(space)
    port = provider_url(space).rpartition(":")[2]
    with pytest.raises(Exception) as err:
        list(
            admin(space, "a").Transfer(
                admin_pb2.TransferRequest(
                    agreement_id=agreement_id, dsp_url=f"https://localhost:{port}"
                ),
                timeout=30,
            )
        )
    assert "registered" in str(err.value)


# -- the provider, driven from the specification ----------------------------------------


def test_transfers_request_post_start_message_carries_an_httpdata_address(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, endpoint, token = started(space, callback)
    assert endpoint == f"{provider_url(space)}/transfers/{provider_pid}/data"
    start = callback.start_message(consumer_pid)
    assert start["providerPid"] == provider_pid
    manifest = json.loads(start[MANIFEST])
    status, body, _ = pull(space, endpoint, token)
    assert status == 200 and len(body) == SIZE
    assert hashlib.sha256(body).hexdigest() == manifest["sha256"]
    # The process as GET shows it.
    shown = conforms(client(space).call("GET", f"/transfers/{provider_pid}"))
    assert (shown["state"], shown["consumerPid"]) == ("STARTED", consumer_pid)


def test_transfers_data_range_resumes_where_the_consumer_stopped(
    space: LocalSpace, callback: Callback
) -> None:
    _, _, endpoint, token = started(space, callback)
    whole = (space.root / "data.bin").read_bytes()
    status, tail, headers = pull(space, endpoint, token, range_=f"bytes={SIZE - 1000}-")
    assert status == 206 and tail == whole[-1000:]
    assert headers["Content-Range"] == [f"bytes {SIZE - 1000}-{SIZE - 1}/{SIZE}"]
    status, middle, _ = pull(space, endpoint, token, range_="bytes=1048570-1048580")
    assert status == 206 and middle == whole[1048570:1048581]
    status, _, _ = pull(space, endpoint, token, range_=f"bytes={SIZE}-")
    assert status == 416


def test_transfers_data_token_refused_unbound_missing_or_of_another_participant(
    space: LocalSpace, callback: Callback
) -> None:
    _, _, endpoint, token = started(space, callback)
    # Another member's certificate with a's token: the token is bound to a.
    status, body, _ = pull(space, endpoint, token, member="b")
    assert status == 401
    error_of(status, body, "not the data address token of this transfer for you")
    status, body, _ = pull(space, endpoint, None)
    assert status == 401
    status, body, _ = pull(space, endpoint, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert status == 401
    # No client certificate at all.
    status, body, _ = pull(space, endpoint, token, cert=False)
    assert status == 401
    # a's membership token is not the data address's token.
    status, body, _ = pull(space, endpoint, own_token(space, "a"))
    assert status == 401


def test_transfers_providerpid_completion_post_without_a_receipt_spends_the_token(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, endpoint, token = started(space, callback)
    assert pull(space, endpoint, token)[0] == 200
    done = client(space).call(
        "POST",
        f"/transfers/{provider_pid}/completion",
        message("TransferCompletionMessage", provider_pid, consumer_pid),
    )
    assert done.status == 200, done.body
    assert conforms(done)["state"] == "COMPLETED"
    transfer_id = provider_pid.removeprefix("urn:tds:process:")
    unsigned = [
        e
        for e in entries(space, "gov", "transfer.completed_unsigned")
        if e["data"]["transfer"] == transfer_id
    ]
    assert len(unsigned) == 1
    assert not [
        e for e in entries(space, "gov", "transfer.receipt") if e["data"]["transfer"] == transfer_id
    ]
    # The token is refused after completion.
    status, body, _ = pull(space, endpoint, token)
    assert status == 403
    error_of(status, body, "COMPLETED")
    # The same message again: the same answer, nothing changed.
    before = len(entries(space, "gov"))
    again = client(space).call(
        "POST",
        f"/transfers/{provider_pid}/completion",
        message("TransferCompletionMessage", provider_pid, consumer_pid),
    )
    assert again.status == 200 and conforms(again)["state"] == "COMPLETED"
    assert len(entries(space, "gov")) == before


def test_transfers_providerpid_completion_post_with_a_forged_receipt_is_refused(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, _, _ = started(space, callback)
    answer = client(space).call(
        "POST",
        f"/transfers/{provider_pid}/completion",
        message(
            "TransferCompletionMessage", provider_pid, consumer_pid, **{SIGNED_RECEIPT: "not.a.jws"}
        ),
    )
    assert answer.status == 400, answer.body
    conforms(answer, "transfer/transfer-error-schema.json")
    shown = conforms(client(space).call("GET", f"/transfers/{provider_pid}"))
    assert shown["state"] == "STARTED"


def test_transfers_request_post_repeated_is_one_process_and_one_transfer(
    space: LocalSpace, callback: Callback
) -> None:
    agreement_id = agreement(space)
    body = request("urn:uuid:repeat-1", agreement_id, callback.url)
    first = client(space).call("POST", "/transfers/request", body)
    assert first.status == 201
    before = (len(provider_transfers(space)), len(entries(space, "gov")))
    second = client(space).call("POST", "/transfers/request", body)
    assert second.status == 201 and second.body["providerPid"] == first.body["providerPid"]
    assert (len(provider_transfers(space)), len(entries(space, "gov"))) == before
    # The same consumerPid with another request: refused, nothing changed.
    other = client(space).call(
        "POST", "/transfers/request", request("urn:uuid:repeat-1", agreement(space), callback.url)
    )
    refused(other, 400, "already names another transfer request")
    assert len(provider_transfers(space)) == before[0]


def test_transfer_error_bad_requests_change_nothing(space: LocalSpace, callback: Callback) -> None:
    agreement_id = agreement(space)
    before = (len(provider_transfers(space)), len(dsp_rows(space)))
    cases = [
        (
            {
                k: v
                for k, v in request("urn:uuid:x1", agreement_id, callback.url).items()
                if k != "format"
            },
            400,
            "schema",
        ),
        (
            {**request("urn:uuid:x2", agreement_id, callback.url), "@type": "TransferStartMessage"},
            400,
            "takes TransferRequestMessage",
        ),
        (
            {**request("urn:uuid:x3", agreement_id, callback.url), "@type": "Unheard"},
            400,
            "takes TransferRequestMessage",
        ),
        (
            request("urn:uuid:x4", agreement_id, callback.url, format="HttpData-PUSH"),
            400,
            "is not served",
        ),
        (request("urn:uuid:x5", agreement_id, callback.url.replace("https", "http")), 400, "https"),
        (
            request("urn:uuid:x6", agreement_id, callback.url.replace("127.0.0.1", "localhost")),
            400,
            "registered",
        ),
        (request("urn:uuid:x7/../x", agreement_id, callback.url), 400, "process id"),
        (request("urn:uuid:x8", "no-such-agreement", callback.url), 404, "no agreement"),
    ]
    for body, status, fragment in cases:
        refused(client(space).call("POST", "/transfers/request", body), status, fragment)
    # Another participant's agreement: b cannot transfer under a's.
    refused(
        client(space, "b").call(
            "POST", "/transfers/request", request("urn:uuid:x9", agreement_id, callback.url)
        ),
        404,
        "",
    )
    assert (len(provider_transfers(space)), len(dsp_rows(space))) == before


def test_transfer_error_body_over_the_size_limit_is_413(
    space: LocalSpace, callback: Callback
) -> None:
    big = request("urn:uuid:big", agreement(space), callback.url, padding="x" * (BODY_LIMIT + 1))
    refused(client(space).call("POST", "/transfers/request", big), 413, "larger")


def test_authorization_missing_or_unbound_membership_token_is_401(
    space: LocalSpace, callback: Callback
) -> None:
    body = request("urn:uuid:anon", "x", callback.url)
    refused(
        client(space, token=None).call("POST", "/transfers/request", body), 401, "membership token"
    )
    refused(
        client(space, "a", token=f"Bearer {own_token(space, 'b')}").call(
            "POST", "/transfers/request", body
        ),
        401,
        "",
    )


def test_object_not_found_another_participants_process_is_404(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, _, _ = started(space, callback)
    b = client(space, "b")
    refused(b.call("GET", f"/transfers/{provider_pid}"), 404, "no such transfer process")
    for kind, path in [
        ("TransferCompletionMessage", "completion"),
        ("TransferSuspensionMessage", "suspension"),
        ("TransferTerminationMessage", "termination"),
    ]:
        refused(
            b.call(
                "POST",
                f"/transfers/{provider_pid}/{path}",
                message(kind, provider_pid, consumer_pid),
            ),
            404,
            "no such transfer process",
        )
    shown = conforms(client(space).call("GET", f"/transfers/{provider_pid}"))
    assert shown["state"] == "STARTED"


def test_state_transition_errors_out_of_order_change_nothing(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, endpoint, token = started(space, callback)
    a = client(space)
    # A start message to a STARTED process (it resumes only a SUSPENDED one).
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/start",
            message("TransferStartMessage", provider_pid, consumer_pid),
        ),
        400,
        "STARTED already",
    )
    # Suspend: the data address is refused while suspended; a start resumes it.
    suspended = a.call(
        "POST",
        f"/transfers/{provider_pid}/suspension",
        message("TransferSuspensionMessage", provider_pid, consumer_pid, reason=["later"]),
    )
    assert conforms(suspended)["state"] == "SUSPENDED"
    assert pull(space, endpoint, token)[0] == 403
    resumed = a.call(
        "POST",
        f"/transfers/{provider_pid}/start",
        message("TransferStartMessage", provider_pid, consumer_pid),
    )
    assert conforms(resumed)["state"] == "STARTED"
    assert pull(space, endpoint, token, range_="bytes=0-9")[0] == 206
    # Terminate; then completion and suspension are out of order, and the token is spent.
    ended = a.call(
        "POST",
        f"/transfers/{provider_pid}/termination",
        message(
            "TransferTerminationMessage",
            provider_pid,
            consumer_pid,
            code="cancelled",
            reason=["no longer needed"],
        ),
    )
    assert conforms(ended)["state"] == "TERMINATED"
    before = len(entries(space, "gov"))
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/completion",
            message("TransferCompletionMessage", provider_pid, consumer_pid),
        ),
        400,
        "cannot complete",
    )
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/suspension",
            message("TransferSuspensionMessage", provider_pid, consumer_pid),
        ),
        400,
        "only a STARTED process",
    )
    status, _, _ = pull(space, endpoint, token)
    assert status == 403
    # The termination again: the same answer, nothing changed.
    again = a.call(
        "POST",
        f"/transfers/{provider_pid}/termination",
        message("TransferTerminationMessage", provider_pid, consumer_pid),
    )
    assert conforms(again)["state"] == "TERMINATED"
    assert len(entries(space, "gov")) == before


def test_transfers_data_token_expires(space: LocalSpace, callback: Callback) -> None:
    transfers = space.nodes["gov"].dsp_transfers
    assert transfers is not None
    # Tokens issued from now on live one second (the side is frozen for the binding's
    # handlers; the test shortens its lifetime as an operator's setting would).
    object.__setattr__(transfers.side, "token_seconds", 1)
    try:
        _, _, endpoint, token = started(space, callback)
    finally:
        object.__setattr__(transfers.side, "token_seconds", 3600)
    assert pull(space, endpoint, token, range_="bytes=0-0")[0] == 206
    time.sleep(1.2)
    status, body, _ = pull(space, endpoint, token)
    assert status == 401
    error_of(status, body, "expired")


def test_transfers_consumerpid_start_post_refused_ends_the_transfer(space: LocalSpace) -> None:
    # The consumer's callback refuses the start message for good (404): the outbox gives
    # up, and the transfer is terminated, its data address refused.
    refusing = Callback(space, "a", status=404)
    try:
        answer = client(space).call(
            "POST",
            "/transfers/request",
            request("urn:uuid:refuses", agreement(space), refusing.url),
        )
        assert answer.status == 201
        provider_pid = conforms(answer)["providerPid"]
        endpoint, token = data_address(refusing.start_message("urn:uuid:refuses"))
    finally:
        refusing.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = conforms(client(space).call("GET", f"/transfers/{provider_pid}"))
        if shown["state"] == "TERMINATED":
            break
        time.sleep(0.1)
    assert shown["state"] == "TERMINATED"
    transfer_id = provider_pid.removeprefix("urn:tds:process:")
    assert [r[1] for r in provider_transfers(space) if r[0] == transfer_id] == ["terminated"]
    assert pull(space, endpoint, token)[0] == 403


def consumer_client(space: LocalSpace, sender: str) -> DspClient:
    """a's binding (a tds consumer's callback address) as ``sender`` calls it."""
    binding = space.nodes["a"].dsp
    assert binding is not None
    return DspClient(
        base=binding.base_url,
        server_name=participant_dns_name("city", "a"),
        ca_pem=ca_pem(space),
        cert_pem=pem(space, sender, "tls_cert"),
        key_pem=pem(space, sender, "tls_key"),
        authorization=lambda: f"Bearer {own_token(space, sender)}",
    )


def test_transfers_consumerpid_start_post_bad_start_messages_change_nothing(
    space: LocalSpace,
) -> None:
    from connector.dsp.transfers import DspTransfer

    transfers = space.nodes["a"].dsp_transfers
    assert transfers is not None
    agreement_id = agreement(space)
    cid = f"dspc-{'7' * 32}"
    now = int(time.time() * 1000)
    # a's process as its request left it: REQUESTED, waiting for gov's start message.
    transfers.side.store.add(
        DspTransfer(
            transfer_id=cid,
            role="consumer",
            counterparty="gov",
            peer_pid=f"pending:{cid}",
            callback=provider_url(space),
            request_digest="",
            state="REQUESTED",
            token_expires_ms=0,
            created_ms=now,
            updated_ms=now,
            data_address=json.dumps({"agreement": agreement_id}),
        )
    )
    tid = "tr-" + "9" * 32
    pid, cpid = f"urn:tds:process:{tid}", f"urn:tds:process:{cid}"
    address = {
        "@type": "DataAddress",
        "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
        "endpoint": f"{provider_url(space)}/transfers/{pid}/data",
        "endpointProperties": [
            {"@type": "EndpointProperty", "name": "authorization", "value": "t"},
        ],
    }
    manifest = json.dumps({"transfer_id": tid, "agreement_id": agreement_id})
    cases = [
        # A connector of another make sends no manifest: a tds consumer cannot sign over it.
        (message("TransferStartMessage", pid, cpid, dataAddress=address), 400, MANIFEST),
        (message("TransferStartMessage", pid, cpid, **{MANIFEST: manifest}), 400, "dataAddress"),
        (
            message(
                "TransferStartMessage",
                pid,
                cpid,
                dataAddress={**address, "endpoint": "https://localhost:1/x"},
                **{MANIFEST: manifest},
            ),
            400,
            "registered",
        ),
        (
            message(
                "TransferStartMessage",
                pid,
                cpid,
                dataAddress=address,
                **{MANIFEST: json.dumps({"transfer_id": "tr-" + "8" * 32})},
            ),
            400,
            "another transfer",
        ),
    ]
    gov = consumer_client(space, "gov")
    for body, status, fragment in cases:
        refused(gov.call("POST", f"/transfers/{cpid}/start", body), status, fragment)
    # Another member cannot start a's process; an unknown process is as missing.
    refused(
        consumer_client(space, "b").call(
            "POST", f"/transfers/{cpid}/start", message("TransferStartMessage", pid, cpid)
        ),
        404,
        "no such transfer process",
    )
    other = "urn:tds:process:dspc-" + "6" * 32
    refused(
        gov.call("POST", f"/transfers/{other}/start", message("TransferStartMessage", pid, other)),
        404,
        "no such transfer process",
    )
    row = transfers.side.store.get(cid)
    assert (row.state, row.peer_pid) == ("REQUESTED", f"pending:{cid}")
    node = space.nodes["a"]
    assert node.db is not None
    with node.db.transaction() as tx:
        assert tx.one("SELECT id FROM transfer WHERE id = ?", (tid,)) is None
