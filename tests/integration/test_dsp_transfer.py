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
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
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
from tests.support.streams import restart
from tests.unit.negotiation.test_dsp import VECTORS, validate

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"DSP vectors not found at {VECTORS}")

SIZE = 3 * 1024 * 1024 + 12345  # more than one chunk, not a multiple of one
BIG = 48 * 1024 * 1024  # more than the sockets between two processes hold: a pull in flight
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

    def message_at(self, path: str, count: int = 1, timeout: float = 10) -> dict[str, Any]:
        """The ``count``-th message POSTed to ``path`` (once it is there), schema-checked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [body for at, body in list(self.received) if at == path]
            if len(found) >= count:
                body = found[count - 1]
                validate(body, SCHEMAS[body["@type"]])
                return body
            time.sleep(0.05)
        raise AssertionError(f"no message {count} at {path}: {self.received}")

    def stop(self) -> None:
        self._site.stop()


SCHEMAS = {
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
    "TransferSuspensionMessage": "transfer/transfer-suspension-message-schema.json",
    "TransferTerminationMessage": "transfer/transfer-termination-message-schema.json",
    "TransferCompletionMessage": "transfer/transfer-completion-message-schema.json",
}


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSpace]:
    root = tmp_path_factory.mktemp("dsp-transfer")
    (root / "data.bin").write_bytes(os.urandom(SIZE))
    (root / "big.bin").write_bytes(os.urandom(BIG))
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
        publish(
            sp,
            "gov",
            {
                "id": "big",
                "title": "big",
                "grade": "general",
                "tags": ["mobility"],
                "source": {"kind": "file", "path": "big.bin"},
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


def agreement(space: LocalSpace, consumer: str = "a", product: str = "flows") -> str:
    """A FINALIZED agreement of ``consumer`` with gov, negotiated over DSP."""
    n = admin(space, consumer).StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider="gov",
            product_id=product,
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


def started(
    space: LocalSpace, callback: Callback, agreement_id: str = ""
) -> tuple[str, str, str, str]:
    """A process started by a's foreign-style client: (providerPid, consumerPid, endpoint,
    token)."""
    consumer_pid = f"urn:uuid:test-{next(_counter)}-{time.time_ns()}"
    answer = client(space).call(
        "POST",
        "/transfers/request",
        request(consumer_pid, agreement_id or agreement(space), callback.url),
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


# -- provider-initiated termination, suspension both ways ---------------------------------


def transfer_id_of(provider_pid: str) -> str:
    return provider_pid.removeprefix("urn:tds:process:")


def wait_for(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.05)


def gov_state(space: LocalSpace, transfer_id: str) -> str:
    return str(dict(dsp_rows(space))[transfer_id])


def revoke(space: LocalSpace, agreement_id: str, reason: str = "licence withdrawn") -> None:
    admin(space, "gov").RevokeAgreement(
        admin_pb2.RevokeAgreementRequest(agreement_id=agreement_id, reason=reason), timeout=30
    )


def control(space: LocalSpace, who: str, verb: str, transfer_id: str, reason: str = "") -> Any:
    stub = admin(space, who)
    call = stub.SuspendTransfer if verb == "suspend" else stub.ResumeTransfer
    return call(
        admin_pb2.TransferControlRequest(transfer_id=transfer_id, reason=reason), timeout=30
    )


def in_flight(space: LocalSpace, endpoint: str, token: str, action: Any) -> tuple[int, bool]:
    """Start a pull, take its first MiB, run ``action``, then read on: the bytes received
    and whether the body came whole."""
    import asyncio

    import aiohttp

    c = client(space, "a", token=None)

    async def run() -> tuple[int, bool]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                endpoint,
                headers={"Authorization": f"Bearer {token}"},
                ssl=c.ssl_context(),
                server_hostname=c.server_name,
            ) as response,
        ):
            assert response.status == 200
            got = len(await response.content.readexactly(1 << 20))
            await asyncio.get_running_loop().run_in_executor(None, action)
            await asyncio.sleep(1.5)  # past the data plane's next look at the process
            try:
                while block := await response.content.read(1 << 20):
                    got += len(block)
            except aiohttp.ClientPayloadError:
                return got, False
            return got, True

    return asyncio.run(run())


def test_transfer_termination_message_the_provider_revokes_the_agreement(
    space: LocalSpace, callback: Callback
) -> None:
    agreement_id = agreement(space)
    provider_pid, consumer_pid, endpoint, token = started(space, callback, agreement_id)
    assert pull(space, endpoint, token, range_="bytes=0-9")[0] == 206
    revoke(space, agreement_id)
    # At once: the token is spent, the process TERMINATED, the consumer told (schema-valid).
    status, body, _ = pull(space, endpoint, token)
    assert status == 403
    error_of(status, body, "TERMINATED")
    end = callback.message_at(f"/transfers/{consumer_pid}/termination")
    assert (end["providerPid"], end["consumerPid"]) == (provider_pid, consumer_pid)
    assert end["code"] == "agreement_revoked" and "licence withdrawn" in end["reason"][0]
    assert conforms(client(space).call("GET", f"/transfers/{provider_pid}"))["state"] == (
        "TERMINATED"
    )
    tid = transfer_id_of(provider_pid)
    assert [r[1] for r in provider_transfers(space) if r[0] == tid] == ["terminated"]
    assert [e for e in entries(space, "gov", "transfer.terminated") if e["data"]["transfer"] == tid]
    # Told once; the consumer's termination of it now changes nothing.
    time.sleep(0.3)
    sent = [p for p, _ in callback.received if p == f"/transfers/{consumer_pid}/termination"]
    assert len(sent) == 1
    again = client(space).call(
        "POST",
        f"/transfers/{provider_pid}/termination",
        message("TransferTerminationMessage", provider_pid, consumer_pid),
    )
    assert conforms(again)["state"] == "TERMINATED"


def test_transfers_data_a_pull_in_flight_stops_when_the_agreement_is_revoked(
    space: LocalSpace, callback: Callback
) -> None:
    agreement_id = agreement(space, product="big")
    _, consumer_pid, endpoint, token = started(space, callback, agreement_id)
    got, whole = in_flight(space, endpoint, token, lambda: revoke(space, agreement_id))
    assert not whole and got < BIG
    callback.message_at(f"/transfers/{consumer_pid}/termination")
    assert pull(space, endpoint, token, range_=f"bytes={got}-")[0] == 403


def test_transfers_data_a_pull_in_flight_stops_when_the_provider_suspends(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, _, endpoint, token = started(space, callback, agreement(space, product="big"))
    tid = transfer_id_of(provider_pid)
    got, whole = in_flight(space, endpoint, token, lambda: control(space, "gov", "suspend", tid))
    assert not whole and got < BIG
    status, body, _ = pull(space, endpoint, token, range_=f"bytes={got}-")
    assert status == 403
    error_of(status, body, "SUSPENDED")
    control(space, "gov", "resume", tid)
    status, rest, _ = pull(space, endpoint, token, range_=f"bytes={got}-")
    assert status == 206 and len(rest) == BIG - got


def test_transfer_termination_message_the_provider_admin_stops_a_transfer(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, endpoint, token = started(space, callback)
    tid = transfer_id_of(provider_pid)
    info = admin(space, "gov").TerminateTransfer(
        admin_pb2.TerminateOwnTransferRequest(transfer_id=tid, reason="operator stop"), timeout=30
    )
    assert info.state == "terminated"
    end = callback.message_at(f"/transfers/{consumer_pid}/termination")
    assert "operator stop" in end["reason"][0]
    assert pull(space, endpoint, token)[0] == 403
    assert gov_state(space, tid) == "TERMINATED"


def paused(space: LocalSpace, who: str, tid: str) -> list[tuple[str, str, str]]:
    """What ``who`` logged of transfer ``tid``'s suspensions and resumptions, in order:
    ``(kind, by, reason)``."""
    return [
        (e["kind"], e["data"]["by"], e["data"].get("reason", ""))
        for e in entries(space, who)
        if e["kind"] in ("transfer.suspended", "transfer.resumed") and e["data"]["transfer"] == tid
    ]


def test_transfer_suspension_message_the_provider_suspends_and_resumes(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, endpoint, token = started(space, callback)
    tid = transfer_id_of(provider_pid)
    assert control(space, "gov", "suspend", tid, "maintenance").state == "suspended"
    assert paused(space, "gov", tid) == [("transfer.suspended", "provider", "maintenance")]
    told = callback.message_at(f"/transfers/{consumer_pid}/suspension")
    assert (told["providerPid"], told["reason"]) == (provider_pid, ["maintenance"])
    status, body, _ = pull(space, endpoint, token)
    assert status == 403
    error_of(status, body, "SUSPENDED")
    a = client(space)
    before = len(entries(space, "gov"))
    # The consumer cannot undo the provider's suspension, nor complete a suspended process
    # (SUSPENDED → COMPLETED is no transition of the state machine).
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/start",
            message("TransferStartMessage", provider_pid, consumer_pid),
        ),
        400,
        "only the provider resumes it",
    )
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/completion",
            message("TransferCompletionMessage", provider_pid, consumer_pid),
        ),
        400,
        "cannot complete",
    )
    # A suspension message to a suspended process: the same answer, nothing changed.
    again = a.call(
        "POST",
        f"/transfers/{provider_pid}/suspension",
        message("TransferSuspensionMessage", provider_pid, consumer_pid),
    )
    assert conforms(again)["state"] == "SUSPENDED"
    with pytest.raises(grpc.RpcError) as err:
        control(space, "gov", "suspend", tid)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (gov_state(space, tid), len(entries(space, "gov"))) == ("SUSPENDED", before)
    # Resumed: the start message carries the data address again; the pull is served.
    assert control(space, "gov", "resume", tid).state == "started"
    assert paused(space, "gov", tid)[1:] == [("transfer.resumed", "provider", "")]
    start = callback.message_at(f"/transfers/{consumer_pid}/start", count=2)
    assert data_address(start) == (endpoint, token)
    status, body, _ = pull(space, endpoint, token)
    assert status == 200 and len(body) == SIZE


def test_transfers_providerpid_start_post_only_the_side_that_suspended_resumes(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, _, _ = started(space, callback)
    tid = transfer_id_of(provider_pid)
    a = client(space)
    a.call(
        "POST",
        f"/transfers/{provider_pid}/suspension",
        message("TransferSuspensionMessage", provider_pid, consumer_pid),
    )
    [(kind, by, reason)] = paused(space, "gov", tid)
    assert (kind, by) == ("transfer.suspended", "consumer") and reason
    with pytest.raises(grpc.RpcError) as err:
        control(space, "gov", "resume", tid)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only the side that suspended" in str(err.value.details())
    assert gov_state(space, tid) == "SUSPENDED"
    assert len(paused(space, "gov", tid)) == 1  # the refused resumption logged nothing
    resumed = a.call(
        "POST",
        f"/transfers/{provider_pid}/start",
        message("TransferStartMessage", provider_pid, consumer_pid),
    )
    assert conforms(resumed)["state"] == "STARTED"
    assert paused(space, "gov", tid)[1:] == [("transfer.resumed", "consumer", "")]
    # Nothing was sent for the consumer's own suspension and resumption.
    time.sleep(0.3)
    assert not [
        p
        for p, _ in callback.received
        if p.endswith(("/suspension", "/termination")) and consumer_pid in p
    ]


def test_transfer_suspension_message_refused_for_a_transfer_over_grpc(space: LocalSpace) -> None:
    final = list(
        admin(space, "a").Transfer(
            admin_pb2.TransferRequest(agreement_id=agreement(space)), timeout=120
        )
    )[-1]
    with pytest.raises(grpc.RpcError) as err:
        control(space, "gov", "suspend", final.transfer_id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not run over the Dataspace Protocol" in str(err.value.details())


# -- two tds connectors: the consumer's pull through a suspension, a revocation ----------


class Held:
    """A transfer a (a tds consumer) runs from gov over DSP, held before its first pull
    until released."""

    def __init__(self, space: LocalSpace, monkeypatch: pytest.MonkeyPatch) -> None:
        transfers = space.nodes["a"].dsp_transfers
        assert transfers is not None and transfers.consumer is not None
        consumer = transfers.consumer
        self.store = transfers.side.store
        self.gate, entered = threading.Event(), threading.Event()
        original = consumer._fill

        def fill(*args: Any) -> None:
            entered.set()
            assert self.gate.wait(60)
            original(*args)

        monkeypatch.setattr(consumer, "_fill", fill)
        self.agreement_id = agreement(space)
        self.events: list[Any] = []
        self.failure: list[grpc.RpcError] = []

        def run() -> None:
            try:
                for e in admin(space, "a").Transfer(
                    admin_pb2.TransferRequest(
                        agreement_id=self.agreement_id, dsp_url=provider_url(space)
                    ),
                    timeout=120,
                ):
                    self.events.append(e)
            except grpc.RpcError as exc:
                self.failure.append(exc)

        self._thread = threading.Thread(target=run)
        self._thread.start()
        assert entered.wait(30)
        self.tid = str(dsp_rows(space)[-1][0])

    def consumer_state(self) -> str:
        return self.store.by_peer("consumer", "gov", self.tid).state

    def waiting(self, who: str) -> bool:
        return any(e.event == "resuming" and f"suspended by {who}" in e.detail for e in self.events)

    def release(self) -> None:
        self.gate.set()

    def join(self) -> None:
        self.gate.set()
        self._thread.join(90)
        assert not self._thread.is_alive()


def test_transfers_consumerpid_suspension_post_a_tds_consumer_waits_for_the_resumption(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = Held(space, monkeypatch)
    try:
        control(space, "gov", "suspend", held.tid, "maintenance")
        wait_for(lambda: held.consumer_state() == "SUSPENDED")
        held.release()
        wait_for(lambda: held.waiting("the provider"))
        control(space, "gov", "resume", held.tid)
    finally:
        held.join()
    assert not held.failure and held.events[-1].event == "completed"
    assert (held.consumer_state(), gov_state(space, held.tid)) == ("COMPLETED", "COMPLETED")
    # Both sides logged the provider's suspension and resumption.
    logged = [
        ("transfer.suspended", "provider", "maintenance"),
        ("transfer.resumed", "provider", ""),
    ]
    assert paused(space, "gov", held.tid) == paused(space, "a", held.tid) == logged


def test_transfers_providerpid_suspension_post_a_tds_consumer_suspends_and_resumes(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = Held(space, monkeypatch)
    try:
        assert control(space, "a", "suspend", held.tid, "disk full").state == "suspended"
        wait_for(lambda: gov_state(space, held.tid) == "SUSPENDED")
        # gov did not suspend it: gov cannot resume it.
        with pytest.raises(grpc.RpcError) as err:
            control(space, "gov", "resume", held.tid)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        held.release()
        wait_for(lambda: held.waiting("this connector"))
        control(space, "a", "resume", held.tid)
    finally:
        held.join()
    assert not held.failure and held.events[-1].event == "completed"
    assert (held.consumer_state(), gov_state(space, held.tid)) == ("COMPLETED", "COMPLETED")
    logged = [("transfer.suspended", "consumer", "disk full"), ("transfer.resumed", "consumer", "")]
    assert paused(space, "gov", held.tid) == paused(space, "a", held.tid) == logged


def test_transfers_consumerpid_termination_post_a_tds_consumer_stops_on_revocation(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = Held(space, monkeypatch)
    try:
        revoke(space, held.agreement_id)
        wait_for(lambda: held.consumer_state() == "TERMINATED")
    finally:
        held.join()
    assert held.failure and held.failure[0].code() == grpc.StatusCode.PERMISSION_DENIED
    node = space.nodes["a"]
    assert node.db is not None
    with node.db.transaction() as tx:
        assert tx.one("SELECT state FROM transfer WHERE id = ?", (held.tid,)) == ("terminated",)
    assert gov_state(space, held.tid) == "TERMINATED"


# -- peer-controlled values ---------------------------------------------------------------


def test_transfers_data_token_of_another_transfer_is_refused(
    space: LocalSpace, callback: Callback
) -> None:
    _, _, _, token = started(space, callback)
    _, _, other_endpoint, _ = started(space, callback)
    status, body, _ = pull(space, other_endpoint, token)
    assert status == 401
    error_of(status, body, "not the data address token of this transfer")


def test_object_not_found_a_message_naming_another_process_changes_nothing(
    space: LocalSpace, callback: Callback
) -> None:
    provider_pid, consumer_pid, _, _ = started(space, callback)
    other_pid, _, _, _ = started(space, callback)
    a = client(space)
    # Our process in the path, another consumerPid in the message: as a missing process.
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/suspension",
            message("TransferSuspensionMessage", provider_pid, "urn:uuid:someone-else"),
        ),
        404,
        "no such transfer process",
    )
    # The path and the message's providerPid disagree.
    refused(
        a.call(
            "POST",
            f"/transfers/{provider_pid}/termination",
            message("TransferTerminationMessage", other_pid, consumer_pid),
        ),
        400,
        "not the process in the path",
    )
    for pid in (provider_pid, other_pid):
        assert conforms(a.call("GET", f"/transfers/{pid}"))["state"] == "STARTED"


def test_transfers_request_post_callback_with_credentials_or_on_another_connector(
    space: LocalSpace, callback: Callback
) -> None:
    agreement_id = agreement(space)
    with_user = callback.url.replace("https://", "https://gov@")
    refused(
        client(space).call(
            "POST", "/transfers/request", request("urn:uuid:cred", agreement_id, with_user)
        ),
        400,
        "credentials",
    )
    # On a's registered host but b's binding (a shared host): gov's messages go there only
    # to a server presenting a's certificate, so b is never sent a's start message.
    b_binding = space.nodes["b"].dsp
    assert b_binding is not None
    answer = client(space).call(
        "POST",
        "/transfers/request",
        request("urn:uuid:elsewhere", agreement_id, b_binding.base_url),
    )
    assert answer.status == 201
    tid = transfer_id_of(conforms(answer)["providerPid"])
    node = space.nodes["gov"]
    assert node.db is not None

    def last_error() -> str:
        assert node.db is not None
        with node.db.transaction() as tx:
            row = tx.one(
                "SELECT last_error FROM outbox WHERE message_id = ?", (f"dsp-start-{tid}",)
            )
        return str(row[0]) if row else ""

    wait_for(lambda: last_error() != "")
    assert "certificate" in last_error().lower() or "ssl" in last_error().lower(), last_error()
    b = space.nodes["b"]
    assert b.db is not None
    with b.db.transaction() as tx:
        assert tx.one("SELECT count(*) FROM dsp_transfer WHERE peer_pid = ?", (tid,)) == (0,)
    admin(space, "gov").TerminateTransfer(
        admin_pb2.TerminateOwnTransferRequest(transfer_id=tid, reason="test over"), timeout=30
    )


def test_transfers_consumerpid_start_post_resumption_is_checked_as_the_first_start(
    space: LocalSpace,
) -> None:
    from connector.dsp.transfers import DspTransfer

    transfers = space.nodes["a"].dsp_transfers
    assert transfers is not None
    agreement_id = agreement(space)
    cid = f"dspc-{'5' * 32}"
    tid = "tr-" + "4" * 32
    pid, cpid = f"urn:tds:process:{tid}", f"urn:tds:process:{cid}"
    endpoint = f"{provider_url(space)}/transfers/{pid}/data"
    now = int(time.time() * 1000)
    # a's process as gov's first start message left it: STARTED, pulling.
    transfers.side.store.add(
        DspTransfer(
            transfer_id=cid,
            role="consumer",
            counterparty="gov",
            peer_pid=tid,
            callback=provider_url(space),
            request_digest="",
            state="STARTED",
            token_expires_ms=0,
            created_ms=now,
            updated_ms=now,
            data_address=json.dumps(
                {"agreement": agreement_id, "endpoint": endpoint, "token": "first"}
            ),
        )
    )
    gov, b = consumer_client(space, "gov"), consumer_client(space, "b")
    refused(
        b.call(
            "POST",
            f"/transfers/{cpid}/suspension",
            message("TransferSuspensionMessage", pid, cpid),
        ),
        404,
        "no such transfer process",
    )
    suspended = gov.call(
        "POST", f"/transfers/{cpid}/suspension", message("TransferSuspensionMessage", pid, cpid)
    )
    assert conforms(suspended)["state"] == "SUSPENDED"

    def address(value: str, at: str = endpoint) -> dict[str, Any]:
        return {
            "@type": "DataAddress",
            "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
            "endpoint": at,
            "endpointProperties": [
                {"@type": "EndpointProperty", "name": "authorization", "value": value}
            ],
        }

    cases = [
        (message("TransferStartMessage", pid, cpid), "dataAddress"),
        (
            message(
                "TransferStartMessage", pid, cpid, dataAddress=address("x", "https://localhost:1/x")
            ),
            "registered",
        ),
        (
            message(
                "TransferStartMessage",
                pid,
                cpid,
                dataAddress=address("x"),
                **{MANIFEST: json.dumps({"transfer_id": "tr-" + "3" * 32})},
            ),
            "another transfer",
        ),
    ]
    for body, fragment in cases:
        refused(gov.call("POST", f"/transfers/{cpid}/start", body), 400, fragment)
    row = transfers.side.store.get(cid)
    assert row.state == "SUSPENDED" and json.loads(row.data_address)["token"] == "first"
    resumed = gov.call(
        "POST",
        f"/transfers/{cpid}/start",
        message("TransferStartMessage", pid, cpid, dataAddress=address("second")),
    )
    assert conforms(resumed)["state"] == "STARTED"
    assert json.loads(transfers.side.store.get(cid).data_address)["token"] == "second"
    # a suspends it itself: gov's start message does not resume it.
    transfers.side.store.move(
        cid,
        expect=frozenset({"STARTED"}),
        now_ms=now,
        state="SUSPENDED",
        suspended_by="consumer",
    )
    refused(
        gov.call(
            "POST",
            f"/transfers/{cpid}/start",
            message("TransferStartMessage", pid, cpid, dataAddress=address("third")),
        ),
        400,
        "this consumer suspended",
    )
    assert transfers.side.store.get(cid).state == "SUSPENDED"


def test_transfer_suspension_message_tds_data_suspend_and_resume_from_the_cli(
    space: LocalSpace, callback: Callback, capsys: pytest.CaptureFixture[str]
) -> None:
    from connector.cli.main import main

    provider_pid, consumer_pid, endpoint, token = started(space, callback)
    tid = transfer_id_of(provider_pid)
    config = str(space.root / "gov.toml")
    capsys.readouterr()
    assert main(["data", "suspend", tid, "--reason", "audit", "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "suspended"
    assert callback.message_at(f"/transfers/{consumer_pid}/suspension")["reason"] == ["audit"]
    assert pull(space, endpoint, token)[0] == 403
    # Twice: one clear line, nothing changed.
    assert main(["data", "suspend", tid, "--config", config]) == 1
    assert "only a STARTED one can be suspended" in capsys.readouterr().err
    assert main(["data", "resume", tid, "--config", config]) == 0
    assert f"Transfer {tid} is started" in capsys.readouterr().out
    callback.message_at(f"/transfers/{consumer_pid}/start", count=2)
    assert pull(space, endpoint, token, range_="bytes=0-0")[0] == 206


def test_transfer_termination_message_a_tds_consumer_gives_up_a_long_suspension(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfers = space.nodes["a"].dsp_transfers
    assert transfers is not None and transfers.consumer is not None
    monkeypatch.setattr(transfers.consumer, "suspended_wait", 1.0)
    held = Held(space, monkeypatch)
    try:
        control(space, "gov", "suspend", held.tid)
        wait_for(lambda: held.consumer_state() == "SUSPENDED")
    finally:
        held.join()
    assert held.failure and "stayed SUSPENDED" in str(held.failure[0].details())
    # Both sides TERMINATED: the consumer told the provider (its termination message).
    assert (held.consumer_state(), gov_state(space, held.tid)) == ("TERMINATED", "TERMINATED")
    ended = [
        e for e in entries(space, "gov", "transfer.terminated") if e["data"]["transfer"] == held.tid
    ]
    assert ended and "stayed SUSPENDED" in ended[0]["data"]["reason"]


class _Killed(BaseException):
    """The consumer connector's process ending mid-pull: nothing it holds is touched (no
    handler of the product catches it, as none runs when a process is killed)."""


def test_transfers_data_a_tds_consumer_resumes_its_pull_after_a_restart(
    space: LocalSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    transfers = space.nodes["a"].dsp_transfers
    assert transfers is not None and transfers.consumer is not None
    original = transfers.consumer._fill

    def fill_then_die(row: Any, t: Any, asm: Any, progress: Any) -> None:
        def dying(p: Any) -> None:
            progress(p)
            if p.event == "receiving" and asm.received:
                raise _Killed

        original(row, t, asm, dying)

    monkeypatch.setattr(transfers.consumer, "_fill", fill_then_die)
    died: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    first = list(
        admin(space, "a").Transfer(
            admin_pb2.TransferRequest(
                agreement_id=agreement(space, product="big"), dsp_url=provider_url(space)
            ),
            timeout=120,
        )
    )
    assert died == [_Killed] and first[-1].event == "receiving"
    tid, held = first[-1].transfer_id, first[-1].received
    assert 0 < held < BIG
    restart(space, "a")
    resumed = list(
        admin(space, "a").Transfer(admin_pb2.TransferRequest(transfer_id=tid), timeout=120)
    )
    final = resumed[-1]
    assert final.event == "completed" and final.transfer.state == "completed", final
    # From the bytes held: the pull went on with a Range, not from the first byte.
    assert min(e.received for e in resumed if e.event == "receiving") >= held
    assert (gov_state(space, tid), final.transfer.sha256) == ("COMPLETED", final.sha256)
    for who in ("gov", "a"):
        receipts = [
            e for e in entries(space, who, "transfer.receipt") if e["data"]["transfer"] == tid
        ]
        assert len(receipts) == 1
    # Resuming it again: the completed transfer, nothing pulled or logged again.
    before = len(entries(space, "a"))
    again = list(admin(space, "a").Transfer(admin_pb2.TransferRequest(transfer_id=tid), timeout=30))
    assert again[-1].event == "completed" and len(entries(space, "a")) == before
