"""Helpers for tests that move data: publish, agree, and read a connector's log."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from connector._proto.tds.v1 import admin_pb2, admin_pb2_grpc
from connector.demo.space import LocalSpace
from connector.node.clients import admin_channel

FAR = 4_000_000_000_000_000_000


def admin(space: LocalSpace, who: str) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(admin_channel(space.configs[who]))


def publish(space: LocalSpace, provider: str, description: dict[str, Any], base: Path) -> None:
    admin(space, provider).AddProduct(
        admin_pb2.AddProductRequest(
            description=json.dumps(description), format="json", base_dir=str(base)
        ),
        timeout=10,
    )


def offer(**kw: Any) -> dict[str, Any]:
    return {
        "id": "o1",
        "purposes": ["research"],
        "valid_from_ns": 0,
        "valid_until_ns": FAR,
        **kw,
    }


def agree(
    space: LocalSpace,
    provider: str,
    consumer: str,
    product: str,
    *,
    purpose: str = "research",
    approve: bool = False,
) -> str:
    """Negotiate to FINALIZED (approving as the provider if asked); the agreement id."""
    mine = admin(space, consumer).StartNegotiation(
        admin_pb2.StartNegotiationRequest(
            provider=provider, product_id=product, offer_id="o1", purpose=purpose
        ),
        timeout=10,
    )
    deadline = time.monotonic() + 20
    approved = False
    while time.monotonic() < deadline:
        info = admin(space, consumer).GetNegotiation(
            admin_pb2.NegotiationRef(pid=mine.pid), timeout=10
        )
        if info.state == "FINALIZED":
            return info.agreement_id
        assert info.state != "TERMINATED", list(info.reasons)
        if approve and not approved and info.counterparty_pid:
            admin(space, provider).ApproveNegotiation(
                admin_pb2.NegotiationRef(pid=info.counterparty_pid), timeout=10
            )
            approved = True
        time.sleep(0.05)
    raise AssertionError("negotiation did not finalize")


def entries(space: LocalSpace, who: str, kind: str = "") -> list[dict[str, Any]]:
    log = space.nodes[who].log
    assert log is not None
    found = [json.loads(body) for _, body in log.entries(0, log.size)]
    return [e for e in found if not kind or e["kind"] == kind]


def logged_soon(
    space: LocalSpace, who: str, kind: str, timeout: float = 5.0, **data: object
) -> list[dict[str, Any]]:
    """The log entries of ``kind`` whose data has the values ``data`` gives, once there
    is one (or ``timeout`` passed: then none)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            e
            for e in entries(space, who, kind)
            if all(e["data"].get(k) == v for k, v in data.items())
        ]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def altered(signed: str, **terms: object) -> str:
    """A signed document (an agreement) with its payload's terms changed and its
    signatures kept, as someone who can write the database would leave it."""
    doc = json.loads(signed)
    payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
    payload.update(terms)
    doc["payload"] = (
        base64.urlsafe_b64encode(
            json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    return json.dumps(doc, separators=(",", ":"))
