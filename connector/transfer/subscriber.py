"""The consumer's side of a stream: subscribe, check every record, sign windows, keep them.

The connector subscribes (it holds the membership token and the signing key) from the last
sequence it acknowledged, with the chain head and window index of that window
(:class:`~connector.transfer.stream_store.StreamStore`), so a resume after a break or a
restart of either side loses and doubles nothing:

- every record, alone or in a batch, goes through
  :class:`~connector.sources.windows.StreamChecker` in order: a gap, a repeat or a
  reordering is an integrity failure that ends the subscription, logged;
- records are written to the window's pending segment as they arrive; when the provider
  proposes a window the checker confirms it is exactly what arrived (else the window is
  refused, logged, and the subscription ends), the consumer signs it, and once the
  provider's countersignature is back and verified the segment is committed (renamed to
  ``NNNNNNNN.jsonl``, fsynced) together with the new resume point, and logged. Records
  after the last committed window are not kept: they come again on the next subscription;
- a window signed and not countersigned back keeps its records until the next
  subscription starts: the provider may have countersigned it and lost the answer, and
  then sends the receipt again (``StreamStarted.receipted``), which is kept only if it is
  this consumer's own signature on the window those records make (``_catch_up``).

Holdings: ``<holdings>/streams/<agreement>/`` holds the committed segments, one per
window, each line ``{"sequence": N, "record": {...}}`` (append-only: a segment is never
rewritten). The holding is kept under the agreement's obligations and deleted (logged
first, ``stream.deleted``) only by the holdings sweep
(:class:`~connector.transfer.holdings.HoldingsSweeper`), on what it verified: the
agreement's time, or the provider's signed revocation. A provider's stop is never grounds
by its text: when it ends the stream saying the agreement was revoked or the consent
withdrawn, the consumer waits briefly for the signed revocation, then sweeps the
agreement's holdings at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ed25519

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc
from connector.audit import jws
from connector.audit.canonical import canonical_json
from connector.audit.log import AuditLog
from connector.audit.window_receipts import (
    WindowReceipt,
    sign_window,
    verify_window_countersignature,
)
from connector.clock import Clock
from connector.errors import (
    ConnectorError,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    VerificationError,
)
from connector.identifiers import AGREEMENT_ID, check_text, contained
from connector.negotiation.agreement import Agreement, parse_agreement
from connector.negotiation.states import State
from connector.negotiation.store import NegotiationStore
from connector.rpc.channel import calling
from connector.sources.windows import (
    HashChain,
    StreamChecker,
    Window,
    WindowAccumulator,
    genesis_head,
)
from connector.transfer.holdings import checked_obligations
from connector.transfer.store import CONSUMER
from connector.transfer.stream_push import PushedStream, StreamPushes
from connector.transfer.stream_store import (
    NEXT_PERIOD,
    STARTED,
    SUSPENDED,
    TERMINATED,
    StreamState,
    StreamStore,
)

__all__ = ["StreamConsumer", "StreamProgress", "stream_holding"]

log = logging.getLogger(__name__)

_REVOKED = ("agreement_revoked", "consent_withdrawn")
"""Reasons a provider stops a stream for that only its signed revocation confirms (pushed
to us: ``Negotiator.receive_revocation``). Free text from the provider: it deletes nothing
by itself, it only makes the consumer wait for the revocation before sweeping."""

_REVOCATION_WAIT = 3.0
"""How long the end of a stream stopped for revocation waits for the signed revocation
(sent the moment the provider revokes, it usually arrives before the stop)."""

_PROVIDER_STOP_WAIT = 2.0
"""How long a deletion for a revocation lets a running subscription be ended by its
provider (which stops it within a second) before stopping it here, so the stream ends
as the provider's stop, logged as such on both sides."""

_PENDING = "pending.jsonl"
_SEGMENT_BUFFER = 1 << 20

_STOPPING_WAIT = 10.0
"""How long a new subscription waits for one of the same agreement that is stopping."""


def stream_holding(holdings_dir: Path, agreement_id: str) -> Path:
    """Where the consumer keeps an agreement's stream: ``<holdings>/streams/<agreement>``,
    from the checked agreement id, never from a path in a record."""
    AGREEMENT_ID.check(agreement_id, error=VerificationError)
    return contained(holdings_dir / "streams", agreement_id, error=VerificationError)


@dataclass(frozen=True)
class StreamProgress:
    """One event of a running subscription, for the admin's live line."""

    event: str
    """started, window, suspended, stopped"""
    agreement_id: str
    messages: int
    """Messages received in this subscription."""
    bytes: int
    last_sequence: int
    window: int = -1
    """Index of the last countersigned window (-1: none yet in this subscription)."""
    kept_sequence: int = 0
    """The last sequence committed to the holding."""
    detail: str = ""


ProgressSink = Callable[[StreamProgress], None]


class _Segment:
    """The records of the open window, written as they arrive, committed with it.

    When the provider proposes a window, the records written so far are exactly its
    records (the proposal follows its last record); they are set aside as the window's
    ``.proposed`` file, and the records that arrive while its receipt is signed and
    countersigned go to the next one. A countersignature makes the window's file its
    segment. One not countersigned in the subscription is kept until the next one starts:
    the provider may have countersigned it and lost the answer, and then resends the
    receipt; one it did not countersign is dropped, and delivered again.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._path = directory / _PENDING
        self._file: IO[bytes] = self._open()  # what was pending before is dropped

    def _open(self) -> IO[bytes]:
        # A window's records (about 1 MB at 1,000 records of 1 KB) are written to the file
        # in a few calls, not one per 8 KB: they count only once ``propose`` has synced
        # them, and until then they are kept nowhere else either way.
        return self._path.open("wb", buffering=_SEGMENT_BUFFER)

    def add(self, sequence: int, record: bytes) -> None:
        self._file.write(b'{"sequence":%d,"record":%s}\n' % (sequence, record))

    def propose(self, index: int) -> None:
        """The records so far are the window ``index``'s; later ones belong to the next."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._path, self._dir / f"{index:08d}.proposed")
        self._file = self._open()

    def commit(self, index: int) -> Path:
        """Make the window ``index``'s records (set aside by ``propose``) its segment."""
        final = self._dir / f"{index:08d}.jsonl"
        proposed = self._dir / f"{index:08d}.proposed"
        if proposed.exists() or not final.exists():  # else committed before a crash
            os.replace(proposed, final)
        return final

    def held(self, index: int) -> list[tuple[int, bytes]]:
        """The records set aside for window ``index`` (its ``.proposed`` file, or its
        segment if it was committed just before a crash left the store behind): what the
        consumer signed when it signed that window. ``VerificationError`` if there are
        none or a line is not one this class wrote."""
        for name in (f"{index:08d}.proposed", f"{index:08d}.jsonl"):
            try:
                lines = (self._dir / name).read_bytes().splitlines()
            except FileNotFoundError:
                continue
            try:
                return [_held_line(line) for line in lines]
            except (ValueError, KeyError, TypeError):
                raise VerificationError(
                    f"the records set aside for window {index} are damaged"
                ) from None
        raise VerificationError(f"no records of window {index} are held here (none was signed)")

    def discard_from(self, index: int) -> None:
        """Drop what was set aside for window ``index`` and later: never countersigned,
        their records come again."""
        for proposed in self._dir.glob("*.proposed"):
            stem = proposed.name.split(".")[0]
            if not stem.isdigit() or int(stem) >= index:
                proposed.unlink(missing_ok=True)

    def close(self, keep_signed: bool) -> None:
        """End the subscription's segment: records of no window are dropped; windows
        signed and not countersigned are kept while the stream may resume (the provider
        may have countersigned them and resend the receipts, see ``StreamStarted``)."""
        self._file.close()
        self._path.unlink(missing_ok=True)
        if not keep_signed:
            self.discard_from(0)


def _held_line(line: bytes) -> tuple[int, bytes]:
    entry = json.loads(line)
    sequence, record = entry["sequence"], entry["record"]
    if not isinstance(sequence, int) or not isinstance(record, dict):
        raise TypeError("not a record line")
    return sequence, canonical_json(record)


class StreamConsumer:
    """Receives stream products under this connector's agreements into its holdings."""

    def __init__(
        self,
        *,
        participant: str,
        store: StreamStore,
        negotiations: NegotiationStore,
        audit: AuditLog,
        clock: Clock,
        signing_key: ed25519.Ed25519PrivateKey,
        keys: jws.KeyLookup,
        channel_to: Callable[[str], grpc.Channel],
        holdings_dir: Path,
        sweep: Callable[[str], object] | None = None,
    ) -> None:
        """``sweep(agreement_id)``: the holdings sweep of one agreement
        (``HoldingsSweeper.sweep``), run when the provider stops a stream; without it a
        holding goes only at the periodic sweep."""
        self._me = participant
        self._store = store
        self._negotiations = negotiations
        self._audit = audit
        self._clock = clock
        self._key = signing_key
        self._keys = keys
        self._channel_to = channel_to
        self._dir = holdings_dir
        self._sweep = sweep
        self._running: dict[str, tuple[threading.Event, threading.Event]] = {}
        self.pushes = StreamPushes()
        """Pushes of streams whose offer delivers by push, each awaited by a follow."""
        """Agreement -> (its stop, its end) of each subscription running here."""
        self._lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _agreement(self, agreement_id: str) -> Agreement:
        try:
            n = self._negotiations.by_agreement(agreement_id)
        except NotFound:
            raise NotFound(f"this connector holds no agreement {agreement_id!r}") from None
        if n.role != CONSUMER:
            raise PreconditionFailed(
                f"agreement {agreement_id} is one where this connector is the provider"
            )
        if n.state != State.FINALIZED:
            raise PreconditionFailed(f"agreement {agreement_id} is {n.state.value}, not FINALIZED")
        if n.revocation:
            raise PermissionDenied(f"agreement {agreement_id} was revoked by the provider")
        agreement = parse_agreement(n.agreement or "")
        if agreement.provider != n.counterparty or agreement.consumer != self._me:
            raise PreconditionFailed(f"agreement {agreement_id} is not between us and its provider")
        return agreement

    def follow(
        self,
        agreement_id: str,
        *,
        stop: threading.Event,
        progress: ProgressSink | None = None,
    ) -> StreamProgress:
        """Subscribe under ``agreement_id`` until ``stop`` is set (SUSPENDED) or the
        provider ends it; the last progress event."""
        agreement = self._agreement(agreement_id)
        done = threading.Event()
        deadline = time.monotonic() + _STOPPING_WAIT
        while True:
            with self._lock:
                running = self._running.get(agreement_id)
                if running is None:
                    self._running[agreement_id] = (stop, done)
                    break
            # One that was asked to stop (Ctrl-C, then the same command again) is let
            # finish suspending first; one still running is not doubled.
            other_stop, other_done = running
            if not other_stop.is_set() or not other_done.wait(
                max(0.0, deadline - time.monotonic())
            ):
                raise PreconditionFailed(
                    f"a subscription under agreement {agreement_id} is already running here"
                )
        stopped: str | None = None
        try:
            return self._follow(agreement, stop, progress or (lambda _: None))
        except PermissionDenied as exc:
            stopped = str(exc)  # the provider stopped (or refused) the stream
            raise
        finally:
            with self._lock:
                del self._running[agreement_id]
            done.set()
            if stopped is not None:
                # Once the subscription is over: a deletion then has nothing to stop.
                self._settle(agreement_id, stopped)

    def _follow(
        self, agreement: Agreement, stop: threading.Event, progress: ProgressSink
    ) -> StreamProgress:
        directory = stream_holding(self._dir, agreement.id)
        state = self._store.ensure(
            agreement.id,
            CONSUMER,
            counterparty=agreement.provider,
            product=agreement.product,
            genesis=genesis_head(agreement.id).hex(),
            now_ms=self._now_ms(),
            path=str(directory),
            obligations=agreement.obligations,
        )
        if state.state == TERMINATED:
            raise PreconditionFailed(
                f"the stream of agreement {agreement.id} was terminated ({state.reason})"
            )
        if state.deleted_ms:
            raise PreconditionFailed(f"the holding of agreement {agreement.id} was deleted")
        directory.mkdir(parents=True, exist_ok=True)
        outgoing: queue.Queue[stream_pb2.SubscribeUp | None] = queue.Queue()
        outgoing.put(
            stream_pb2.SubscribeUp(
                start=stream_pb2.SubscribeStart(
                    agreement_id=agreement.id, from_sequence=state.acked_sequence, batches=True
                )
            )
        )

        def requests() -> Iterator[stream_pb2.SubscribeUp]:
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        channel = self._channel_to(agreement.provider)
        call: Any = (
            # The offer delivers by push: the provider opens the call into this connector.
            self.pushes.expect(agreement.id, agreement.provider, requests(), channel)
            if "push" in agreement.delivery
            else stream_pb2_grpc.StreamServiceStub(channel).Subscribe(requests())
        )

        # Setting ``stop`` ends our side of the call; the provider then suspends.
        def end_on_stop() -> None:
            stop.wait()
            outgoing.put(None)

        watcher = threading.Thread(target=end_on_stop, daemon=True, name="stream-stop")
        watcher.start()
        run = _Received(
            agreement=agreement,
            state=state,
            last_sequence=state.acked_sequence,
            kept=state.acked_sequence,
        )
        segment = _Segment(directory)
        try:
            with calling(agreement.provider):
                for down in call:
                    event = self._handle(run, down, segment, outgoing)
                    if event is not None:
                        progress(event)
            reason = "the provider ended the subscription"
            self._store.set_state(agreement.id, CONSUMER, SUSPENDED, reason, self._now_ms())
        except VerificationError as exc:
            call.cancel()
            self._fail(run, f"integrity: {exc}")
            raise
        except PermissionDenied as exc:
            self._stopped(run, str(exc))
            raise
        except ConnectorError as exc:
            if stop.is_set():
                reason = "suspended by the consumer"
                self._store.set_state(agreement.id, CONSUMER, SUSPENDED, reason, self._now_ms())
                return run.event("suspended", reason)
            self._store.set_state(agreement.id, CONSUMER, SUSPENDED, str(exc), self._now_ms())
            raise
        finally:
            outgoing.put(None)
            stop.set()
            segment.close(keep_signed=self._resumable(agreement.id))
            if isinstance(call, PushedStream):
                call.close()
            channel.close()
        return run.event("suspended", "the provider ended the subscription")

    def _resumable(self, agreement_id: str) -> bool:
        """Whether a later subscription may resume the stream (not TERMINATED, the
        holding not deleted). In doubt, yes: what is kept is only what this consumer
        signed, dropped at the next start or with the holding, while dropping a window
        the provider countersigned would leave the stream unable to resume."""
        try:
            state = self._store.get(agreement_id, CONSUMER)
        except ConnectorError:
            return True
        return state.state != TERMINATED and not state.deleted_ms

    def _handle(
        self,
        run: _Received,
        down: stream_pb2.SubscribeDown,
        segment: _Segment,
        outgoing: queue.Queue[stream_pb2.SubscribeUp | None],
    ) -> StreamProgress | None:
        kind = down.WhichOneof("kind")
        if kind == "batch":
            for message in down.batch.messages:
                self._record(run, message, segment)
            return None
        if kind == "message":
            self._record(run, down.message, segment)
            return None
        if kind == "window":
            if run.checker is None:
                raise VerificationError("the provider proposed a window before starting")
            w = down.window
            proposed = Window(
                w.index, w.first_sequence, w.last_sequence, w.count, w.bytes, w.start_head, w.head
            )
            try:
                own = run.checker.confirm(proposed)
            except VerificationError as exc:
                self._audit.record(
                    "stream.window_refused",
                    parties=[run.agreement.provider],
                    data={"agreement": run.agreement.id, "index": w.index, "reason": str(exc)},
                )
                raise
            signed = self._sign(run.agreement, own)
            segment.propose(own.index)
            run.unsigned.append((own, signed))
            outgoing.put(stream_pb2.SubscribeUp(receipt=signed))
            return None
        if kind == "countersigned":
            if not run.unsigned:
                raise VerificationError("the provider countersigned a window not proposed")
            window, original = run.unsigned.popleft()
            verify_window_countersignature(down.countersigned, original, self._keys)
            self._commit(run, window, down.countersigned, segment)
            return run.event("window")
        if kind == "started":
            return self._started(run, down.started, segment)
        raise VerificationError("the provider sent a message of no known kind")

    def _commit(
        self, run: _Received, window: Window, countersigned: str, segment: _Segment
    ) -> None:
        """Keep a window whose countersigned receipt was checked: its segment, the resume
        point after it, and the receipt in the log."""
        segment.commit(window.index)
        self._store.acknowledge(run.agreement.id, CONSUMER, window, countersigned, self._now_ms())
        self._audit.record(
            "stream.window",
            parties=[run.agreement.provider],
            data={"agreement": run.agreement.id, **window.content(), "receipt": countersigned},
        )
        run.window = window.index
        run.kept = window.last_sequence

    def _sign(self, agreement: Agreement, window: Window) -> str:
        return sign_window(
            WindowReceipt(agreement.id, agreement.product, agreement.provider, self._me, window),
            self._key,
        )

    def _catch_up(self, run: _Received, receipts: list[str], segment: _Segment) -> None:
        """Commit the windows the provider countersigned in an earlier subscription whose
        receipts never arrived (``StreamStarted.receipted``), in order.

        Each must be this consumer's own signature, to the byte, on the window its set-aside
        records make from where the last one ended (the chain recomputed over them:
        sequences, count, bytes, heads), countersigned by the provider. Ed25519 signatures
        are deterministic, so signing that window again gives the receipt that was sent.
        All are checked before any is kept: one that does not match keeps nothing.
        """
        state = run.state
        after, head, index = state.acked_sequence, state.acked_head, state.next_window
        checked: list[tuple[Window, str]] = []
        for countersigned in receipts:
            chain = WindowAccumulator(
                HashChain(bytes.fromhex(head), after),
                every_messages=2**62,
                every_seconds=float("inf"),
                next_index=index,
            )
            try:
                for sequence, encoded in segment.held(index):
                    chain.add_encoded(sequence, encoded)
            except ValueError as exc:  # out of order: not records this consumer accepted
                raise VerificationError(f"the records held for window {index}: {exc}") from None
            window = chain.flush()
            if window is None:
                raise VerificationError(f"no records of window {index} are held here")
            try:
                verify_window_countersignature(
                    countersigned, self._sign(run.agreement, window), self._keys
                )
            except VerificationError as exc:
                raise VerificationError(
                    f"the receipt of window {index} the provider sent again is not the one "
                    f"signed here for the records held: {exc}"
                ) from None
            checked.append((window, countersigned))
            after, head, index = window.last_sequence, window.head, window.index + 1
        for window, countersigned in checked:
            self._commit(run, window, countersigned, segment)

    def _record(self, run: _Received, message: stream_pb2.StreamMessage, segment: _Segment) -> None:
        """Check one record (alone or in a batch, the same way) and add it to the segment."""
        if run.checker is None:
            raise VerificationError("the provider sent a record before starting")
        try:
            record = json.loads(message.record)
        except ValueError:
            raise VerificationError(f"record {message.sequence} is not JSON") from None
        if not isinstance(record, dict) or not run.fields.issuperset(record):
            raise VerificationError(
                f"record {message.sequence} has fields the subscription does not deliver"
            )
        run.checker.accept(message.sequence, message.previous, record)
        segment.add(message.sequence, message.record)
        run.messages += 1
        run.bytes += len(message.record)
        run.last_sequence = message.sequence

    def _started(
        self, run: _Received, s: stream_pb2.StreamStarted, segment: _Segment
    ) -> StreamProgress:
        if run.checker is not None:
            raise VerificationError("the provider started the stream twice")
        for bad, what in (
            (s.agreement_id != run.agreement.id, "names another agreement"),
            (s.product_id != run.agreement.product, "names another product"),
        ):
            if bad:
                raise VerificationError(f"the provider's start of the stream {what}")
        first, caught = run.state.next_window, bool(s.receipted)
        if caught:
            self._catch_up(run, list(s.receipted), segment)
            run.state = self._store.get(run.agreement.id, CONSUMER)
        state = run.state
        problems = [
            (s.after_sequence != state.acked_sequence, "resumes after another sequence"),
            (s.head != state.acked_head, "resumes from another chain head"),
            (s.next_window != state.next_window, "resumes at another window"),
            (len(set(s.fields)) != len(s.fields), "lists a field twice"),
            (
                run.agreement.permitted_fields is not None
                and not set(s.fields) <= set(run.agreement.permitted_fields),
                "lists fields the agreement does not permit",
            ),
        ]
        for bad, what in problems:
            if bad:
                raise VerificationError(f"the provider's start of the stream {what}")
        for name in s.fields:
            check_text(name, "field", error=VerificationError)
        # What was set aside and not countersigned by now never reached the provider's
        # store: its records come again, and are proposed again.
        segment.discard_from(state.next_window)
        obligations = checked_obligations(
            s.obligations_json, run.agreement, sender="the provider's start of the stream"
        )
        self._store.set_obligations(run.agreement.id, CONSUMER, obligations)
        run.fields = frozenset(s.fields)
        run.checker = StreamChecker(
            state.acked_sequence, bytes.fromhex(state.acked_head), state.next_window
        )
        run.last_sequence = run.kept = state.acked_sequence
        self._store.set_state(run.agreement.id, CONSUMER, STARTED, "", self._now_ms())
        self._audit.record(
            "stream.started",
            parties=[run.agreement.provider],
            data={
                "agreement": run.agreement.id,
                "product": run.agreement.product,
                "after_sequence": s.after_sequence,
                "window": s.next_window,
                "provider_log_index": s.provider_log_index,
                "fields": list(s.fields),
                # Windows committed from receipts the provider sent again (see _catch_up).
                **({"resent_windows": list(range(first, state.next_window))} if caught else {}),
            },
        )
        return run.event("started")

    def _fail(self, run: _Received, reason: str) -> None:
        self._store.set_state(run.agreement.id, CONSUMER, SUSPENDED, reason, self._now_ms())
        with contextlib.suppress(ConnectorError):
            self._audit.record(
                "stream.failed",
                parties=[run.agreement.provider],
                data={
                    "agreement": run.agreement.id,
                    "last_sequence": run.last_sequence,
                    "kept_sequence": run.kept,
                    "reason": reason[:300],
                },
            )

    def _stopped(self, run: _Received, reason: str) -> None:
        """The provider stopped the stream (for good once it had started; a refusal at
        subscribe may pass, and so does a per-period limit): recorded and logged. Whether
        the holding goes is :meth:`_settle`'s to decide, once the subscription is over."""
        now = self._now_ms()
        ended = run.checker is not None and NEXT_PERIOD not in reason
        state = TERMINATED if ended else SUSPENDED
        self._store.set_state(run.agreement.id, CONSUMER, state, reason, now)
        self._audit.record(
            "stream.stopped",
            parties=[run.agreement.provider],
            data={
                "agreement": run.agreement.id,
                "received": run.messages,
                "kept_sequence": run.kept,
                "reason": reason[:300],
            },
        )

    def _settle(self, agreement_id: str, reason: str) -> None:
        """Run the holdings sweep for an agreement whose stream the provider stopped: the
        holding goes now if the sweep's verified rule says so, never on ``reason`` (the
        provider's text) alone. A stop that says the agreement was revoked or the consent
        withdrawn first waits up to ``_REVOCATION_WAIT`` for the signed revocation."""
        if self._sweep is None:
            return
        try:
            if any(why in reason for why in _REVOKED):
                deadline = time.monotonic() + _REVOCATION_WAIT
                while not self._revocation_held(agreement_id) and time.monotonic() < deadline:
                    time.sleep(0.05)
            self._sweep(agreement_id)
        except (ConnectorError, OSError) as exc:  # the periodic sweep tries again
            log.warning(
                "holdings sweep failed", extra={"agreement": agreement_id, "reason": str(exc)}
            )

    def _revocation_held(self, agreement_id: str) -> bool:
        """Whether the provider's signed revocation of the agreement reached us."""
        try:
            return bool(self._negotiations.by_agreement(agreement_id).revocation)
        except NotFound:
            return True  # nothing to wait for: the sweep decides on an unknown agreement

    def delete(self, agreement_id: str, reason: str) -> None:
        """Delete the holding of a stream, logged first (what it held: windows, messages,
        bytes, the last kept sequence); for the holdings sweep, which decided it must go.
        A subscription running here is stopped first (after a moment for its provider to
        stop it, for a revocation)."""
        with self._lock:
            running = self._running.get(agreement_id)
        if running is not None:
            if reason in _REVOKED:
                running[1].wait(_PROVIDER_STOP_WAIT)
            running[0].set()
            running[1].wait(_STOPPING_WAIT)
        self._delete(agreement_id, reason)

    def _delete(self, agreement_id: str, reason: str) -> None:
        state = self._store.get(agreement_id, CONSUMER)
        if state.deleted_ms:
            return
        directory = stream_holding(self._dir, agreement_id)
        self._audit.record(
            "stream.deleted",
            parties=[state.counterparty],
            data={
                "agreement": agreement_id,
                "product": state.product,
                "windows": state.next_window,
                "messages": state.messages,
                "bytes": state.bytes,
                "kept_sequence": state.acked_sequence,
                "reason": reason[:300],
            },
        )
        shutil.rmtree(directory, ignore_errors=True)
        self._store.mark_deleted(agreement_id, CONSUMER, self._now_ms())

    def segments(self, agreement_id: str, from_window: int) -> list[tuple[int, Path]]:
        """The committed segments of a holding from window ``from_window`` on, in order
        (``NotFound`` for no stream here, ``PreconditionFailed`` once it was deleted)."""
        state = self._store.get(agreement_id, CONSUMER)
        if state.deleted_ms:
            raise PreconditionFailed(f"the holding of agreement {agreement_id} was deleted")
        directory = stream_holding(self._dir, agreement_id)
        return [
            (index, directory / f"{index:08d}.jsonl")
            for index in range(from_window, state.next_window)
        ]

    def terminate(self, agreement_id: str, reason: str) -> tuple[StreamState, bool]:
        """Our admin ends a stream we receive, for good: logged, TERMINATED, a running
        subscription stopped, then the provider told; the state and whether the provider
        confirmed. ``NotFound`` for no stream here, ``PreconditionFailed`` if it is
        TERMINATED already (nothing changes)."""
        state = self._store.get(agreement_id, CONSUMER)
        if state.state == TERMINATED:
            raise PreconditionFailed(
                f"the stream of agreement {agreement_id} is already TERMINATED ({state.reason})"
            )
        reason = reason or "terminated by the consumer"
        logged = self._audit.prepare(
            [
                (
                    "stream.terminated",
                    [state.counterparty],
                    {
                        "agreement": agreement_id,
                        "by": "consumer",
                        "kept_sequence": state.acked_sequence,
                        "reason": reason[:300],
                    },
                )
            ]
        )
        if not self._store.terminate(agreement_id, CONSUMER, reason, self._now_ms(), logged):
            now = self._store.get(agreement_id, CONSUMER)
            raise PreconditionFailed(
                f"the stream of agreement {agreement_id} is already TERMINATED ({now.reason})"
            )
        with self._lock:
            running = self._running.get(agreement_id)
        if running is not None:
            running[0].set()  # its own end leaves the state TERMINATED
        return self._store.get(agreement_id, CONSUMER), self._tell_provider(state, reason)

    def _tell_provider(self, state: StreamState, reason: str) -> bool:
        try:
            channel = self._channel_to(state.counterparty)
            try:
                with calling(state.counterparty):
                    stream_pb2_grpc.StreamServiceStub(channel).TerminateStream(
                        stream_pb2.TerminateStreamRequest(
                            agreement_id=state.agreement_id, reason=reason[:400]
                        ),
                        timeout=15,
                    )
            finally:
                channel.close()
        except ConnectorError as exc:
            log.warning(
                "could not tell the provider the stream ended",
                extra={"agreement": state.agreement_id, "reason": str(exc)},
            )
            return False
        return True


@dataclass
class _Received:
    """What one subscription has received so far."""

    agreement: Agreement
    state: StreamState
    checker: StreamChecker | None = None
    fields: frozenset[str] = frozenset()
    """The delivered fields (a record may lack some, never have others)."""
    messages: int = 0
    bytes: int = 0
    last_sequence: int = 0
    kept: int = 0
    window: int = -1
    unsigned: collections.deque[tuple[Window, str]] = field(default_factory=collections.deque)
    """Windows signed and sent, not yet countersigned back."""

    def event(self, name: str, detail: str = "") -> StreamProgress:
        return StreamProgress(
            name,
            self.agreement.id,
            self.messages,
            self.bytes,
            self.last_sequence,
            self.window,
            self.kept,
            detail,
        )
