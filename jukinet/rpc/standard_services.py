"""The standard gRPC services every node serves besides its own: health (grpc.health.v1) and server
reflection (grpc.reflection.v1alpha, what `buf curl` and grpcurl use to learn the schema).

They pass the same guard as the node's own methods: the caller's identity from its certificate, revocation
and expiry, an RPC metric, and access-log entries: "every RPC served" includes a load balancer's health checks
and a developer's schema queries (each one a durable write, like any other entry). Any certificate of the
network may call them (operators from the lowest role, viewer), and they keep answering while the node is cut
off (operators need them most then).

- A unary call (Health.Check) is logged once, with the status it is answered with (Health.Check of an unknown
  service: NOT_FOUND), before that answer leaves. Health.List, which grpcio's servicer does not implement,
  is answered UNIMPLEMENTED.
- A stream (Health.Watch, ServerReflectionInfo) is logged OK when it is admitted; it may then stay open for
  days, so the caller's certificate is checked again on every message in either direction and, for a Watch
  that writes only when the status changes, every RECHECK_S: a stream whose certificate was revoked or expired
  meanwhile ends UNAUTHENTICATED, with a second entry saying so.

An undecodable request is refused by jukinet.rpc.decode_guard before the guard (INVALID_ARGUMENT, logged
once), as for every other service.

Health has a status per service (health_follows_switch): SERVING, except that while an operator has cut the
node off, every service with a method the cut-off stops is NOT_SERVING; "" (the node) is SERVING until it
stops."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from jukinet.domain.errors import InvalidField
from jukinet.domain.identity import Role
from jukinet.rpc.authz import STANDARD_METHODS, crosses_links
from jukinet.rpc.decode_guard import LenientServer, Refuse, Undecodable
from jukinet.rpc.guard import Call, Guard, status_of
from jukinet.rpc.switch import LinkSwitch

RECHECK_S = 30.0  # how often a quiet stream's caller certificate is checked again
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
STANDARD_POLICY: dict[str, frozenset[Role]] = dict.fromkeys(STANDARD_METHODS, frozenset(Role))


def guarded(guard: Guard) -> Callable[[Any, str], Any]:
    """A LenientServer `wrap` hook: the method handler of a standard service, behind `guard`."""

    def wrap(handler: Any, method: str) -> Any:
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(guard, method, handler.unary_unary), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _stream(guard, method, handler.unary_stream, streaming_requests=False), deserialize, serialize
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _stream(guard, method, handler.stream_stream, streaming_requests=True), deserialize, serialize
            )
        raise TypeError(f"{method}: no standard service has a client-streaming method to guard")

    return wrap


def _unary(guard: Guard, method: str, inner: Any) -> Any:
    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with guard.call(context, method) as call:
            response = await inner(request, _GuardedContext(context, guard, call, log_abort=True))
            status = status_of(context.code()) or grpc.StatusCode.OK  # a status set with set_code, else OK
            await guard.log_served(call, outcome=status.name)
            return response

    return unary_unary


def _stream(guard: Guard, method: str, inner: Any, *, streaming_requests: bool) -> Any:
    """Response-streaming handlers in either style grpc.aio accepts: an async generator, or a coroutine that
    writes with context.write (grpcio's health Watch). The wrapper has the inner one's style."""

    def arguments(first: Any, context: grpc.aio.ServicerContext[Any, Any], call: Call) -> tuple[Any, Any]:
        requests = _rechecked(first, call) if streaming_requests else first
        return requests, _GuardedContext(context, guard, call, log_abort=False)

    if inspect.iscoroutinefunction(inner):  # as grpc.aio tells them apart

        async def written(first: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            async with guard.call(context, method) as call:
                await guard.log_served(call)
                await _rechecking(inner(*arguments(first, context, call)), call)

        return written

    async def generated(first: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async with guard.call(context, method) as call:
            await guard.log_served(call)
            async for response in inner(*arguments(first, context, call)):
                call.check_open()
                yield response

    return generated


async def _rechecking(work: Coroutine[Any, Any, None], call: Call) -> None:
    """Runs a stream handler that may go quiet for days (Watch writes only when the status changes), checking
    the caller's certificate every RECHECK_S meanwhile: once it is revoked or expired the handler is stopped
    and the check's error ends the call."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=RECHECK_S)
            if done:
                task.result()  # the handler's own outcome
                return
            call.check_open()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _rechecked(requests: AsyncIterator[Any], call: Call) -> AsyncIterator[Any]:
    async for request in requests:
        call.check_open()
        yield request


class _GuardedContext:
    """The servicer context a standard servicer sees. `write` checks the caller's certificate again first; for
    unary calls, `abort` writes the call's access-log entry with its status before the status leaves."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], guard: Guard, call: Call, *, log_abort: bool):
        self._context = context
        self._guard = guard
        self._call = call
        self._log_abort = log_abort

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        if self._log_abort:
            await self._guard.log_served(self._call, outcome=code.name)
        await self._context.abort(code, details, trailing_metadata)
        raise AssertionError("unreachable: ServicerContext.abort raises")

    async def write(self, message: Any) -> None:
        self._call.check_open()
        await self._context.write(message)

    async def read(self) -> Any:
        message = await self._context.read()
        self._call.check_open()
        if isinstance(message, Undecodable):
            raise InvalidField("request", message.message)
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def add_standard_services(server: grpc.aio.Server, guard: Guard, refuse: Refuse, service_names: Sequence[str]) -> Any:
    """Adds health and reflection (listing `service_names`, health and reflection) behind `guard`, whose
    policy must be STANDARD_POLICY. Returns the health servicer, for the node to set its status."""
    registrar: Any = LenientServer(server, refuse, wrap=guarded(guard))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # not in the stubs
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    names = [*service_names, HEALTH_SERVICE, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]  # not in the stubs
        registrar,
    )
    return health_servicer


def link_services(service_names: Sequence[str], policy: dict[str, frozenset[Role]]) -> list[str]:
    """The services whose calls cross the node's links (the cut-off stops them), per the node's policy."""
    return [
        name
        for name in service_names
        if any(crosses_links(method, policy) for method in policy if method.startswith(f"/{name}/"))
    ]


async def set_service_health(
    health_servicer: Any, switch: LinkSwitch, service_names: Sequence[str], links: Sequence[str]
) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    for name in service_names:
        await health_servicer.set(name, not_serving if switch.cut_off and name in links else serving)


async def health_follows_switch(
    health_servicer: Any, switch: LinkSwitch, service_names: Sequence[str], links: Sequence[str], stop: asyncio.Event
) -> None:
    """Keeps each service's health status: SERVING, except the services in `links` while an operator has cut
    the node off (NOT_SERVING: a load balancer or a peer's probe stops sending them calls that would only be
    refused). The node as a whole ("") stays SERVING until it stops. The statuses at start are set_service_health's,
    before the server takes its first call; this follows each cut-off and resume after that."""
    while True:
        changed = asyncio.ensure_future(switch.changed())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (changed, stopped):
                waiter.cancel()
        if stop.is_set():
            return
        await set_service_health(health_servicer, switch, service_names, links)
