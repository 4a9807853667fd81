"""CodePoolService at a prefecture: relays a municipality's pool request to the center."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import grpc

from jukinet.domain.errors import UpstreamRefusedArgument, UpstreamRefusedPermission, UpstreamUnavailable
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.validate import local_gov_code, request_id
from jukinet.pki import channel_options
from jukinet.rpc import authz
from jukinet.rpc.error_details import reason_of
from jukinet.rpc.guard import REQUEST_ID_KEY, Guard
from jukinet.services.ports import AccessEntry
from jukinet.storage import SqlTx, Store
from jukinet.wire.v1 import codepool_pb2, codepool_pb2_grpc


class CodePoolRelayServicer(codepool_pb2_grpc.CodePoolServiceServicer):
    def __init__(
        self,
        node: NodeId,
        store: Store,
        guard: Guard,
        center: str,
        credentials: Callable[[], grpc.ChannelCredentials],
    ) -> None:
        self._node = node
        self._center_address = center
        self._credentials = credentials
        self._store = store
        self._guard = guard

    async def AllocateCodes(
        self, request: codepool_pb2.AllocateCodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> codepool_pb2.AllocateCodesResponse:
        async with self._guard.call(context, authz.ALLOCATE_CODES) as call:
            request_id("request_id", request.request_id)
            municipality = local_gov_code("municipality_code", request.municipality_code)
            authz.check_origin(call.caller, municipality, self._node)
            try:
                # A channel per request: pools are requested rarely, and renewed certificates are picked up.
                async with grpc.aio.secure_channel(
                    self._center_address, self._credentials(), options=channel_options(NodeId(Role.CENTER))
                ) as channel:
                    reply: codepool_pb2.AllocateCodesResponse = await codepool_pb2_grpc.CodePoolServiceStub(
                        channel
                    ).AllocateCodes(request, metadata=((REQUEST_ID_KEY, request.request_id),), timeout=20.0)
            except grpc.aio.AioRpcError as error:
                # The guard answers (and access-logs) the center's refusal as this node's own.
                reason = reason_of(error.trailing_metadata()) or error.code().name
                message = f"the center refused it ({reason}): {error.details()}"
                if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    raise UpstreamRefusedArgument(message) from None
                if error.code() is grpc.StatusCode.PERMISSION_DENIED:
                    raise UpstreamRefusedPermission(message) from None
                raise UpstreamUnavailable(f"the center did not answer ({error.code().name}); retry later") from None
            now = dt.datetime.now(dt.UTC)
            entries = [
                AccessEntry(
                    at=now,
                    request_id=request.request_id,
                    peer=call.info.peer,
                    method=authz.ALLOCATE_CODES,
                    outcome="OK",
                ),
                AccessEntry(
                    at=now,
                    request_id=request.request_id,
                    peer="jukinet://center",
                    method=authz.ALLOCATE_CODES,
                    outcome="OK",
                    direction="made",
                ),
            ]
            await self._store.write(lambda conn: SqlTx(conn).append_access(entries))
            return reply
        raise AssertionError("unreachable")
