"""The provider's side of a transfer: decide, fix the delivered bytes, stream, countersign."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import transfer_pb2, transfer_pb2_grpc
from connector.audit import jws
from connector.audit.log import AuditLog
from connector.audit.receipts import countersign_receipt, parse_receipt
from connector.catalog.catalog import Catalog
from connector.clock import Clock
from connector.consent.register import ConsentLookup, no_consent
from connector.errors import (
    ConnectorError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unavailable,
    VerificationError,
)
from connector.negotiation.agreement import Agreement
from connector.negotiation.store import NegotiationStore
from connector.negotiation.stored import StoredAgreements
from connector.policy.inputs import build_input
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Caller
from connector.rpc.channel import calling
from connector.sources.base import RecordSource
from connector.sources.delivered import FORMATS, Delivered, Materialised, materialise
from connector.sources.file import FileDigests, SourceRoots, locate_source, read_chunks
from connector.sources.open import record_source
from connector.sources.sql import SqlSources
from connector.transfer.masking import agreement_mask_key
from connector.transfer.store import (
    ACTIVE,
    COMPLETED,
    FAILED,
    PROVIDER,
    STARTED,
    STARTING,
    TERMINATED,
    Transfer,
    TransferStore,
)
from connector.transfer.wire import encode_chunk

__all__ = [
    "STOP_CHECK_SECONDS",
    "ProviderSettings",
    "TransferProvider",
    "manifest_of",
    "new_transfer_id",
]

log = logging.getLogger(__name__)

STOP_CHECK_SECONDS = 0.25
"""How often a running stream re-checks revocation and termination (well under 1 s)."""

ORPHAN_STAGING_SECONDS = 3600
"""A staged delivered form with no transfer record this old was left by a start that died
between writing it and recording the transfer (which takes seconds): it is removed."""


@dataclass(frozen=True)
class ProviderSettings:
    """Where the provider keeps delivered forms, and how it chunks."""

    data_dir: Path
    chunk_size: int
    mask_secret: bytes
    source_roots: tuple[Path, ...] = ()
    """Directories besides ``data_dir`` that product sources may be read from."""

    @property
    def roots(self) -> SourceRoots:
        """Where sources may be read from."""
        return SourceRoots(self.data_dir, self.source_roots)

    def staging(self, transfer_id: str, fmt: str) -> Path:
        """Where this replica keeps the delivered form of a record transfer."""
        return self.data_dir / "transfers" / f"{transfer_id}.{fmt}"


def manifest_of(t: Transfer) -> transfer_pb2.TransferManifest:
    """What the consumer is told of a transfer it starts (over gRPC, or in the DSP
    binding's start message), and checks and signs its receipt over."""
    return transfer_pb2.TransferManifest(
        transfer_id=t.id,
        agreement_id=t.agreement_id,
        product_id=t.product,
        size=t.size,
        sha256=t.sha256,
        chunk_size=t.chunk_size,
        fields=list(t.fields or ()),
        format=t.format,
        obligations_json=json.dumps(dict(t.obligations), sort_keys=True),
        decision_id=t.decision_id,
        started_ms=t.started_ms,
        provider_log_index=t.provider_log_index,
        push=t.push,
    )


def new_transfer_id() -> str:
    """A fresh transfer id (``identifiers.TRANSFER_ID``)."""
    return f"tr-{uuid.uuid4().hex}"


class TransferProvider:
    """Serves transfers of this connector's products under its agreements."""

    def __init__(
        self,
        *,
        participant: str,
        settings: ProviderSettings,
        store: TransferStore,
        negotiations: NegotiationStore,
        catalog: Catalog,
        policy: PolicyPoint,
        audit: AuditLog,
        clock: Clock,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        revoked: Callable[[Transfer], str | None],
        channel_to: Callable[[str], grpc.Channel] | None = None,
        consent: ConsentLookup = no_consent,
        sql: SqlSources | None = None,
        ended: Callable[[Transfer, str], None] = lambda t, reason: None,
    ) -> None:
        """``ended(transfer, reason)``: called once a transfer this connector provides is
        terminated or failed here (the DSP binding tells the consumer's process)."""
        self._ended = ended
        self._me = participant
        self._sql = sql if sql is not None else SqlSources({})
        self._settings = settings
        self._store = store
        self._negotiations = negotiations
        self._catalog = catalog
        self._policy = policy
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._revoked = revoked
        self._channel_to = channel_to
        self._consent = consent
        self._digests = FileDigests()
        # One delivered form made again at a time: two resumed pulls of one transfer must
        # not write the same staging file together (a rare event, so one lock for all).
        self._restaging = threading.Lock()
        self._stored = StoredAgreements(
            participant=participant, signing_key=signing_key, keys=keys, audit=audit
        )

    @property
    def audit(self) -> AuditLog:
        """The log this connector's transfer entries go to."""
        return self._audit

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    # -- start ------------------------------------------------------------------------

    def agreement_for(
        self, caller: Caller, agreement_id: str, use: str = "transfer.start"
    ) -> tuple[Agreement, bool]:
        """The caller's finalized agreement with us, verified for ``use``, and whether it
        is revoked (transfers and computations alike)."""
        return self._stored.finalized_with(
            self._negotiations, caller.participant, agreement_id, use
        )

    def _verified(self, t: Transfer, use: str) -> Agreement:
        """The stored agreement of ``t``, verified for ``use`` (``VerificationError``,
        logged, if it does not verify; the transfer is left as it is)."""
        return self._stored.verified(self._negotiations.by_agreement(t.agreement_id), use)

    def start(
        self, caller: Caller, agreement_id: str, push: bool, *, transfer_id: str = ""
    ) -> transfer_pb2.TransferManifest:
        """Decide by the usage policy, fix the delivered bytes, count and record the transfer.

        ``transfer_id``: the id to record it under (the DSP binding fixes it before the
        decision, to answer a repeated request with the same process); a fresh one if empty.
        """
        if not agreement_id:
            raise InvalidRequest("agreement_id is required")
        agreement, revoked = self.agreement_for(caller, agreement_id)
        published = self._catalog.published(agreement.product, agreement.offer)
        if published is None:
            raise PreconditionFailed(
                f"product {agreement.product!r} or its offer has been withdrawn by the provider"
            )
        product, offer = published
        is_file = product.source.kind == "file"
        # Where the data is, checked before the decision (nothing is read yet): a path
        # outside the roots or a connection no longer configured is the provider's to fix.
        path = locate_source(product.source, self._settings.roots) if is_file else None
        records = None if is_file else record_source(product, self._settings.roots, self._sql)
        file_size = path.stat().st_size if path is not None and path.is_file() else 0
        transfers_used, bytes_used = self._store.usage(agreement.id)
        contract: dict[str, Any] = {
            "id": agreement.id,
            "purpose": agreement.purpose,
            "valid_from_ns": agreement.valid_from_ns,
            "valid_until_ns": agreement.valid_until_ns,
            "max_transfers": agreement.max_transfers,
            "max_bytes": agreement.max_bytes,
            "revoked": revoked,
            "obligations": dict(agreement.obligations),
            "masks": dict(agreement.masks),
            "delivery": list(agreement.delivery),
        }
        if agreement.permitted_fields is not None:
            contract["permitted_fields"] = list(agreement.permitted_fields)
        document = build_input(
            "transfer.start",
            caller=caller,
            resource=product.resource(),
            clock=self._clock,
            offer={"id": offer.id, "policy_module": offer.policy_module},
            contract=contract,
            context={
                "transfers_used": transfers_used,
                "bytes_used": bytes_used,
                "request_bytes": file_size,
                "revoked": revoked,
                "consent": dict(self._consent(caller.participant, product.id, agreement.purpose)),
            },
        )
        decision = self._policy.decide(document)
        if not decision.allow:
            raise PermissionDenied(
                "transfer refused by the usage policy: " + ", ".join(decision.deny)
            )
        transfer_id = transfer_id or new_transfer_id()
        staged: Path | None = None
        delivered: Delivered
        if records is None:
            assert path is not None
            delivered = self._digests.digest(path, self._settings.roots)
            source_state = f"file:sha256:{delivered.sha256}"
        else:
            # The delivered form is fixed here, once, before anything is counted: a source
            # that cannot be read (a database down, a changed schema) leaves no transfer,
            # no metering and no staging file (materialise removes its own on failure).
            staged = self._settings.staging(transfer_id, product.source.format)
            made = self._materialise(
                records,
                staged,
                fmt=product.source.format,
                permitted=decision.permitted_fields,
                masks=decision.masks,
                agreement_id=agreement.id,
            )
            delivered, source_state = made.delivered, made.state
        t = Transfer(
            id=transfer_id,
            role=PROVIDER,
            agreement_id=agreement.id,
            product=product.id,
            counterparty=caller.participant,
            state=STARTING,
            size=delivered.size,
            sha256=delivered.sha256,
            chunk_size=self._settings.chunk_size,
            push=push,
            format=product.source.format if not is_file else "",
            fields=delivered.fields,
            obligations=decision.obligations,
            # What any replica needs to make the same delivered form again (fields and
            # format are recorded already; the mask key derives from the agreement).
            masks=decision.masks if records is not None else {},
            decision_id=decision.id,
            path=str(delivered.path),
            source_mtime_ns=delivered.mtime_ns,
            started_ms=self._now_ms(),
        )
        try:
            self._store.reserve(
                t,
                max_transfers=agreement.max_transfers,
                max_bytes=agreement.max_bytes,
                now_ms=t.started_ms,
            )
        except PermissionDenied as exc:
            if staged is not None:
                staged.unlink(missing_ok=True)
            self._audit.record(
                "transfer.refused",
                parties=[caller.participant],
                data={"agreement": agreement.id, "size": t.size, "reason": str(exc)[:300]},
            )
            raise
        try:
            index = self._audit.record(
                "transfer.started",
                parties=[caller.participant],
                data={**self._started(t), "source_state": source_state},
            )
        except ConnectorError as exc:
            self._store.release(t.id, f"not logged: {exc}", self._now_ms())
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise
        t = self._store.update(t.id, state=STARTED, provider_log_index=index)
        return self._manifest(t)

    def _materialise(
        self,
        records: RecordSource,
        out: Path,
        *,
        fmt: str,
        permitted: Sequence[str] | None,
        masks: Mapping[str, Mapping[str, Any]],
        agreement_id: str,
    ) -> Materialised:
        return materialise(
            records,
            out,
            fmt=fmt,
            permitted=permitted,
            masks=masks,
            key=agreement_mask_key(self._settings.mask_secret, agreement_id),
        )

    @staticmethod
    def _started(t: Transfer) -> dict[str, Any]:
        return {
            "transfer": t.id,
            "agreement": t.agreement_id,
            "product": t.product,
            "role": t.role,
            "size": t.size,
            "sha256": t.sha256,
            "push": t.push,
            "decision": t.decision_id,
            "fields": list(t.fields) if t.fields is not None else None,
        }

    @staticmethod
    def _manifest(t: Transfer) -> transfer_pb2.TransferManifest:
        return manifest_of(t)

    # -- streaming ----------------------------------------------------------------------

    def _own(self, caller: Caller, transfer_id: str) -> Transfer:
        try:
            t = self._store.get(transfer_id)
        except NotFound:
            raise NotFound(f"no transfer {transfer_id!r} with you") from None
        if t.role != PROVIDER or t.counterparty != caller.participant:
            raise NotFound(f"no transfer {transfer_id!r} with you")
        return t

    def stop_reason(self, t: Transfer) -> str | None:
        """Why a running transfer must stop now, or ``None`` (any doubt stops it)."""
        try:
            current = self._store.get(t.id)
            if current.state != STARTED:
                return f"transfer {current.state}" + (
                    f": {current.reason}" if current.reason else ""
                )
            n = self._negotiations.by_agreement(t.agreement_id)
            if n.revocation:
                return "agreement_revoked"
            # The operator's revocation list, pushed to us: the consumer, or a grant of it.
            revoked = self._revoked(t)
            if revoked:
                return revoked
            # Any doubt stops it: a stored agreement that no longer verifies too.
            agreement = self._stored.verified(n, "transfer.stream")
            if self._clock.now() * 1e9 >= agreement.valid_until_ns:
                return "agreement_expired"
            if self._catalog.own(t.product).personal:
                consent = self._consent(t.counterparty, t.product, agreement.purpose)
                if consent.get("withdrawn") or not consent.get("present"):
                    return "consent_withdrawn"
                if int(consent.get("expires_ns", 0)) <= self._clock.now() * 1e9:
                    return "consent_expired"
        except ConnectorError as exc:
            return f"cannot confirm the transfer may go on: {exc}"
        return None

    def _stop(self, t: Transfer, reason: str, sent: int) -> PermissionDenied:
        """End a running transfer for ``reason``; log what was sent."""
        with contextlib.suppress(PreconditionFailed):  # already ended by an admin or the consumer
            self._ended(
                self._store.update(
                    t.id, expect=ACTIVE, state=TERMINATED, reason=reason, ended_ms=self._now_ms()
                ),
                reason,
            )
        self._audit.record(
            "transfer.stopped",
            parties=[t.counterparty],
            data={"transfer": t.id, "agreement": t.agreement_id, "sent": sent, "reason": reason},
        )
        return PermissionDenied(f"transfer {t.id} stopped: {reason}")

    def chunks(self, t: Transfer, offset: int) -> Iterator[tuple[int, bytes]]:
        """The delivered bytes from ``offset``, stopping within 1 s of a revocation."""
        if t.state != STARTED:
            raise PreconditionFailed(
                f"transfer {t.id} is {t.state}" + (f" ({t.reason})" if t.reason else "")
            )
        if not 0 <= offset <= t.size:
            raise InvalidRequest(f"offset {offset} is outside the transfer's 0..{t.size} bytes")
        reason = self.stop_reason(t)
        if reason:
            raise self._stop(t, reason, offset)
        path = self._delivered_here(t)
        checked = time.monotonic()
        sent = offset
        for at, block in read_chunks(path, offset, t.chunk_size, self._settings.roots):
            now = time.monotonic()
            if now - checked >= STOP_CHECK_SECONDS:
                checked = now
                reason = self.stop_reason(t)
                if reason:
                    raise self._stop(t, reason, sent)
            yield at, block
            sent = at + len(block)

    # -- resuming on any replica -----------------------------------------------------------
    #
    # Replicas share the database, not a disk: a pull may resume on a replica that did not
    # start the transfer. Each replica finds the delivered bytes itself and serves them only
    # when they are the ones recorded (size and SHA-256); otherwise the transfer fails and
    # the consumer is told to start a new one. A file is read at its recorded path under
    # the source roots; a record source's delivered form is made again from the source
    # with the recorded fields, masks and format.

    def _delivered_here(self, t: Transfer) -> Path:
        """The path of ``t``'s delivered bytes on this replica, checked against the record."""
        if not t.format:
            path = Path(t.path)
            if self._unchanged(path, t):
                return path
            with contextlib.suppress(OSError, ConnectorError):
                # Another replica's copy of the file, or the same bytes touched: the same
                # delivery if it has the recorded digest (remembered while it is unchanged).
                if path.stat().st_size == t.size and (
                    self._digests.digest(path, self._settings.roots).sha256 == t.sha256
                ):
                    return path
            raise self._changed(t, "the product's file changed or vanished since it started")
        staged = self._settings.staging(t.id, t.format)
        if self._unchanged(staged, t):
            return staged
        with self._restaging:
            if not self._unchanged(staged, t):
                self._restage(t, staged)
        return staged

    @staticmethod
    def _unchanged(path: Path, t: Transfer) -> bool:
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == t.size and st.st_mtime_ns == t.source_mtime_ns

    def _restage(self, t: Transfer, staged: Path) -> None:
        """Make ``t``'s delivered form again on this replica, and keep it only if it is
        the one recorded. A source that cannot be reached now raises ``Unavailable`` (the
        consumer retries); one that changed fails the transfer."""
        try:
            records = record_source(self._catalog.own(t.product), self._settings.roots, self._sql)
            made = self._materialise(
                records,
                staged,
                fmt=t.format,
                permitted=t.fields,
                masks=t.masks,
                agreement_id=t.agreement_id,
            )
        except (NotFound, PreconditionFailed, InvalidRequest) as exc:
            raise self._changed(
                t, f"its delivered form cannot be made again on this replica: {exc}"
            ) from None
        got = made.delivered
        if (got.size, got.sha256) != (t.size, t.sha256):
            staged.unlink(missing_ok=True)
            # A query's rows come in a stable order only when it says so.
            hint = (
                " (a query without ORDER BY on a unique key may return its rows in another "
                "order: add one so transfers can resume on any replica)"
                if records.kind == "sql"
                else ""
            )
            raise self._changed(
                t,
                "the product's source changed since it started: made again on this replica, "
                f"its delivered form has SHA-256 {got.sha256} ({got.size} bytes), not the "
                f"recorded {t.sha256} ({t.size} bytes){hint}",
            )
        # The same bytes: stamped like the form fixed at start, so later pulls here serve
        # them as they are (size and mtime) without making them again.
        os.utime(staged, ns=(t.source_mtime_ns, t.source_mtime_ns))
        log.info(
            "delivered form made again on this replica",
            extra={"transfer": t.id, "sha256": t.sha256, "state": made.state},
        )

    def sweep_staging(self) -> int:
        """Remove this replica's staged delivered forms of transfers that have ended, on
        whichever replica they ended (the shared record says), and those of starts that
        died before recording theirs; the number removed."""
        removed = 0
        try:
            staged = list((self._settings.data_dir / "transfers").iterdir())
        except FileNotFoundError:
            return 0
        for path in staged:
            transfer_id, _, fmt = path.name.partition(".")
            if fmt not in FORMATS:
                continue  # one being written (``.tmp``), or not ours
            ended = False
            try:
                ended = self._store.get(transfer_id).state not in ACTIVE
            except NotFound:
                # Written before its transfer is recorded: only an old one is an orphan.
                with contextlib.suppress(OSError):
                    age = self._clock.now() - path.stat().st_mtime
                    ended = age > ORPHAN_STAGING_SECONDS
            if ended:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _changed(self, t: Transfer, why: str) -> PreconditionFailed:
        self._fail(t, why)
        return PreconditionFailed(f"transfer {t.id} failed: {why}; start a new transfer")

    def pull(self, caller: Caller, transfer_id: str, offset: int) -> Iterator[bytes]:
        """Chunks for the consumer, from ``offset``, each a ``tds.v1.Chunk`` already
        encoded (``wire.encode_chunk``: the data copied once, not into a message and out)."""
        t, chunks = self.pulled(caller, transfer_id, offset)
        for at, block in chunks:
            yield encode_chunk(t.id, at, block)

    def pulled(
        self, caller: Caller, transfer_id: str, offset: int
    ) -> tuple[Transfer, Iterator[tuple[int, bytes]]]:
        """A pull transfer of the caller's and its delivered bytes from ``offset``, checked
        as every pull is (gRPC ``Pull`` and the DSP binding's ``HttpData`` endpoint): the
        stored agreement verified for ``transfer.pull``, then :meth:`chunks` (state,
        revocation, expiry and consent re-checked while it runs)."""
        t = self._own(caller, transfer_id)
        if t.push:
            raise PreconditionFailed(f"transfer {t.id} is delivered by push; use RequestPush")
        self._verified(t, "transfer.pull")
        return t, self.chunks(t, offset)

    def push(self, caller: Caller, transfer_id: str, offset: int) -> transfer_pb2.PushAck:
        """Push the delivered bytes from ``offset`` into the consumer's connector."""
        t = self._own(caller, transfer_id)
        if not t.push:
            raise PreconditionFailed(f"transfer {t.id} is delivered by pull; use Pull")
        self._verified(t, "transfer.push")
        if self._channel_to is None:
            raise Unavailable("this connector cannot reach other members")
        stream = (
            transfer_pb2.Chunk(transfer_id=t.id, offset=at, data=block)
            for at, block in self.chunks(t, offset)
        )
        channel = self._channel_to(t.counterparty)
        try:
            with calling(t.counterparty):
                ack: transfer_pb2.PushAck = transfer_pb2_grpc.TransferServiceStub(channel).Push(
                    stream, timeout=3600
                )
        finally:
            channel.close()
        return ack

    def _fail(self, t: Transfer, reason: str) -> None:
        try:
            ended = self._store.update(
                t.id, expect=ACTIVE, state=FAILED, reason=reason, ended_ms=self._now_ms()
            )
        except PreconditionFailed:
            return
        self._ended(ended, reason)
        self._audit.record(
            "transfer.failed",
            parties=[t.counterparty],
            data={"transfer": t.id, "agreement": t.agreement_id, "reason": reason[:300]},
        )

    # -- completion -----------------------------------------------------------------

    def complete(self, caller: Caller, transfer_id: str, signed: str) -> str:
        """Check the consumer's receipt against our record, countersign, log, complete."""
        t = self._own(caller, transfer_id)
        if t.state == COMPLETED and t.receipt:
            return t.receipt  # a repeated completion (the consumer retried): same answer
        if t.state != STARTED:
            raise PreconditionFailed(
                f"transfer {t.id} is {t.state}" + (f" ({t.reason})" if t.reason else "")
            )
        self._verified(t, "transfer.complete")
        receipt = parse_receipt(signed)
        expected = {
            "agreement": t.agreement_id,
            "transfer": t.id,
            "product": t.product,
            "provider": self._me,
            "consumer": caller.participant,
            "size": t.size,
            "sha256": t.sha256,
            "provider_log_index": t.provider_log_index,
        }
        wrong = [k for k, v in expected.items() if getattr(receipt, k) != v]
        if wrong:
            self._audit.record(
                "transfer.receipt_refused",
                parties=[caller.participant],
                data={"transfer": t.id, "fields": wrong},
            )
            raise VerificationError(
                f"the receipt's {', '.join(wrong)} do not match the transfer "
                f"(expected sha256 {t.sha256}, size {t.size})"
            )
        try:
            countersigned = countersign_receipt(signed, self._key, self._keys)
        except VerificationError:
            self._audit.record(
                "transfer.receipt_refused",
                parties=[caller.participant],
                data={"transfer": t.id, "fields": ["signature"]},
            )
            raise
        self._audit.record(
            "transfer.receipt",
            parties=[caller.participant],
            data={"transfer": t.id, "agreement": t.agreement_id, "receipt": countersigned},
        )
        self._store.update(
            t.id,
            expect=frozenset({STARTED}),
            state=COMPLETED,
            receipt=countersigned,
            received=t.size,
            consumer_log_index=receipt.consumer_log_index,
            ended_ms=self._now_ms(),
        )
        return countersigned

    def complete_unsigned(self, caller: Caller, transfer_id: str, note: str) -> Transfer:
        """The consumer says it has the data but signs no receipt (a connector of another
        make over the DSP binding): completed, and logged as completed without the
        consumer's signature, so the log never shows a receipt that was not given."""
        t = self._own(caller, transfer_id)
        if t.state == COMPLETED:
            return t
        if t.state != STARTED:
            raise PreconditionFailed(
                f"transfer {t.id} is {t.state}" + (f" ({t.reason})" if t.reason else "")
            )
        self._audit.record(
            "transfer.completed_unsigned",
            parties=[caller.participant],
            data={
                "transfer": t.id,
                "agreement": t.agreement_id,
                "size": t.size,
                "sha256": t.sha256,
                "note": note[:300],
            },
        )
        return self._store.update(
            t.id, expect=frozenset({STARTED}), state=COMPLETED, ended_ms=self._now_ms()
        )

    def terminate(self, transfer_id: str, reason: str, caller: Caller | None = None) -> Transfer:
        """End a transfer that is not complete (the consumer asked, or our admin)."""
        t = self._own(caller, transfer_id) if caller is not None else self._store.get(transfer_id)
        if t.role != PROVIDER:
            raise PreconditionFailed(f"transfer {transfer_id} is one this connector receives")
        if t.state not in ACTIVE:
            raise PreconditionFailed(f"transfer {t.id} is already {t.state}")
        reason = reason or "terminated"
        failed = reason.startswith("integrity")
        self._audit.record(
            "transfer.failed" if failed else "transfer.terminated",
            parties=[t.counterparty],
            data={"transfer": t.id, "agreement": t.agreement_id, "reason": reason[:300]},
        )
        ended = self._store.update(
            t.id,
            expect=ACTIVE,
            state=FAILED if failed else TERMINATED,
            reason=reason,
            ended_ms=self._now_ms(),
        )
        self._ended(ended, reason)
        return ended
