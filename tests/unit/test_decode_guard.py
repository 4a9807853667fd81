"""LenientServer serves every generated service through one method table, never as grpcio's registered
methods: the aio server runs asyncio.wait over one pending request per registered method for every call it
accepts (tens of µs per call with the center's twenty-odd methods)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import grpc

from jukinet.rpc.decode_guard import LenientServer, Undecodable
from jukinet.wire.v1 import provision_pb2, provision_pb2_grpc


class RecordingServer:
    """Records what a LenientServer hands to the real server."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: Mapping[str, Any]) -> None:
        self.registered.append(service_name)


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _refuse(context: Any, method: str, problem: str) -> None:
    raise AssertionError("not called here")


def _resolve(server: RecordingServer, method: str) -> Any:
    for generic in server.generic:
        handler = generic.service(Details(method))
        if handler is not None:
            return handler
    return None


def test_generated_services_land_in_one_table_and_no_method_is_registered() -> None:
    server = RecordingServer()
    lenient = LenientServer(cast(grpc.aio.Server, server), _refuse)
    provision_pb2_grpc.add_ProvisionServiceServicer_to_server(
        provision_pb2_grpc.ProvisionServiceServicer(),  # type: ignore[abstract]  # only its methods are looked up
        cast(grpc.aio.Server, lenient),
    )
    assert server.registered == []
    table = server.generic[0]  # consulted first, ahead of the generated generic handler
    lookup = table.service(Details("/jukinet.wire.v1.ProvisionService/LookupResident"))
    assert lookup is not None
    assert lookup.unary_unary is not None
    parse = lookup.request_deserializer
    assert parse is not None
    # The table's handler parses leniently: bytes that are not a message become Undecodable, not an error.
    assert isinstance(parse(b"\x0a\x02\xff\xfe"), Undecodable)
    parsed = parse(provision_pb2.LookupResidentRequest(purpose="p").SerializeToString())
    assert parsed.purpose == "p"
    assert _resolve(server, "/jukinet.wire.v1.ProvisionService/FollowChanges").unary_stream is not None
    assert _resolve(server, "/jukinet.wire.v1.ProvisionService/NoSuchMethod") is None


def test_a_generic_handler_added_directly_still_serves_its_methods() -> None:
    server = RecordingServer()
    lenient = LenientServer(cast(grpc.aio.Server, server), _refuse)

    async def echo(request: Any, context: Any) -> Any:
        return request

    handler = grpc.unary_unary_rpc_method_handler(
        echo,
        request_deserializer=provision_pb2.LookupResidentRequest.FromString,
        response_serializer=provision_pb2.LookupResidentRequest.SerializeToString,
    )
    lenient.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("x.Echo", {"Echo": handler})])
    found = _resolve(server, "/x.Echo/Echo")
    assert found is not None
    assert isinstance(found.request_deserializer(b"\x0a\x02\xff\xfe"), Undecodable)
