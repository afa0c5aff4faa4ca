"""SQLModel tables. Every change here needs a migration in ``migrations/versions``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Float, Index, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel

__all__ = [
    "CatalogListingRow",
    "ComputationRow",
    "ConsentRow",
    "DisclosureCountRow",
    "DisclosureReceiptRow",
    "DisclosureYearRow",
    "DspTransferRow",
    "InboxRow",
    "LogCheckpointRow",
    "LogEntryRow",
    "LogNodeRow",
    "MeteringRow",
    "NegotiationRow",
    "OperationGrantRow",
    "OutboxRow",
    "ParticipantRow",
    "ProductRow",
    "RevokedCertificateRow",
    "StreamSubscriptionRow",
    "StreamWindowRow",
    "TransferRow",
    "WitnessStateRow",
]


class ParticipantRow(SQLModel, table=True):
    """A participant in the operator's directory."""

    __tablename__ = "participant"

    id: str = Field(primary_key=True, max_length=63)
    role: str = Field(max_length=32)
    address: str = Field(default="", max_length=255)
    signing_public_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    certificate_pem: str = Field(sa_column=Column(Text, nullable=False))
    certificate_thumbprint: str = Field(max_length=64)
    certificate_serial: str = Field(max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    enrolled_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked: bool = False
    revoked_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    revoked_reason: str | None = Field(default=None, max_length=1024)


class RevokedCertificateRow(SQLModel, table=True):
    """A certificate that must no longer be accepted (revocation or replacement)."""

    __tablename__ = "revoked_certificate"

    serial: str = Field(primary_key=True, max_length=64)
    participant_id: str = Field(max_length=63, index=True)
    reason: str = Field(max_length=1024)
    revoked_at: int = Field(sa_column=Column(BigInteger, nullable=False))


class LogEntryRow(SQLModel, table=True):
    """One entry of the connector's transparency log (canonical JSON bytes)."""

    __tablename__ = "log_entry"

    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    kind: str = Field(max_length=64, index=True)
    parties: str = Field(max_length=1024)
    """Participant ids the entry names, as ``,a,b,`` so that one LIKE finds them."""
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class LogNodeRow(SQLModel, table=True):
    """The hash of a complete subtree of the log's Merkle tree (level 0: leaves)."""

    __tablename__ = "log_node"

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    """``level << 48 | index``: the subtree of ``2**level`` leaves from ``index << level``."""
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class LogCheckpointRow(SQLModel, table=True):
    """A checkpoint the log signed, with the cosignatures witnesses added."""

    __tablename__ = "log_checkpoint"

    seq: int | None = Field(default=None, primary_key=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class WitnessStateRow(SQLModel, table=True):
    """The latest checkpoint this participant verified and cosigned for another log."""

    __tablename__ = "witness_state"

    origin: str = Field(primary_key=True, max_length=255)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class ProductRow(SQLModel, table=True):
    """A data product this connector publishes (the validated description as JSON)."""

    __tablename__ = "product"

    id: str = Field(primary_key=True, max_length=63)
    grade: str = Field(max_length=16)
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class NegotiationRow(SQLModel, table=True):
    """One side's record of a contract negotiation."""

    __tablename__ = "negotiation"

    pid: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    counterparty: str = Field(max_length=63, index=True)
    counterparty_pid: str = Field(default="", max_length=64)
    product: str = Field(max_length=63)
    offer: str = Field(max_length=63)
    purpose: str = Field(max_length=128)
    state: str = Field(max_length=16, index=True)
    reasons: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    agreement_id: str | None = Field(default=None, max_length=64, index=True)
    agreement: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    revocation: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    terms: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    """JSON the contract decision fixed for the agreement (operation grant, consent)."""
    requester: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """JSON of the requesting subject and certificate serial, as verified at request time:
    kept while a provider's negotiation waits for approval, to decide again on approval."""
    peer_address: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """A negotiation over the Dataspace Protocol binding: the other side's https address
    (the provider's binding, or the consumer's callbackAddress); NULL: over gRPC."""
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class OutboxRow(SQLModel, table=True):
    """A message to another connector, sent until delivered (bounded retries)."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64, unique=True)
    target: str = Field(max_length=63)
    method: str = Field(max_length=64)
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    negotiation_pid: str = Field(default="", max_length=64)
    attempts: int = 0
    next_attempt_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    status: str = Field(default="pending", max_length=16, index=True)
    last_error: str = Field(default="", max_length=1024)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class InboxRow(SQLModel, table=True):
    """A message id already processed: a repeated delivery changes nothing."""

    __tablename__ = "inbox"

    message_id: str = Field(primary_key=True, max_length=64)
    sender: str = Field(max_length=63)
    received_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class CatalogListingRow(SQLModel, table=True):
    """A product listed in the operator's catalog index."""

    __tablename__ = "catalog_listing"

    provider: str = Field(primary_key=True, max_length=63)
    product_id: str = Field(primary_key=True, max_length=63)
    body: str = Field(sa_column=Column(Text, nullable=False))
    registration_code: str = Field(default="", max_length=64)
    registered_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class TransferRow(SQLModel, table=True):
    """One side's record of a transfer under an agreement.

    On the provider ``path`` is what is streamed (the source file, or the delivered form of
    a table fixed at start); on the consumer it is the holding being received or kept.
    """

    __tablename__ = "transfer"

    id: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    agreement_id: str = Field(max_length=64, index=True)
    product: str = Field(max_length=63)
    counterparty: str = Field(max_length=63, index=True)
    state: str = Field(max_length=16, index=True)
    push: bool = False
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    chunk_size: int
    format: str = Field(default="", max_length=8)
    fields: str = Field(default="null", sa_column=Column(Text, nullable=False))
    obligations: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    masks: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    """On the provider, for a record source: the decision's masks, with which any replica
    makes the delivered form again (a JSON object)."""
    decision_id: str = Field(default="", max_length=64)
    path: str = Field(default="", sa_column=Column(Text, nullable=False))
    source_mtime_ns: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    received: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    provider_log_index: int = Field(default=-1, sa_column=Column(BigInteger, nullable=False))
    consumer_log_index: int = Field(default=-1, sa_column=Column(BigInteger, nullable=False))
    receipt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    reason: str = Field(default="", max_length=512)
    started_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    ended_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    deleted_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class MeteringRow(SQLModel, table=True):
    """The provider's count of transfers and bytes under one agreement (limits, reports)."""

    __tablename__ = "metering"

    agreement_id: str = Field(primary_key=True, max_length=64)
    consumer: str = Field(max_length=63, index=True)
    product: str = Field(max_length=63)
    transfers: int = 0
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    completed: int = 0
    completed_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    max_transfers: int = 0
    max_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    computations: int = 0
    """Answers given (compute-to-data), reserved ones included."""
    epsilon_spent_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    """ε spent, in millionths: integers, so the budget's condition is exact in SQL."""
    epsilon_budget_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    """The agreement's ε budget in millionths (0: no differential privacy)."""
    messages: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    """Stream messages delivered (their bytes are in ``bytes``)."""
    max_messages: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    """The agreement's stream message limit (0: none), for reports; metering checks the
    agreement's own terms."""
    period_start_ms: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    """Start of the period ``period_messages`` and ``period_bytes`` count in (streams with
    per-period limits)."""
    period_messages: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )
    period_bytes: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default="0")
    )


class ComputationRow(SQLModel, table=True):
    """One side's record of a computation (可用不可见) under an agreement: the receipt,
    signed by the provider and, once confirmed, countersigned by the consumer."""

    __tablename__ = "computation"

    id: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    agreement_id: str = Field(max_length=64, index=True)
    product: str = Field(max_length=63)
    counterparty: str = Field(max_length=63, index=True)
    state: str = Field(max_length=16, index=True)
    query_sha256: str = Field(default="", max_length=64)
    answer_sha256: str = Field(default="", max_length=64)
    epsilon_micro: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    receipt: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    reason: str = Field(default="", max_length=512)
    started_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    ended_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class StreamSubscriptionRow(SQLModel, table=True):
    """One side's state of the stream under an agreement (see connector.transfer.streams).

    ``acked_*`` and ``next_window`` are those of the last countersigned window: where a
    subscription resumes. On the consumer ``path`` is the holding's directory.
    """

    __tablename__ = "stream_subscription"

    agreement_id: str = Field(primary_key=True, max_length=64)
    role: str = Field(primary_key=True, max_length=16)
    counterparty: str = Field(max_length=63, index=True)
    product: str = Field(max_length=63)
    state: str = Field(max_length=16)
    reason: str = Field(default="", max_length=512)
    acked_sequence: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    acked_head: str = Field(max_length=64)
    next_window: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    messages: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    path: str = Field(default="", sa_column=Column(Text, nullable=False))
    obligations: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    deleted_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class StreamWindowRow(SQLModel, table=True):
    """A countersigned window receipt, kept by each side."""

    __tablename__ = "stream_window"

    agreement_id: str = Field(primary_key=True, max_length=64)
    role: str = Field(primary_key=True, max_length=16)
    window_index: int = Field(sa_column=Column(BigInteger, primary_key=True))
    first_sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    count: int = Field(sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    start_head: str = Field(max_length=64)
    head: str = Field(max_length=64)
    receipt: str = Field(sa_column=Column(Text, nullable=False))
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class OperationGrantRow(SQLModel, table=True):
    """An authorised-operation grant (公共数据授权运营) the operator signed."""

    __tablename__ = "operation_grant"

    id: str = Field(primary_key=True, max_length=64)
    participant: str = Field(max_length=63, index=True)
    signed: str = Field(sa_column=Column(Text, nullable=False))
    start_ns: int = Field(sa_column=Column(BigInteger, nullable=False))
    end_ns: int = Field(sa_column=Column(BigInteger, nullable=False))
    issued_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    revoked_reason: str = Field(default="", max_length=1024)


class ConsentRow(SQLModel, table=True):
    """An individual's separate consent (PIPL art. 23), signed by the individual."""

    __tablename__ = "consent"

    id: str = Field(primary_key=True, max_length=64)
    recipient: str = Field(max_length=63, index=True)
    signed: str = Field(sa_column=Column(Text, nullable=False))
    expires_ns: int = Field(sa_column=Column(BigInteger, nullable=False))
    granted_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    withdrawn_ms: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    withdrawal: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class DirectoryCacheRow(SQLModel, table=True):
    """The operator-signed directory a member last verified (its replicas share it).

    Text as received; every reader verifies it with the operator's key before use.
    """

    __tablename__ = "directory_cache"

    space: str = Field(primary_key=True, max_length=63)
    head: str = Field(sa_column=Column(Text, nullable=False))
    entries: str = Field(sa_column=Column(Text, nullable=False))
    stored_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class DspTransferRow(SQLModel, table=True):
    """A transfer process run over the Dataspace Protocol binding: what DSP adds to the
    transfer's own record (``transfer``), which it names by ``transfer_id``.

    Provider side: the consumer's process id and callback address, the DSP state
    (``REQUESTED``, ``STARTED``, ``SUSPENDED``, ``COMPLETED``, ``TERMINATED``) and when the
    data address's token expires (the token itself is derived, never stored).
    """

    __tablename__ = "dsp_transfer"
    __table_args__ = (
        Index("ux_dsp_transfer_peer", "role", "counterparty", "peer_pid", unique=True),
    )

    transfer_id: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    counterparty: str = Field(max_length=63)
    peer_pid: str = Field(max_length=200)
    callback: str = Field(sa_column=Column(Text, nullable=False))
    request_digest: str = Field(max_length=64)
    """SHA-256 of the request as received: the same consumerPid with other content is refused."""
    state: str = Field(max_length=16)
    token_expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    data_address: str = Field(default="", sa_column=Column(Text, nullable=False))
    """Consumer side: the provider's ``dataAddress`` (endpoint and token) as JSON, kept so
    a pull can resume after a restart; empty on the provider (its token is derived)."""
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class DisclosureYearRow(SQLModel, table=True):
    """How far a year's disclosure report has counted the log: the receipts among its
    first ``scanned`` entries are in ``disclosure_count`` and ``disclosure_receipt``, so a
    connector that starts again counts on from there instead of from the log's start."""

    __tablename__ = "disclosure_year"

    year: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    scanned: int = Field(sa_column=Column(BigInteger, nullable=False))


class DisclosureCountRow(SQLModel, table=True):
    """A year's counts for one agreement a receipt of the provider's log named: its terms
    as the report shows them and the receipts counted, or ``public`` false for an
    agreement that is no public data (or not known here), remembered so it is not looked
    up again."""

    __tablename__ = "disclosure_count"

    year: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    agreement_id: str = Field(sa_column=Column(Text, primary_key=True))
    public: bool
    consumer: str = Field(sa_column=Column(Text, nullable=False))
    product: str = Field(sa_column=Column(Text, nullable=False))
    registration_code: str = Field(sa_column=Column(Text, nullable=False))
    purpose: str = Field(sa_column=Column(Text, nullable=False))
    grant_id: str = Field(sa_column=Column(Text, nullable=False))
    transfers: int = Field(sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    computations: int = Field(sa_column=Column(BigInteger, nullable=False))
    epsilon: float = Field(sa_column=Column(Float, nullable=False))
    windows: int = Field(sa_column=Column(BigInteger, nullable=False))
    messages: int = Field(sa_column=Column(BigInteger, nullable=False))
    stream_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))


class DisclosureReceiptRow(SQLModel, table=True):
    """A receipt a year's report counted: its log index and the agreement it counts for
    (the report names every receipt's index, so an auditor can check it)."""

    __tablename__ = "disclosure_receipt"

    year: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    log_index: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    agreement_id: str = Field(sa_column=Column(Text, nullable=False))
