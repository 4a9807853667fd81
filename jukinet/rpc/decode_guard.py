"""Undecodable requests (invalid UTF-8 in a string field, truncated bytes) become INVALID_ARGUMENT.

grpcio parses requests before any handler runs and answers a parse failure with UNKNOWN (unary) or
INTERNAL (streams). This module parses leniently instead and lets the handler's edge refuse the
message with a status a caller can act on, access-logged like any refusal: streams through the call
guard, unary calls through the `refuse` hook LenientServer is given (the node's Guard.refuse_undecodable).

The wrapping happens once, when a servicer is registered (LenientServer), not per call: a grpc.aio server
interceptor runs a coroutine chain on every call, which cost about a tenth of a unary lookup's CPU."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from jukinet.domain.errors import InvalidField


class Undecodable:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @property
    def message(self) -> str:
        return f"is not a valid protobuf message ({self.error}); check the sender's encoding (strings must be UTF-8)"


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as error:
            return Undecodable(error)

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            raise InvalidField("request", request.message)
        yield request


# Answers (aborts) an undecodable unary request: context, full method name, what is wrong with it.
Refuse = Callable[["grpc.aio.ServicerContext[Any, Any]", str, str], Awaitable[None]]
# Wraps a method handler once more when it is registered: the handler, its full method name.
Wrap = Callable[[Any, str], Any]


def lenient(handler: Any, method: str, refuse: Refuse) -> Any:
    """The same method handler, with a lenient request parser and a handler that refuses what it could not parse."""
    if handler is None or handler.request_deserializer is None:
        return handler
    parse = _lenient(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, Undecodable):
                await refuse(context, method, request.message)  # aborts
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
    # Response streams come in two styles grpc.aio tells apart by the handler's type (coroutine function first,
    # as grpc.aio checks): a coroutine that writes with context.write (grpcio's health Watch), or anything
    # returning an async iterator. Each wrapper keeps its inner one's style.
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream
        if inspect.iscoroutinefunction(inner_us):

            async def unary_written(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                if isinstance(request, Undecodable):
                    await refuse(context, method, request.message)  # aborts
                await inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_written, parse, serialize)

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await refuse(context, method, request.message)  # aborts
            async for response in inner_us(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream
        if inspect.iscoroutinefunction(inner_ss):

            async def stream_written(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> None:
                await inner_ss(_checked(requests), context)

            return grpc.stream_stream_rpc_method_handler(stream_written, parse, serialize)

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for response in inner_ss(_checked(requests), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, parse, serialize)
    inner_su = handler.stream_unary

    async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await inner_su(_checked(requests), context)

    return grpc.stream_unary_rpc_method_handler(stream_unary, parse, serialize)


class _LenientGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose method handlers are wrapped once per method and reused."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], refuse: Refuse, wrap: Wrap | None = None) -> None:
        self._inner = inner
        self._refuse = refuse
        self._wrap = wrap
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = _wrapped(self._inner.service(handler_call_details), method, self._refuse, self._wrap)
            if wrapped is not None and len(self._wrapped) < 1024:
                self._wrapped[method] = wrapped
        return wrapped


class _MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Every wrapped method handler by full method name: one dict lookup finds any of them."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return self.handlers.get(handler_call_details.method)


class LenientServer:
    """Stands in for a grpc.aio.Server when servicers are added (`add_*Servicer_to_server(servicer,
    LenientServer(server, refuse))`): every method handler they register parses leniently, and `refuse`
    answers an undecodable unary request.

    The methods the generated code offers for registration are served through one method table (a generic
    handler, consulted first) instead of as grpcio's registered methods: the aio server keeps one pending
    request per registered method and runs asyncio.wait over all of them for every call it accepts, which
    at the center (about twenty methods) cost every agency lookup tens of µs of event-loop time. Generic
    handlers added directly still work, after the table."""

    def __init__(self, server: grpc.aio.Server, refuse: Refuse, *, wrap: Wrap | None = None) -> None:
        """`wrap(handler, method)`, if given, wraps every method handler (inside the lenient parser)."""
        self._server = server
        self._refuse = refuse
        self._wrap = wrap
        self._table = _MethodTable()
        server.add_generic_rpc_handlers((self._table,))

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_LenientGeneric(h, self._refuse, self._wrap) for h in handlers))

    def add_registered_method_handlers(self, service_name: str, handlers: Mapping[str, Any]) -> None:
        for name, handler in handlers.items():
            method = f"/{service_name}/{name}"
            self._table.handlers[method] = _wrapped(handler, method, self._refuse, self._wrap)


def _wrapped(handler: Any, method: str, refuse: Refuse, wrap: Wrap | None) -> Any:
    """`wrap` inside, the lenient parser outside: an undecodable request is refused (and logged) once, before
    whatever `wrap` adds."""
    inner = handler if wrap is None or handler is None else wrap(handler, method)
    return lenient(inner, method, refuse)
