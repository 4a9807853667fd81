"""The standard gRPC services every node serves besides its own: health (grpc.health.v1) and server
reflection (grpc.reflection.v1alpha, what `buf curl` and grpcurl use to learn the schema).

They pass the same guard as the node's own methods: the caller's identity from its certificate, revocation
and expiry on every call, an RPC metric, and one access-log entry per call: "every RPC served" includes a
load balancer's health checks and a developer's schema queries. Every role may call them, and they keep
answering while the node is cut off (operators need them most then).

A unary call (Health.Check, Health.List) is logged after the servicer answered and before the answer leaves,
with the status it answered (Health.Check of an unknown service: NOT_FOUND). A stream (Health.Watch,
ServerReflectionInfo) is logged once, OK, when it is admitted; it may then stay open for days."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from jukinet.domain.identity import Role
from jukinet.rpc.decode_guard import LenientServer, Refuse
from jukinet.rpc.guard import Call, Guard

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


def _every_method(service: ServiceDescriptor) -> dict[str, frozenset[Role]]:
    return {f"/{service.full_name}/{m.name}": frozenset(Role) for m in service.methods}


STANDARD_POLICY: dict[str, frozenset[Role]] = {**_every_method(HEALTH), **_every_method(REFLECTION)}


def guarded(guard: Guard) -> Callable[[Any, str], Any]:
    """A LenientServer `wrap` hook: the method handler of a standard service, behind `guard`."""

    def wrap(handler: Any, method: str) -> Any:
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with guard.call(context, method) as call:
                    response = await inner_uu(request, _LoggedAbort(context, guard, call))
                    await guard.log_served(call, outcome=_status_name(context.code(), "OK"))  # set_code, else OK
                    return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                async with guard.call(context, method) as call:
                    await guard.log_served(call)
                    async for response in inner_us(request, context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async with guard.call(context, method) as call:
                    await guard.log_served(call)
                    async for response in inner_ss(requests, context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(stream_stream, deserialize, serialize)
        raise TypeError(f"{method}: no standard service has a client-streaming method to guard")

    return wrap


class _LoggedAbort:
    """The servicer context handed to a standard servicer's unary method: `abort` writes the call's access-log
    entry with its status first (the status leaves as soon as the real abort is called)."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], guard: Guard, call: Call) -> None:
        self._context = context
        self._guard = guard
        self._call = call

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        await self._guard.log_served(self._call, outcome=code.name)
        await self._context.abort(code, details, trailing_metadata)
        raise AssertionError("unreachable: ServicerContext.abort raises")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _status_name(code: object, otherwise: str) -> str:
    """The name of the status a handler set (grpcio hands back a StatusCode or its number), else `otherwise`."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return otherwise


def add_standard_services(server: grpc.aio.Server, guard: Guard, refuse: Refuse, service_names: Sequence[str]) -> Any:
    """Adds health and reflection (listing `service_names`, health and reflection) behind `guard`, whose
    policy must be STANDARD_POLICY. Returns the health servicer, for the node to set its status."""
    registrar: Any = LenientServer(server, refuse, wrap=guarded(guard))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # not in the stubs
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    names = [*service_names, HEALTH.full_name, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]  # not in the stubs
        registrar,
    )
    return health_servicer
