"""Checks every request passes before its handler runs: it parsed, and no text holds NUL.

grpcio parses a request before any interceptor sees the call, and answers one it cannot
parse with INTERNAL ("Exception deserializing request!", traceback in the log) before
authentication. Here each method's parser is wrapped so that a request that does not parse
reaches the handler chain as an ``Unparsed`` marker instead; the authentication interceptor
runs first (so an anonymous caller learns only that it is unauthenticated), then this check
refuses the marker with ``InvalidRequest``.

A NUL character is valid in a protobuf string but not in PostgreSQL text, in a file name or
in a log line: no tds field carries one, so every string of every request (nested, repeated
and map entries included) is checked once here, and the field is named in the refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from connector.errors import InvalidRequest

__all__ = ["RequestCheckInterceptor", "Unparsed", "check_request", "refuse_nul"]


class Unparsed:
    """Stands in for a request whose bytes did not parse as the method's message."""

    __slots__ = ("reason", "type_name")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason


def _parsing(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns ``Unparsed`` instead of raising."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "the method's request message")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # any parser failure is the caller's malformed input
            return Unparsed(type_name, exc.__class__.__name__)

    return parse


def refuse_nul(value: str, what: str) -> None:
    """Raise ``InvalidRequest`` naming ``what`` when ``value`` contains a NUL character."""
    if "\x00" in value:
        raise InvalidRequest(f"{what} contains a NUL character (0x00): remove it and retry")


def _check_message(message: Message, path: str) -> None:
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str):
                    refuse_nul(key, f"a key of {name}")
                where = f"{name}[{key!r}]"
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    _check_message(item, where)
                elif isinstance(item, str):
                    refuse_nul(item, where)
            continue
        items = value if field.is_repeated else [value]
        for i, item in enumerate(items):
            where = f"{name}[{i}]" if field.is_repeated else name
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _check_message(item, where)
            elif field.type == FieldDescriptor.TYPE_STRING:
                refuse_nul(item, where)


def check_request(request: Any) -> None:
    """Refuse (``InvalidRequest``) a request that did not parse or has NUL in any string."""
    if isinstance(request, Unparsed):
        raise InvalidRequest(
            f"the request is not a valid {request.type_name} message ({request.reason}): "
            "send the message the method's .proto declares"
        )
    if isinstance(request, Message):
        _check_message(request, "")


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        check_request(request)
        yield request


class RequestCheckInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Parses leniently and checks each request, inside the authentication interceptor.

    Register it after ``AuthInterceptor`` (interceptors run in order, the first outermost):
    the refusal is then raised inside the authenticated call and mapped to
    INVALID_ARGUMENT there, after the caller is known.
    """

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """The handler, with a lenient parser and a check before the method runs."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        parse = _parsing(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary or handler.unary_stream:
            inner = handler.unary_unary or handler.unary_stream

            def one(request: Any, context: grpc.ServicerContext) -> Any:
                check_request(request)
                return inner(request, context)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.unary_stream_rpc_method_handler
            )
            return factory(one, parse, serialize)

        inner_stream = handler.stream_unary or handler.stream_stream

        def many(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return inner_stream(_checked_stream(requests), context)

        factory = (
            grpc.stream_unary_rpc_method_handler
            if handler.stream_unary
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(many, parse, serialize)
