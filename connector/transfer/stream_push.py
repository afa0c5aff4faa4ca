"""Streams delivered by push: the provider opens the call into the consumer's connector.

An offer whose ``delivery`` lists ``push`` (with ``copy``; stream products only) has its
stream delivered the other way round from ``Subscribe``: the consumer's connector asks
with ``RequestStreamPush`` and keeps that call open; the provider opens ``Deliver`` to the
consumer's registered address over mutual TLS and sends there exactly what ``Subscribe``
would return, while the consumer answers on it what it would send on ``Subscribe``
(``start``, then its signed window receipts). Both ends run the pull code unchanged:

- the provider's side is :meth:`StreamProvider.subscribe` (``push=True``), its requests
  read from the ``Deliver`` call's responses, its messages sent as the call's requests:
  the same decision, continuous checks, windows, metering, resume and stops;
- the consumer's side is :meth:`StreamConsumer.follow`, which reads a
  :class:`PushedStream` where it would read the ``Subscribe`` call: the same sequence
  checks, hash chain, receipts and holdings.

How a push ends: the provider's messages end (it closed its side: the consumer left, or
the usage policy or a refused receipt stopped it), the consumer's connector then closes
``Deliver``, and the provider ends ``RequestStreamPush`` with the subscription's status,
which the consumer's follow then raises as it would a ``Subscribe`` call's. A ``Deliver``
no follow here waits for is refused: a provider cannot put records into a consumer's
holdings under an agreement that does not deliver by push, or unasked.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import grpc

from connector._proto.tds.v1 import stream_pb2, stream_pb2_grpc
from connector.errors import NotFound, Unavailable
from connector.rpc.auth import Caller
from connector.rpc.channel import calling

__all__ = ["AGREEMENT_HEADER", "PushedStream", "StreamPushes", "push_stream"]

_log = logging.getLogger(__name__)

AGREEMENT_HEADER = "tds-agreement-id"
"""The ``Deliver`` call's metadata naming the agreement whose stream it carries."""

_PROVIDER_DONE = object()
"""The provider closed its side of ``Deliver``: what it sent has all arrived."""


# -- the provider ---------------------------------------------------------------------


def push_stream(
    subscribe: Callable[..., Iterator[stream_pb2.SubscribeDown]],
    channel: grpc.Channel,
    caller: Caller,
    agreement_id: str,
    active: Callable[[], bool],
) -> None:
    """Run the subscription ``caller`` asked to have pushed, into ``channel`` (to the
    caller's connector), until it ends; raises what ended it as ``Subscribe`` would.

    ``subscribe`` is :meth:`StreamProvider.subscribe`; ``active`` whether the caller's
    ``RequestStreamPush`` is still open (the consumer cancelling it stops the push).
    """
    opened = threading.Event()
    call: Any = None

    def answers() -> Iterator[stream_pb2.SubscribeUp]:
        # The consumer's messages: the Deliver call's responses.
        opened.wait()
        try:
            yield from call
        except grpc.RpcError:
            return  # the call ended: the subscription sees its consumer gone

    failure: list[Exception] = []

    def sent() -> Generator[stream_pb2.SubscribeDown, None, None]:
        # Run in gRPC's sending thread, which would swallow what ended the subscription:
        # it is kept here for RequestStreamPush's status.
        try:
            yield from subscribe(
                caller,
                answers(),
                lambda: active() and call is not None and call.is_active(),
                push=True,
            )
        except Exception as exc:
            failure.append(exc)

    messages = sent()
    stub = stream_pb2_grpc.StreamServiceStub(channel)
    call = stub.Deliver(messages, metadata=((AGREEMENT_HEADER, agreement_id),))
    opened.set()
    # The consumer's connector closes the call once everything sent has arrived (or it
    # refused the push, or its follow ended); the consumer cancelling RequestStreamPush
    # cancels it.
    done = threading.Event()
    call.add_done_callback(lambda *_: done.set())
    while not done.wait(0.25):
        if not active():
            call.cancel()
    _close(messages)
    code = call.code()
    if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
        # The consumer's connector refused the push (or broke): its reason comes first.
        with calling(caller.participant):
            raise _CallError(code, call.details() or "")
    if failure:
        raise failure[0]


def _close(messages: Generator[Any, None, None]) -> None:
    """End the subscription's generator (gRPC stops pulling a finished call's requests
    without closing them): it records its end at the yield it waits at. Tried while it
    runs in gRPC's thread, for up to 10 s."""
    for _ in range(200):
        try:
            messages.close()
            return
        except ValueError:  # executing right now
            time.sleep(0.05)


class _CallError(grpc.RpcError):
    """A finished call's status, for :func:`calling` to turn into its error."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


# -- the consumer ---------------------------------------------------------------------


class PushedStream:
    """A push the consumer's follow waits for, read as it reads a ``Subscribe`` call."""

    def __init__(
        self,
        pushes: StreamPushes,
        agreement_id: str,
        provider: str,
        requests: Iterator[stream_pb2.SubscribeUp],
        channel: grpc.Channel,
    ) -> None:
        self.agreement_id = agreement_id
        self.provider = provider
        self._pushes = pushes
        self._requests = requests
        self._down: queue.Queue[Any] = queue.Queue()
        self.claimed = False
        """Whether the provider's Deliver came (only one may)."""
        self._request = stream_pb2_grpc.StreamServiceStub(channel).RequestStreamPush.future(
            stream_pb2.RequestStreamPushRequest(agreement_id=agreement_id), timeout=None
        )
        self._request.add_done_callback(self._asked)

    def _asked(self, future: Any) -> None:
        """``RequestStreamPush`` ended: with the push's status once it is over, or before
        any push came (refused, the provider unreachable)."""
        self._down.put(future)

    def __iter__(self) -> Iterator[stream_pb2.SubscribeDown]:
        while True:
            item = self._down.get()
            if isinstance(item, stream_pb2.SubscribeDown):
                yield item
            elif item is _PROVIDER_DONE:
                continue  # RequestStreamPush ends next, with the push's status
            else:
                # RequestStreamPush ended (after what the provider sent): its status is
                # the subscription's, raised as a Subscribe call's would be.
                try:
                    item.result()
                except grpc.FutureCancelledError:
                    raise Unavailable("the push was cancelled") from None
                return

    def cancel(self) -> None:
        self._request.cancel()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._pushes._forget(self)
        self._request.cancel()  # type: ignore[no-untyped-call]

    # The connector's Deliver handler, with the provider's messages.
    def deliver(
        self, messages: Iterator[stream_pb2.SubscribeDown]
    ) -> Iterator[stream_pb2.SubscribeUp]:
        answers: queue.Queue[stream_pb2.SubscribeUp | None] = queue.Queue()

        def take() -> None:
            try:
                for down in messages:
                    self._down.put(down)
            except grpc.RpcError:
                pass  # the call broke: RequestStreamPush says how
            finally:
                self._down.put(_PROVIDER_DONE)
                answers.put(None)  # the provider is done: so is this call

        def give() -> None:
            for up in self._requests:
                answers.put(up)
            answers.put(None)  # the consumer's follow ended its side

        threading.Thread(target=take, daemon=True, name="stream-push-in").start()
        threading.Thread(target=give, daemon=True, name="stream-push-out").start()
        while (up := answers.get()) is not None:
            yield up


class StreamPushes:
    """The pushes this consumer's connector waits for, by agreement."""

    def __init__(self) -> None:
        self._waiting: dict[str, PushedStream] = {}
        self._lock = threading.Lock()

    def expect(
        self,
        agreement_id: str,
        provider: str,
        requests: Iterator[stream_pb2.SubscribeUp],
        channel: grpc.Channel,
    ) -> PushedStream:
        """Ask ``provider`` to push the stream of ``agreement_id`` (the follow reads the
        result as a ``Subscribe`` call; ``close`` it when done)."""
        with self._lock:
            pushed = PushedStream(self, agreement_id, provider, requests, channel)
            self._waiting[agreement_id] = pushed
        return pushed

    def _forget(self, pushed: PushedStream) -> None:
        with self._lock:
            if self._waiting.get(pushed.agreement_id) is pushed:
                del self._waiting[pushed.agreement_id]

    def deliver(
        self, caller: Caller, agreement_id: str, messages: Iterator[stream_pb2.SubscribeDown]
    ) -> Iterator[stream_pb2.SubscribeUp]:
        """``Deliver`` from ``caller``: only into a follow here that asked that provider
        for a push of that agreement, and only once."""
        with self._lock:
            pushed = self._waiting.get(agreement_id)
            if pushed is None or pushed.provider != caller.participant or pushed.claimed:
                _log.warning(
                    "stream push from %s under agreement %r refused: none awaited",
                    caller.participant,
                    agreement_id[:80],
                )
                raise NotFound(
                    f"this connector awaits no push of the stream of agreement "
                    f"{agreement_id!r} from {caller.participant}"
                )
            pushed.claimed = True
        yield from pushed.deliver(messages)
