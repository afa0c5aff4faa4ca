"""``StreamService``: the provider's Subscribe, and the consumer admin's Follow and list."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import grpc

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc
from connector.errors import NotFound, PreconditionFailed, Unavailable
from connector.identifiers import AGREEMENT_ID, check_text
from connector.rpc.auth import Access, current_caller
from connector.rpc.server import Service
from connector.transfer.store import CONSUMER
from connector.transfer.stream_push import AGREEMENT_HEADER, push_stream
from connector.transfer.stream_store import StreamStore
from connector.transfer.streaming import StreamProvider
from connector.transfer.subscriber import StreamConsumer, StreamProgress

__all__ = ["StreamServicer", "stream_service"]

_CHUNK_BYTES = 256 * 1024
"""A segment is read out in chunks of at most this (gRPC's default limit is 4 MiB)."""


_CLOSE_TRIES = 200
_CLOSE_PAUSE = 0.05
"""How a cancelled subscription's generator is closed: tried every 50 ms for up to 10 s
while it is running (it then either notices the cancel itself or stops at a yield)."""


def _close_when_done(stream: Generator[Any, None, None]) -> None:
    """Close a Subscribe generator once its call has ended.

    grpc stops pulling a response iterator whose call was cancelled while a message was
    being sent, without closing it: the subscription would stay STARTED, its source
    subscription open and its metered-ahead block unrefunded until the garbage collector
    came by. Closing it raises GeneratorExit at its yield, where it records its end.
    """

    def close() -> None:
        for _ in range(_CLOSE_TRIES):
            try:
                stream.close()
                return
            except ValueError:  # running in the call's thread right now
                time.sleep(_CLOSE_PAUSE)

    threading.Thread(target=close, daemon=True, name="stream-close").start()


def _event(p: StreamProgress) -> stream_pb2.FollowEvent:
    return stream_pb2.FollowEvent(
        event=p.event,
        agreement_id=p.agreement_id,
        messages=p.messages,
        bytes=p.bytes,
        last_sequence=p.last_sequence,
        window=p.window,
        kept_sequence=p.kept_sequence,
        detail=p.detail,
    )


class StreamServicer(stream_pb2_grpc.StreamServiceServicer):
    """Serves both roles: streams this connector provides and streams it receives."""

    def __init__(
        self,
        provider: StreamProvider,
        consumer: StreamConsumer,
        store: StreamStore,
        channel_to: Callable[[str], grpc.Channel] | None = None,
    ) -> None:
        """``channel_to(participant)``: a channel to another member's connector, for
        the streams this one pushes (none: it pushes none)."""
        self._provider = provider
        self._consumer = consumer
        self._store = store
        self._channel_to = channel_to

    def Subscribe(
        self, request_iterator: Iterator[stream_pb2.SubscribeUp], context: Any
    ) -> Iterator[stream_pb2.SubscribeDown]:
        """Consumer → provider."""

        def stream() -> Generator[stream_pb2.SubscribeDown, None, None]:
            # The caller is read at the first pull, where the auth interceptor shows it.
            caller = current_caller()
            yield from self._provider.subscribe(caller, request_iterator, context.is_active)

        subscription = stream()
        context.add_callback(lambda: _close_when_done(subscription))
        return subscription

    def RequestStreamPush(
        self, request: stream_pb2.RequestStreamPushRequest, context: Any
    ) -> stream_pb2.RequestStreamPushResponse:
        """Consumer -> provider: push the stream into the consumer's connector."""
        agreement_id = AGREEMENT_ID.check(request.agreement_id)
        if self._channel_to is None:
            raise Unavailable("this connector cannot reach other members")
        caller = current_caller()
        self._provider.check_push(caller, agreement_id)
        channel = self._channel_to(caller.participant)
        try:
            push_stream(self._provider.subscribe, channel, caller, agreement_id, context.is_active)
        finally:
            channel.close()
        return stream_pb2.RequestStreamPushResponse(agreement_id=agreement_id)

    def Deliver(
        self, request_iterator: Iterator[stream_pb2.SubscribeDown], context: Any
    ) -> Iterator[stream_pb2.SubscribeUp]:
        """Provider -> consumer: a push this connector asked for."""
        named = dict(context.invocation_metadata()).get(AGREEMENT_HEADER, "")
        agreement_id = AGREEMENT_ID.check(named if isinstance(named, str) else "")

        def stream() -> Generator[stream_pb2.SubscribeUp, None, None]:
            # The caller is read at the first pull, where the auth interceptor shows it.
            yield from self._consumer.pushes.deliver(
                current_caller(), agreement_id, request_iterator
            )

        return stream()

    def Follow(
        self, request: stream_pb2.FollowRequest, context: Any
    ) -> Iterator[stream_pb2.FollowEvent]:
        """Admin → own connector. Cancelling the call suspends the subscription."""
        stop = threading.Event()
        context.add_callback(stop.set)
        events: list[StreamProgress] = []
        lock = threading.Condition()

        def sink(p: StreamProgress) -> None:
            with lock:
                events.append(p)
                lock.notify()

        outcome: dict[str, Any] = {}

        def follow() -> None:
            try:
                outcome["last"] = self._consumer.follow(
                    request.agreement_id, stop=stop, progress=sink
                )
            except BaseException as exc:  # handed to the call's thread below
                outcome["error"] = exc
            finally:
                with lock:
                    outcome["done"] = True
                    lock.notify()

        worker = threading.Thread(target=follow, daemon=True, name="stream-follow")
        worker.start()
        while True:
            with lock:
                while not events and "done" not in outcome:
                    lock.wait()
                batch, events[:] = list(events), []
                done = "done" in outcome
            for p in batch:
                yield _event(p)
            if done:
                break
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        yield _event(outcome["last"])

    def StopStream(
        self, request: stream_pb2.StopStreamRequest, context: Any
    ) -> stream_pb2.StopStreamResponse:
        """Admin → own connector: end a stream of either role for good."""
        agreement_id = AGREEMENT_ID.check(request.agreement_id)
        reason = _reason(request.reason)
        told = False
        try:
            self._store.get(agreement_id, CONSUMER)
        except NotFound:
            state = self._provider.terminate(agreement_id, reason)  # NotFound: neither role
        else:
            state, told = self._consumer.terminate(agreement_id, reason)
        return stream_pb2.StopStreamResponse(
            agreement_id=state.agreement_id,
            role=state.role,
            state=state.state,
            reason=state.reason,
            counterparty_told=told,
        )

    def TerminateStream(
        self, request: stream_pb2.TerminateStreamRequest, context: Any
    ) -> stream_pb2.TerminateStreamResponse:
        """Consumer → provider: the consumer ended the stream."""
        agreement_id = AGREEMENT_ID.check(request.agreement_id)
        reason = _reason(request.reason)
        state = self._provider.terminate(
            agreement_id, reason or "terminated by the consumer", current_caller()
        )
        return stream_pb2.TerminateStreamResponse(
            agreement_id=state.agreement_id, state=state.state
        )

    def ReadSegments(
        self, request: stream_pb2.ReadSegmentsRequest, context: Any
    ) -> Iterator[stream_pb2.SegmentChunk]:
        """Admin → own connector: the committed segments of a holding, from a window on."""
        agreement_id = AGREEMENT_ID.check(request.agreement_id)
        for window, path in self._consumer.segments(agreement_id, request.from_window):
            try:
                f = path.open("rb")
            except FileNotFoundError:
                raise PreconditionFailed(
                    f"window {window} of agreement {agreement_id} is no longer held"
                ) from None
            with f:
                while True:
                    block = f.read(_CHUNK_BYTES)
                    last = len(block) < _CHUNK_BYTES
                    yield stream_pb2.SegmentChunk(window=window, data=block, last=last)
                    if last:
                        break

    def ListStreams(
        self, request: stream_pb2.ListStreamsRequest, context: Any
    ) -> stream_pb2.ListStreamsResponse:
        """Admin → own connector: the streams it receives."""
        out = []
        for s in self._store.all(CONSUMER):
            out.append(
                stream_pb2.StreamHolding(
                    agreement_id=s.agreement_id,
                    product_id=s.product,
                    provider=s.counterparty,
                    state=s.state,
                    reason=s.reason,
                    kept_sequence=s.acked_sequence,
                    windows=s.next_window,
                    messages=s.messages,
                    bytes=s.bytes,
                    path=s.path,
                    deleted=bool(s.deleted_ms),
                )
            )
        return stream_pb2.ListStreamsResponse(streams=out)


def _reason(text: str) -> str:
    """An optional reason: free text that cannot forge lines in a log or a terminal."""
    return check_text(text, "reason", limit=400) if text else ""


def stream_service(servicer: StreamServicer) -> Service:
    """``StreamService`` with its access table."""
    return Service(
        "tds.v1.StreamService",
        stream_pb2_grpc.add_StreamServiceServicer_to_server,
        servicer,
        {
            "Subscribe": Access.MEMBER,
            "TerminateStream": Access.MEMBER,
            "RequestStreamPush": Access.MEMBER,
            "Deliver": Access.MEMBER,
            "Follow": Access.ADMIN,
            "ListStreams": Access.ADMIN,
            "StopStream": Access.ADMIN,
            "ReadSegments": Access.ADMIN,
        },
    )
