"""The provider's side of a stream: Subscribe under an agreement, policed continuously.

One subscription (``StreamService.Subscribe``), in order:

1. the agreement is the caller's, FINALIZED and verified (as for copies); the product is
   still published and is a ``stream``; ``from_sequence`` is exactly where the stream's
   last countersigned window ended (0 the first time), or where one of the
   ``max_unsigned_windows`` windows before it started: their countersignatures were lost
   on the way, and their receipts are sent again in ``started`` (not their records, and
   nothing is metered again; see ``_lost_receipts``). Anywhere else earlier would deliver
   again what the consumer already acknowledged, later would skip what it never did;
2. the usage policy decides ``stream.continue`` (logged); the source is subscribed after
   ``from_sequence`` (a broker that is down is ``UNAVAILABLE``, what the source no longer
   holds is ``FAILED_PRECONDITION`` saying how much is lost); ``stream.started`` is logged
   and the stream is STARTED;
3. each record is projected and masked as a table's rows are
   (:func:`connector.sources.delivered.record_projector`), metered (messages and the bytes
   of its canonical JSON, in one conditional UPDATE that holds the agreement's byte limit),
   sent with its sequence and the one before it, and linked into the hash chain; the
   records at hand go together in one gRPC message (``StreamBatch``) to a consumer that
   asks for batches, never past the end of the open window;
4. every ``window_messages`` records or ``window_seconds`` the provider proposes the
   window; the consumer answers with its signed receipt, which must be of exactly that
   window: the provider checks it, countersigns, stores it (the resume point moves) and
   logs ``stream.window``, then sends it back (a call that breaks before it arrives is
   mended at the next subscribe, as in 1). A receipt that differs or does not verify
   is logged (``stream.window_refused``) and ends the subscription; so does a window not
   signed within ``ack_timeout_seconds``. At most ``max_unsigned_windows`` windows are
   sent ahead of the consumer's receipts: a consumer that stops signing stops the flow,
   and the broker (not this process) keeps what waits;
5. at least every 0.25 s, record or not, the agreement is checked again: revoked, past its
   end, the consumer or its grant on the operator's revocation list, consent withdrawn,
   a message or byte limit reached, anything the policy denies (``stream.continue``; a
   re-check that allows is not logged one by one, the one that stops is), the stream
   terminated by either side (``terminate``). A stop is logged (``stream.stopped``: what
   was sent, the last sequence, why) and the stream TERMINATED; by a per-period limit
   alone it is SUSPENDED until the next period.

A subscription that ends any other way (the consumer left, fell behind, the source lost
records) leaves the stream SUSPENDED with the reason; the consumer resumes from its last
countersigned window and gets again what it received after it, which it had not kept yet.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import stream_pb2
from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog
from connector.audit.window_receipts import countersign_window, parse_window
from connector.catalog.catalog import Catalog
from connector.catalog.products import Product
from connector.clock import Clock
from connector.config import StreamConfig
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
from connector.policy.decision import Decision
from connector.policy.inputs import build_input, subject_of
from connector.policy.point import PolicyPoint
from connector.rpc.auth import Caller
from connector.sources.base import Row, StreamRecord, Subscription
from connector.sources.delivered import record_projector
from connector.sources.streams import StreamSources
from connector.sources.windows import HashChain, Window, WindowAccumulator, genesis_head
from connector.transfer.masking import agreement_mask_key
from connector.transfer.store import PROVIDER
from connector.transfer.stream_store import (
    NEXT_PERIOD,
    PERIOD_REASONS,
    STARTED,
    SUSPENDED,
    TERMINATED,
    StreamLimits,
    StreamState,
    StreamStore,
)

__all__ = ["StreamProvider"]

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.25
"""How often a running stream re-checks the agreement and the policy (issue 20: ≤ 0.25 s)."""

_POLL_SECONDS = 0.05
"""Longest wait on the source between checks of the consumer's receipts."""

_FRAME_MESSAGES = 256
_FRAME_BYTES = 256 * 1024
"""Most records, and bytes of records, sent in one gRPC message to a consumer that takes
batches (a record larger than that goes alone)."""

_SETTLE_SECONDS = 0.5
"""How long a stopped stream waits for the consumer to sign what it was already sent."""
_BLOCK_MESSAGES = 1024
_BLOCK_BYTES = 1024 * 1024
"""Metering is counted ahead in blocks of this many messages and bytes (see _count)."""

_END = object()
"""Queued by the receipt reader when the consumer closed its side of the call."""


class _Ended(Exception):
    """The subscription ends: ``state`` (SUSPENDED or TERMINATED) for ``reason``."""

    def __init__(
        self, state: str, reason: str, error: ConnectorError, settle: bool = False
    ) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason
        self.error = error
        self.settle = settle
        """Whether what was already sent is receipted before the end (the consumer is there)."""


@dataclass
class _Run:
    """What one subscription has done so far (for the log when it ends)."""

    agreement: Agreement
    product: Product
    consumer: str
    subject: dict[str, Any]
    revoked_grants: list[str]
    started_ms: int
    sent: int = 0
    sent_bytes: int = 0
    last_sequence: int = 0
    ahead_messages: int = 0
    """Messages metered ahead and not sent yet."""
    ahead_bytes: int = 0
    ahead_period: int = 0
    """Start of the period the messages ahead were counted in (per-period limits)."""
    limits: StreamLimits = field(default_factory=StreamLimits)


class StreamProvider:
    """Serves subscriptions to this connector's stream products under its agreements."""

    def __init__(
        self,
        *,
        participant: str,
        settings: StreamConfig,
        mask_secret: bytes,
        store: StreamStore,
        negotiations: NegotiationStore,
        catalog: Catalog,
        policy: PolicyPoint,
        audit: AuditLog,
        clock: Clock,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        sources: StreamSources,
        revoked: Callable[[str, str, int], str | None],
        consent: ConsentLookup = no_consent,
    ) -> None:
        self._me = participant
        self._settings = settings
        self._mask_secret = mask_secret
        self._store = store
        self._negotiations = negotiations
        self._catalog = catalog
        self._policy = policy
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._sources = sources
        self._revoked = revoked
        self._consent = consent
        self._stored = StoredAgreements(
            participant=participant, signing_key=signing_key, keys=keys, audit=audit
        )

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    # -- deciding -----------------------------------------------------------------------

    def _agreement(self, caller: Caller, agreement_id: str) -> tuple[Agreement, bool]:
        return self._stored.finalized_with(
            self._negotiations, caller.participant, agreement_id, "stream.subscribe"
        )

    def _document(self, run: _Run, revoked: bool) -> dict[str, Any]:
        agreement = run.agreement
        contract: dict[str, Any] = {
            "id": agreement.id,
            "purpose": agreement.purpose,
            "valid_from_ns": agreement.valid_from_ns,
            "valid_until_ns": agreement.valid_until_ns,
            "max_bytes": agreement.max_bytes,
            "max_messages": run.limits.max_messages,
            "period_max_messages": run.limits.period_max_messages,
            "period_max_bytes": run.limits.period_max_bytes,
            "revoked": revoked,
            "obligations": dict(agreement.obligations),
            "masks": dict(agreement.masks),
        }
        if agreement.permitted_fields is not None:
            contract["permitted_fields"] = list(agreement.permitted_fields)
        # What was sent: this subscription's messages counted ahead are not used yet.
        used = self._store.stream_usage(agreement.id, run.limits, self._now_ms()).less(
            run.ahead_messages, run.ahead_bytes
        )
        offer = run.product.offer(agreement.offer)
        return build_input(
            "stream.continue",
            subject=run.subject,
            resource=run.product.resource(),
            clock=self._clock,
            offer={"id": offer.id, "policy_module": offer.policy_module},
            contract=contract,
            context={
                "bytes_used": used.bytes,
                "messages_used": used.messages,
                "period_messages_used": used.period_messages,
                "period_bytes_used": used.period_bytes,
                # At least one more byte must be allowed for the stream to go on.
                "request_bytes": 1,
                "revoked": revoked,
                "revoked_grants": run.revoked_grants,
                "consent": dict(self._consent(run.consumer, run.product.id, agreement.purpose)),
            },
        )

    def _stop_reason(self, run: _Run) -> str | None:
        """Why the stream must stop now, or ``None`` (any doubt stops it)."""
        try:
            state = self._store.get(run.agreement.id, PROVIDER)
            if state.state == TERMINATED:
                return state.reason or "terminated"
            n = self._negotiations.by_agreement(run.agreement.id)
            if n.revocation:
                return "agreement_revoked"
            revoked = self._revoked(run.consumer, run.product.id, run.started_ms)
            if revoked:
                return revoked
            self._stored.verified(n, "stream.continue")
            current = self._catalog.published(run.agreement.product, run.agreement.offer)
            if current is None:
                return "product_withdrawn"
            document = self._document(run, revoked=False)
            if self._policy.engine.decide(document).allow:
                return None
            # The decision that stops the stream is logged like any other.
            decision = self._policy.decide(document)
            return ", ".join(decision.deny) or "denied"
        except ConnectorError as exc:
            return f"cannot confirm the stream may go on: {exc}"

    # -- subscribing --------------------------------------------------------------------

    def subscribe(
        self,
        caller: Caller,
        requests: Iterator[stream_pb2.SubscribeUp],
        active: Callable[[], bool] = lambda: True,
        *,
        push: bool = False,
    ) -> Iterator[stream_pb2.SubscribeDown]:
        """The stream for ``caller``: its first message names the agreement. ``active``
        says whether the call is still on (a quiet stream notices a cancel by it).
        ``push``: sent into the consumer's connector (connector.transfer.stream_push),
        which only an agreement whose offer delivers by push allows, and it only that."""
        first = next(requests, None)
        if first is None or first.WhichOneof("kind") != "start":
            raise InvalidRequest("the first message of Subscribe must be start")
        agreement_id = first.start.agreement_id
        from_sequence = first.start.from_sequence
        if not agreement_id:
            raise InvalidRequest("start.agreement_id is required")
        agreement, revoked = self._agreement(caller, agreement_id)
        _check_delivery(agreement, push)
        published = self._catalog.published(agreement.product, agreement.offer)
        if published is None:
            raise PreconditionFailed(
                f"product {agreement.product!r} or its offer has been withdrawn by the provider"
            )
        product, _ = published
        if product.source.kind != "stream":
            raise PreconditionFailed(
                f"product {product.id!r} is not a stream; use StartTransfer for a copy"
            )
        state = self._store.ensure(
            agreement.id,
            PROVIDER,
            counterparty=caller.participant,
            product=product.id,
            genesis=genesis_head(agreement.id).hex(),
            now_ms=self._now_ms(),
        )
        if state.state == TERMINATED:
            raise PreconditionFailed(
                f"the stream of agreement {agreement.id} was terminated ({state.reason})"
            )
        resent = self._lost_receipts(agreement.id, from_sequence, state)
        run = _Run(
            agreement=agreement,
            product=product,
            consumer=caller.participant,
            subject=subject_of(caller),
            revoked_grants=sorted(caller.revoked_grants),
            started_ms=self._now_ms(),
            last_sequence=state.acked_sequence,
            limits=StreamLimits.of(agreement),
        )
        decision = self._policy.decide(self._document(run, revoked))
        if not decision.allow:
            raise PermissionDenied(
                "subscription refused by the usage policy: " + ", ".join(decision.deny)
            )
        try:
            source = self._sources.source(product.source, product.fields)
        except InvalidRequest as exc:
            raise PreconditionFailed(f"the product's source cannot be read: {exc}") from None
        with source.subscribe(state.acked_sequence) as subscription:
            yield from self._run(
                run,
                state.acked_head,
                state.next_window,
                decision,
                subscription,
                requests,
                active,
                batches=first.start.batches,
                resent=resent,
            )

    def check_push(self, caller: Caller, agreement_id: str) -> None:
        """Before a push is opened to ``caller``'s connector: the agreement is theirs,
        finalized, and its offer delivers by push (the subscription checks all else)."""
        agreement, _ = self._agreement(caller, agreement_id)
        _check_delivery(agreement, push=True)

    def _lost_receipts(
        self, agreement_id: str, from_sequence: int, state: StreamState
    ) -> list[tuple[Window, str]]:
        """The windows countersigned after ``from_sequence``, with their receipts: none
        when the consumer resumes where the provider does.

        The provider records a window before its countersignature reaches the consumer;
        a call that breaks in between leaves the consumer's resume point up to
        ``max_unsigned_windows`` windows behind (it never has more signed and not yet
        countersigned). Those windows' receipts are sent again, as they were, and
        delivery goes on after them: their records are neither metered nor sent again,
        so asking from further back gets the consumer nothing it has not had. Any other
        ``from_sequence`` (not where one of those windows starts, or in the future) is
        refused.
        """
        if from_sequence == state.acked_sequence:
            return []
        if from_sequence < state.acked_sequence:
            windows = self._store.windows_after(
                agreement_id, PROVIDER, from_sequence, self._settings.max_unsigned_windows
            )
            if windows and windows[-1][0].last_sequence == state.acked_sequence:
                return windows
        where = "before" if from_sequence < state.acked_sequence else "after"
        raise InvalidRequest(
            f"from_sequence {from_sequence} is {where} the end of the last window you "
            f"acknowledged ({state.acked_sequence}); resume from {state.acked_sequence}"
            + (
                f" or from the end of one of the last {self._settings.max_unsigned_windows} windows"
                if where == "before"
                else ""
            )
        )

    def _run(
        self,
        run: _Run,
        head: str,
        next_window: int,
        decision: Decision,
        subscription: Subscription,
        requests: Iterator[stream_pb2.SubscribeUp],
        active: Callable[[], bool],
        *,
        batches: bool,
        resent: list[tuple[Window, str]],
    ) -> Iterator[stream_pb2.SubscribeDown]:
        agreement, product = run.agreement, run.product
        fields, project = record_projector(
            product.fields,
            permitted=decision.permitted_fields,
            masks=decision.masks,
            key=agreement_mask_key(self._mask_secret, agreement.id),
        )
        index = self._audit.record(
            "stream.started",
            parties=[run.consumer],
            data={
                "agreement": agreement.id,
                "product": product.id,
                "after_sequence": run.last_sequence,
                "window": next_window,
                "decision": decision.id,
                "fields": list(fields),
                # Windows whose countersigned receipts are sent again (lost on the way).
                **({"resent_windows": [w.index for w, _ in resent]} if resent else {}),
            },
        )
        self._store.set_state(agreement.id, PROVIDER, STARTED, "", self._now_ms())
        inbox: queue.Queue[object] = queue.Queue()
        reader = threading.Thread(
            target=_read_receipts, args=(requests, inbox), daemon=True, name="stream-receipts"
        )
        reader.start()
        windows = WindowAccumulator(
            HashChain(bytes.fromhex(head), run.last_sequence),
            every_messages=self._settings.window_messages,
            every_seconds=self._settings.window_seconds,
            next_index=next_window,
        )
        pending: collections.deque[tuple[Window, float]] = collections.deque()
        checked = time.monotonic()
        try:
            # Inside the try: a call cancelled right after the start (grpc then stops
            # pulling, and the generator is closed at this yield) still records its end.
            yield stream_pb2.SubscribeDown(
                started=stream_pb2.StreamStarted(
                    agreement_id=agreement.id,
                    product_id=product.id,
                    fields=list(fields),
                    after_sequence=run.last_sequence,
                    head=head,
                    next_window=next_window,
                    obligations_json=json.dumps(dict(decision.obligations), sort_keys=True),
                    decision_id=decision.id,
                    provider_log_index=index,
                    receipted=[receipt for _, receipt in resent],
                )
            )
            while True:
                now = time.monotonic()
                if now - checked >= CHECK_SECONDS:
                    checked = now
                    if not active():
                        raise _Ended(
                            SUSPENDED,
                            "the call ended (the consumer left or this connector is stopping)",
                            Unavailable("the subscription's call ended"),
                        )
                    reason = self._stop_reason(run)
                    if reason:
                        raise _stopped(agreement.id, reason)
                yield from self._receipts(run, inbox, pending)
                if pending and now - pending[0][1] > self._settings.ack_timeout_seconds:
                    raise self._refuse(run, pending[0][0], "not signed in time")
                if len(pending) >= self._settings.max_unsigned_windows:
                    # Backpressure: nothing more until the consumer signs.
                    if inbox.empty():
                        time.sleep(0.005)
                    continue
                # Never past the open window: its proposal follows its last record, and
                # the count of windows ahead of the receipts holds.
                limit = min(_FRAME_MESSAGES if batches else 1, windows.room)
                records = subscription.poll_batch(_POLL_SECONDS, limit)
                window: Window | None = None
                if records:
                    window = yield from self._deliver(run, records, project, windows, batches)
                if window is None:
                    window = windows.tick()  # by time, quiet feed or not
                if window is not None:
                    pending.append((window, time.monotonic()))
                    yield stream_pb2.SubscribeDown(window=_proposal(window))
        except _Ended as ended:
            try:
                if ended.settle:
                    yield from self._settle(run, windows, inbox, pending)
            finally:
                # Also when the call is closed during the settle (GeneratorExit there is
                # not caught by this try's own handler below): the end is always recorded.
                self._end(run, ended.state, ended.reason)
            raise ended.error from None
        except ConnectorError as exc:
            # The source suspended it (lagging, records gone) or could not go on.
            self._end(run, SUSPENDED, str(exc))
            raise
        except GeneratorExit:
            self._end(run, SUSPENDED, "the consumer left")
            raise

    def _deliver(
        self,
        run: _Run,
        records: list[StreamRecord],
        project: Callable[[Row], dict[str, Any]],
        windows: WindowAccumulator,
        batches: bool,
    ) -> Generator[stream_pb2.SubscribeDown, None, Window | None]:
        """Project, mask, meter, send and link ``records``; the window the last one closes.

        Sent in frames of at most ``_FRAME_MESSAGES`` records and ``_FRAME_BYTES`` bytes
        (one record alone to a consumer that did not ask for batches): per record, a gRPC
        message costs a round of the server's completion queue, which caps a stream at a
        few thousand records a second whatever else it does.
        """
        frame = _Frame(batches)
        window: Window | None = None
        try:
            for record in records:
                encoded = canonical_json(project(record.row))
                refused = self._count(run, len(encoded))
                if refused:
                    raise _stopped(run.agreement.id, refused)
                if frame.count and (frame.size + len(encoded) > _FRAME_BYTES or not batches):
                    yield frame.down
                    frame = _Frame(batches)
                frame.add(record.sequence, record.previous, encoded)
                run.sent += 1
                run.sent_bytes += len(encoded)
                run.last_sequence = record.sequence
                window = windows.add_encoded(record.sequence, encoded)
        except (_Ended, ConnectorError):
            # What was metered and linked is sent, even when the next record stops it.
            if frame.count:
                yield frame.down
            raise
        yield frame.down
        return window

    def _count(self, run: _Run, size: int) -> str | None:
        """Meter one message of ``size`` bytes; ``None``, or the limit it would pass.

        Counted ahead in blocks (``_BLOCK_MESSAGES`` messages, ``_BLOCK_BYTES`` bytes, one
        atomic UPDATE each) so a database write is not paid per message; what a
        subscription counted and did not send is given back when it ends. Near one of the
        agreement's limits a block no longer fits and each message is counted alone, so
        the limit holds exactly. A block counted in a period that has ended is given back
        first, so each message counts in the period it is sent in.
        """
        if run.limits.period_seconds:
            self._turn_period(run)
        if run.ahead_messages >= 1 and run.ahead_bytes >= size:
            run.ahead_messages -= 1
            run.ahead_bytes -= size
            return None
        agreement = run.agreement
        # Twice: a refusal no limit explains (another subscription gave back what it had
        # counted ahead in between) is tried again before it stops the stream.
        for _ in range(2):
            for messages, block in ((_BLOCK_MESSAGES, max(_BLOCK_BYTES, size)), (1, size)):
                if self._store.meter(
                    agreement.id,
                    consumer=run.consumer,
                    product=run.product.id,
                    max_transfers=agreement.max_transfers,
                    limits=run.limits,
                    size=block,
                    messages=messages,
                    now_ms=self._now_ms(),
                ):
                    # The rest of an earlier block that this message did not fit is kept.
                    run.ahead_messages += messages - 1
                    run.ahead_bytes += block - size
                    return None
            used = self._store.stream_usage(agreement.id, run.limits, self._now_ms())
            refused = used.refusal(run.limits, 1, size)
            if refused:
                return refused
        return "a limit of the agreement was reached"

    def _turn_period(self, run: _Run) -> None:
        period = run.limits.period_start_ms(self._now_ms())
        if period != run.ahead_period:
            self._give_back(run)
            run.ahead_period = period

    def _give_back(self, run: _Run) -> None:
        """Refund what this subscription counted ahead and did not send."""
        self._store.refund(
            run.agreement.id,
            run.ahead_messages,
            run.ahead_bytes,
            self._now_ms(),
            period_start_ms=run.ahead_period,
        )
        run.ahead_messages = run.ahead_bytes = 0

    def _settle(
        self,
        run: _Run,
        windows: WindowAccumulator,
        inbox: queue.Queue[object],
        pending: collections.deque[tuple[Window, float]],
    ) -> Iterator[stream_pb2.SubscribeDown]:
        """Before a stream the agreement stopped ends, receipt what was already sent.

        The records sent since the last window are proposed as a last window, and the
        consumer has ``_SETTLE_SECONDS`` to sign what it holds. Without this, records sent
        in one frame just before a limit or a revocation would stay unreceipted: not kept by
        the consumer, and sent again (and counted again) at the next subscription. Nothing
        more is delivered meanwhile; a consumer that does not sign in time ends as before.
        """
        last = windows.flush()
        if last is not None:
            pending.append((last, time.monotonic()))
            yield stream_pb2.SubscribeDown(window=_proposal(last))
        deadline = time.monotonic() + _SETTLE_SECONDS
        try:
            while pending and time.monotonic() < deadline:
                yield from self._receipts(run, inbox, pending)
                if pending:
                    time.sleep(0.005)
        except (_Ended, ConnectorError):
            pass  # the consumer left or sent a bad receipt: it ends for the first reason

    def _receipts(
        self,
        run: _Run,
        inbox: queue.Queue[object],
        pending: collections.deque[tuple[Window, float]],
    ) -> Iterator[stream_pb2.SubscribeDown]:
        """Countersign the receipts the consumer sent since the last look."""
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            if item is _END:
                raise _Ended(
                    SUSPENDED,
                    "the consumer ended the subscription",
                    Unavailable("the subscription ended: the consumer closed it"),
                )
            if isinstance(item, ConnectorError):
                raise _Ended(SUSPENDED, str(item), item)
            assert isinstance(item, str)
            if not pending:
                raise self._refuse(run, None, "a receipt for no proposed window")
            window = pending[0][0]
            countersigned = self._countersign(run, window, item)
            pending.popleft()
            yield stream_pb2.SubscribeDown(countersigned=countersigned)

    def _countersign(self, run: _Run, window: Window, signed: str) -> str:
        try:
            receipt = parse_window(signed)
        except VerificationError as exc:
            raise self._refuse(run, window, str(exc)) from None
        expected = {
            "agreement": run.agreement.id,
            "product": run.product.id,
            "provider": self._me,
            "consumer": run.consumer,
            "window": window,
        }
        wrong = [k for k, v in expected.items() if getattr(receipt, k) != v]
        if wrong:
            raise self._refuse(run, window, f"its {', '.join(wrong)} differ from what was sent")
        try:
            countersigned = countersign_window(signed, self._key, self._keys)
        except VerificationError as exc:
            raise self._refuse(run, window, str(exc)) from None
        now = self._now_ms()
        try:
            self._store.acknowledge(run.agreement.id, PROVIDER, window, countersigned, now)
        except PreconditionFailed as exc:
            raise _Ended(SUSPENDED, str(exc), exc) from None
        self._audit.record(
            "stream.window",
            parties=[run.consumer],
            data={"agreement": run.agreement.id, **window.content(), "receipt": countersigned},
        )
        return countersigned

    def _refuse(self, run: _Run, window: Window | None, why: str) -> _Ended:
        """Log a window the consumer did not sign as proposed; the subscription ends."""
        self._audit.record(
            "stream.window_refused",
            parties=[run.consumer],
            data={
                "agreement": run.agreement.id,
                "window": window.content() if window is not None else None,
                "reason": why[:300],
            },
        )
        return _Ended(
            SUSPENDED,
            f"window receipt refused: {why}",
            VerificationError(
                f"the window receipt was refused ({why}); the subscription is suspended: "
                "resume from your last countersigned window"
            ),
        )

    def _end(self, run: _Run, state: str, reason: str) -> None:
        """Record and log how the subscription ended and what it sent."""
        with contextlib.suppress(ConnectorError):
            self._give_back(run)
        run.ahead_messages = run.ahead_bytes = 0
        self._store.set_state(run.agreement.id, PROVIDER, state, reason, self._now_ms())
        with contextlib.suppress(ConnectorError):
            self._audit.record(
                "stream.stopped" if state == TERMINATED else "stream.suspended",
                parties=[run.consumer],
                data={
                    "agreement": run.agreement.id,
                    "sent": run.sent,
                    "sent_bytes": run.sent_bytes,
                    "last_sequence": run.last_sequence,
                    "reason": reason[:300],
                },
            )

    def terminate(
        self, agreement_id: str, reason: str, caller: Caller | None = None
    ) -> StreamState:
        """End a stream for good: our admin (``caller`` None), or its consumer. Logged,
        TERMINATED; a running subscription stops at its next check. ``NotFound`` for no
        stream here or one that is not the caller's, ``PreconditionFailed`` if it is
        TERMINATED already (nothing changes)."""
        state = self._store.get(agreement_id, PROVIDER)
        if caller is not None and caller.participant != state.counterparty:
            raise NotFound(f"no stream under agreement {agreement_id!r}")
        if state.state == TERMINATED:
            raise PreconditionFailed(
                f"the stream of agreement {agreement_id} is already TERMINATED ({state.reason})"
            )
        by = "provider" if caller is None else "consumer"
        reason = reason or f"terminated by the {by}"
        logged = self._audit.prepare(
            [
                (
                    "stream.terminated",
                    [state.counterparty],
                    {
                        "agreement": agreement_id,
                        "by": by,
                        "acked_sequence": state.acked_sequence,
                        "reason": reason[:300],
                    },
                )
            ]
        )
        if not self._store.terminate(agreement_id, PROVIDER, reason, self._now_ms(), logged):
            now = self._store.get(agreement_id, PROVIDER)
            raise PreconditionFailed(
                f"the stream of agreement {agreement_id} is already TERMINATED ({now.reason})"
            )
        return self._store.get(agreement_id, PROVIDER)


def _stopped(agreement_id: str, reason: str) -> _Ended:
    """The end of a stream the agreement no longer allows: TERMINATED, or SUSPENDED when
    only a per-period limit stops it (the next period allows it again)."""
    period_only = set(reason.split(", ")) <= PERIOD_REASONS
    return _Ended(
        SUSPENDED if period_only else TERMINATED,
        reason,
        PermissionDenied(
            f"stream of agreement {agreement_id} stopped: {reason}"
            + (f"; {NEXT_PERIOD}" if period_only else "")
        ),
        settle=True,
    )


class _Frame:
    """One gRPC message of records, built in place: a ``StreamBatch``'s records are added to
    it directly (a batch made from a list of messages copies each one, twice with the
    ``SubscribeDown`` around it), or the one record of a consumer that takes no batches."""

    def __init__(self, batch: bool) -> None:
        self.down = stream_pb2.SubscribeDown()
        self._batch = batch
        self.count = 0
        self.size = 0

    def add(self, sequence: int, previous: int, record: bytes) -> None:
        if self._batch:
            self.down.batch.messages.add(sequence=sequence, previous=previous, record=record)
        else:
            m = self.down.message
            m.sequence, m.previous, m.record = sequence, previous, record
        self.count += 1
        self.size += len(record)


def _proposal(window: Window) -> stream_pb2.WindowProposal:
    return stream_pb2.WindowProposal(**window.content())


def _read_receipts(requests: Iterator[stream_pb2.SubscribeUp], inbox: queue.Queue[object]) -> None:
    """The consumer's side of the call, read in a thread so the stream never waits on it."""
    try:
        for message in requests:
            if message.WhichOneof("kind") != "receipt":
                inbox.put(InvalidRequest("after start, Subscribe takes only window receipts"))
                return
            inbox.put(message.receipt)
    except Exception as exc:  # the call was cancelled: the consumer is gone
        log.debug("subscription receipts ended: %s", exc.__class__.__name__)
    inbox.put(_END)


def _check_delivery(agreement: Agreement, push: bool) -> None:
    """``PreconditionFailed`` unless the stream is asked for the way its offer delivers
    it: pushed (``delivery`` lists ``push``) or pulled."""
    if ("push" in agreement.delivery) != push:
        by, use = ("push", "RequestStreamPush") if not push else ("pull", "Subscribe")
        raise PreconditionFailed(
            f"the stream of agreement {agreement.id} is delivered by {by}; use {use}"
        )
