"""Transfer processes over the DSP binding: their records, data-address tokens, messages.

A transfer process run over DSP is a tds transfer (``connector.transfer.store``: the same
record, metering and audit entries as one started over gRPC) plus a ``dsp_transfer`` row
holding what DSP adds: the peer's process id, its callback address and the DSP state.
Messages to the peer go through the negotiation outbox (written with the transition that
causes them, retried with backoff), keyed by the agreement's negotiation and marked
:data:`TRANSFER_METHOD`; ``connector.dsp.transfer_delivery`` sends them.

The data address's token is not stored: it is an HMAC, under a key derived from the
connector's signing key (every replica holds it), of the transfer, the participant it was
issued to and its expiry — scoped to one transfer and one participant, checked in
constant time, useless once the transfer is no longer ``STARTED`` or past its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.exc import IntegrityError

from connector.errors import NotFound, PreconditionFailed
from connector.negotiation.dsp import CONTEXT, process_id
from connector.negotiation.negotiator import DSP_METHOD
from connector.negotiation.outbox import Pending
from connector.store.database import Database, RawTransaction

__all__ = [
    "COMPLETED",
    "DATA_PATH",
    "FORMAT",
    "MANIFEST",
    "PROVIDER_STATE_SERVED",
    "REQUESTED",
    "SIGNED_RECEIPT",
    "STARTED",
    "SUSPENDED",
    "TERMINATED",
    "TRANSFER_METHOD",
    "DataTokens",
    "DspTransfer",
    "DspTransferStore",
    "completion_message",
    "process_message",
    "request_message",
    "start_message",
    "suspension_message",
    "termination_message",
]

REQUESTED, STARTED, SUSPENDED, COMPLETED, TERMINATED = (
    "REQUESTED",
    "STARTED",
    "SUSPENDED",
    "COMPLETED",
    "TERMINATED",
)
FINAL = frozenset({COMPLETED, TERMINATED})
PROVIDER_STATE_SERVED = frozenset({STARTED})
"""The DSP states in which the provider serves the data address."""

FORMAT = "HttpData-PULL"
"""The one transfer format served: the consumer pulls over HTTPS from the data address."""
ENDPOINT_TYPE = "https://w3id.org/idsa/v4.1/HTTP"
TRANSFER_METHOD = DSP_METHOD + "Transfer"
"""Outbox methods of transfer messages (``dsp:TransferStart`` …), beside the negotiation's."""
SIGNED_RECEIPT = "urn:tds:signedReceipt"
"""tds profile: the consumer's signed receipt in a ``TransferCompletionMessage``, the
provider's countersigned one in its answer (an absolute IRI, kept by JSON-LD processing)."""
MANIFEST = "urn:tds:transferManifest"
"""tds profile: the transfer's manifest (size, SHA-256, log index…) in a
``TransferStartMessage``, what a tds consumer checks and signs its receipt over."""
DATA_PATH = "/transfers/{pid}/data"


def data_path(transfer_id: str) -> str:
    """The data plane's path of one transfer."""
    return DATA_PATH.format(pid=process_id(transfer_id))


@dataclass(frozen=True)
class DspTransfer:
    """What DSP adds to a transfer (see the module's docstring)."""

    transfer_id: str
    """Provider: the tds transfer id. Consumer: its own process id (before the provider's
    start message names the transfer)."""
    role: str
    counterparty: str
    peer_pid: str
    callback: str
    request_digest: str
    state: str
    token_expires_ms: int
    created_ms: int
    updated_ms: int
    data_address: str = ""
    suspended_by: str = ""
    """While ``SUSPENDED``: the role (``provider``/``consumer``) that suspended it, the
    only one whose start message resumes it."""


_COLUMNS = (
    "transfer_id, role, counterparty, peer_pid, callback, request_digest, state,"
    " token_expires_ms, created_ms, updated_ms, data_address, suspended_by"
)


class DspTransferStore:
    """The ``dsp_transfer`` rows, and the outbox messages their transitions queue."""

    def __init__(self, db: Database, hand_over: Callable[[list[Pending]], None]) -> None:
        self._db = db
        self._hand_over = hand_over

    def add(self, row: DspTransfer) -> DspTransfer | None:
        """Record a new process; ``None`` when the peer's process id is taken already."""
        try:
            with self._db.transaction() as tx:
                tx.execute(
                    f"INSERT INTO dsp_transfer ({_COLUMNS})"  # noqa: S608
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.transfer_id,
                        row.role,
                        row.counterparty,
                        row.peer_pid,
                        row.callback,
                        row.request_digest,
                        row.state,
                        row.token_expires_ms,
                        row.created_ms,
                        row.updated_ms,
                        row.data_address,
                        row.suspended_by,
                    ),
                ).close()
        except IntegrityError:
            return None
        return row

    def forget(self, transfer_id: str) -> None:
        """Remove a process its request did not create (the decision refused it)."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM dsp_transfer WHERE transfer_id = ?", (transfer_id,)).close()

    def get(self, transfer_id: str) -> DspTransfer:
        """One process by this connector's id; ``NotFound`` if none."""
        with self._db.transaction() as tx:
            found = tx.one(
                f"SELECT {_COLUMNS} FROM dsp_transfer WHERE transfer_id = ?",  # noqa: S608
                (transfer_id,),
            )
        if found is None:
            raise NotFound("no such transfer process")
        return DspTransfer(*found)

    def by_peer(self, role: str, counterparty: str, peer_pid: str) -> DspTransfer:
        """One process by the peer's process id; ``NotFound`` if none."""
        with self._db.transaction() as tx:
            found = tx.one(
                f"SELECT {_COLUMNS} FROM dsp_transfer"  # noqa: S608
                " WHERE role = ? AND counterparty = ? AND peer_pid = ?",
                (role, counterparty, peer_pid),
            )
        if found is None:
            raise NotFound("no such transfer process")
        return DspTransfer(*found)

    def of_transfer(self, transfer_id: str, counterparty: str, role: str) -> DspTransfer:
        """The process under a tds transfer: the provider's has the transfer's id, the
        consumer's names it as its peer's (the provider's) process; ``NotFound`` if the
        transfer was not run over the Dataspace Protocol."""
        if role == "provider":
            found = self.get(transfer_id)
            if found.role != role:
                raise NotFound("no such transfer process")
            return found
        return self.by_peer(role, counterparty, transfer_id)

    def open_under(self, agreement_id: str) -> list[DspTransfer]:
        """The provider's processes under an agreement that have not ended."""
        columns = ", ".join(f"d.{c.strip()}" for c in _COLUMNS.split(","))
        with self._db.transaction() as tx:
            found = tx.all(
                f"SELECT {columns} FROM dsp_transfer d JOIN transfer t"  # noqa: S608
                " ON t.id = d.transfer_id WHERE d.role = 'provider' AND t.agreement_id = ?"
                " AND d.state IN ('REQUESTED', 'STARTED', 'SUSPENDED')",
                (agreement_id,),
            )
        return [DspTransfer(*r) for r in found]

    def move(
        self,
        transfer_id: str,
        *,
        expect: frozenset[str],
        now_ms: int,
        queue: Sequence[tuple[str, str, str, dict[str, Any]]] = (),
        log: Callable[[RawTransaction], object] | None = None,
        **values: Any,
    ) -> DspTransfer:
        """Set ``values`` (``state``, ``peer_pid``…) if the process is in one of ``expect``
        states, and queue ``queue`` (message id, target, method, payload; the negotiation
        is the agreement's) and append ``log``'s entries (``AuditLog.prepare``) in the same
        transaction; ``PreconditionFailed`` naming the state it is in otherwise. Queued
        messages are handed over once committed."""
        allowed = {"state", "peer_pid", "data_address", "token_expires_ms", "suspended_by"}
        if set(values) - allowed:
            raise TypeError(f"not a column move() sets: {sorted(set(values) - allowed)}")
        lock = " FOR UPDATE" if self._db.postgres else ""
        queued: list[Pending] = []
        with self._db.transaction() as tx:
            found = tx.one(
                f"SELECT {_COLUMNS} FROM dsp_transfer WHERE transfer_id = ?{lock}",  # noqa: S608
                (transfer_id,),
            )
            if found is None:
                raise NotFound("no such transfer process")
            row = DspTransfer(*found)
            if row.state not in expect:
                raise PreconditionFailed(
                    f"the transfer process is {row.state}: the message is out of state order"
                )
            sets = {**values, "updated_ms": now_ms}
            tx.execute(
                f"UPDATE dsp_transfer SET {', '.join(f'{k} = ?' for k in sets)}"  # noqa: S608
                " WHERE transfer_id = ?",
                (*sets.values(), transfer_id),
            ).close()
            if log is not None:
                log(tx)
            for message_id, negotiation_pid, method, payload in queue:
                queued.append(
                    _queue(
                        tx, message_id, row.counterparty, method, payload, negotiation_pid, now_ms
                    )
                )
        if queued:
            self._hand_over(queued)
        return DspTransfer(**{**row.__dict__, **sets})


def _queue(
    tx: RawTransaction,
    message_id: str,
    target: str,
    method: str,
    payload: dict[str, Any],
    negotiation_pid: str,
    now_ms: int,
) -> Pending:
    """An outbox row, due at once (the hand-over sends it; the outbox retries it)."""
    data = json.dumps(payload, sort_keys=True).encode()
    found = tx.one(
        "INSERT INTO outbox (message_id, target, method, payload, negotiation_pid,"
        " attempts, next_attempt_ms, status, last_error, created_ms)"
        " VALUES (?, ?, ?, ?, ?, 0, ?, 'pending', '', ?) RETURNING id",
        (message_id, target, method, data, negotiation_pid, now_ms + 30_000, now_ms),
    )
    assert found is not None
    return Pending(int(found[0]), message_id, target, method, data, negotiation_pid, 0)


class DataTokens:
    """Data-address tokens (see the module's docstring)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_signing_key(cls, signing_key: Ed25519PrivateKey) -> DataTokens:
        """Under a key derived (HKDF-SHA256) from the participant's signing key."""
        raw = signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"tds dsp data tokens v1"
        ).derive(raw)
        return cls(key)

    def _mac(self, transfer_id: str, participant: str, expires_ms: int) -> bytes:
        message = "\0".join([transfer_id, participant, str(expires_ms)]).encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def issue(self, transfer_id: str, participant: str, expires_ms: int) -> str:
        """The token of one transfer for one participant until ``expires_ms``."""
        mac = self._mac(transfer_id, participant, expires_ms)
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def valid(self, token: str, transfer_id: str, participant: str, expires_ms: int) -> bool:
        """Whether ``token`` is the one issued for exactly these (constant time)."""
        expected = self.issue(transfer_id, participant, expires_ms)
        return hmac.compare_digest(token.encode(), expected.encode())


# -- messages (DSP 2025-1 transfer process; every one is schema-checked before it leaves) --


def _pids(provider_pid: str, consumer_pid: str) -> dict[str, Any]:
    return {"providerPid": process_id(provider_pid), "consumerPid": process_id(consumer_pid)}


def request_message(consumer_pid: str, agreement_id: str, callback: str) -> dict[str, Any]:
    """``TransferRequestMessage`` of an ``HttpData`` pull (no data address: the provider
    gives one in its start message)."""
    return {
        "@context": CONTEXT,
        "@type": "TransferRequestMessage",
        "consumerPid": process_id(consumer_pid),
        "agreementId": f"urn:tds:agreement:{agreement_id}",
        "format": FORMAT,
        "callbackAddress": callback,
    }


def process_message(provider_pid: str, consumer_pid: str, state: str) -> dict[str, Any]:
    """``TransferProcess``."""
    return {
        "@context": CONTEXT,
        "@type": "TransferProcess",
        **_pids(provider_pid, consumer_pid),
        "state": state,
    }


def start_message(
    provider_pid: str,
    consumer_pid: str,
    *,
    endpoint: str = "",
    token: str = "",
    expires_ms: int = 0,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``TransferStartMessage``: from the provider with the data address (and, tds
    profile, the manifest); from the consumer (resuming a suspended process) without."""
    message: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "TransferStartMessage",
        **_pids(provider_pid, consumer_pid),
    }
    if endpoint:
        message["dataAddress"] = {
            "@type": "DataAddress",
            "endpointType": ENDPOINT_TYPE,
            "endpoint": endpoint,
            "endpointProperties": [
                {"@type": "EndpointProperty", "name": "authorization", "value": token},
                {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
                {"@type": "EndpointProperty", "name": "expiresAt", "value": str(expires_ms)},
            ],
        }
    if manifest is not None:
        message[MANIFEST] = json.dumps(manifest, sort_keys=True)
    return message


def completion_message(provider_pid: str, consumer_pid: str, receipt: str = "") -> dict[str, Any]:
    """``TransferCompletionMessage`` (with the consumer's signed receipt: tds profile)."""
    message: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "TransferCompletionMessage",
        **_pids(provider_pid, consumer_pid),
    }
    if receipt:
        message[SIGNED_RECEIPT] = receipt
    return message


def termination_message(
    provider_pid: str, consumer_pid: str, reasons: Sequence[str], code: str = ""
) -> dict[str, Any]:
    """``TransferTerminationMessage``."""
    message: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "TransferTerminationMessage",
        **_pids(provider_pid, consumer_pid),
        "reason": [str(r)[:500] for r in reasons][:5] or ["terminated"],
    }
    if code:
        message["code"] = code
    return message


def suspension_message(
    provider_pid: str, consumer_pid: str, reasons: Sequence[str]
) -> dict[str, Any]:
    """``TransferSuspensionMessage``."""
    return {
        "@context": CONTEXT,
        "@type": "TransferSuspensionMessage",
        **_pids(provider_pid, consumer_pid),
        "reason": [str(r)[:500] for r in reasons][:5] or ["suspended"],
    }
