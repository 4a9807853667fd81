"""AdminService, served by every node to its operators."""

from collections.abc import Callable, Mapping
from typing import Any

import grpc

from jukinet.domain.errors import InvalidField
from jukinet.domain.identity import NodeId
from jukinet.domain.validate import local_gov_code
from jukinet.rpc import authz
from jukinet.rpc.convert import timestamp
from jukinet.rpc.guard import Guard
from jukinet.storage import Store, queries
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc

MAX_PAGE = 1000
DEFAULT_PAGE = 50


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        node: NodeId,
        store: Store,
        guard: Guard,
        forwarded: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._node = node
        self._store = store
        self._guard = guard
        self._forwarded = forwarded

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetStatusResponse:
        async with self._guard.call(context, authz.GET_STATUS) as call:
            authz.check_operator_of(call.caller, self._node)
            counts, heads = await self._store.read(lambda c: (queries.counts(c), queries.head_seqs(c)))
            forwarded = self._forwarded()
            origins = [
                admin_pb2.OriginStatus(origin=o, head_seq=h, forwarded_seq=forwarded.get(o, 0))
                for o, h in sorted(heads.items())
            ]
            depth = sum(max(0, h - forwarded.get(o, 0)) for o, h in heads.items()) if forwarded else 0
            return admin_pb2.GetStatusResponse(
                node=self._node.uri,
                event_count=counts.events,
                active_count=counts.active,
                outbox_depth=depth,
                origins=origins,
                free_codes=counts.free_codes,
                access_log_count=counts.access_log,
            )
        raise AssertionError("unreachable")

    async def GetDigest(
        self, request: admin_pb2.GetDigestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetDigestResponse:
        async with self._guard.call(context, authz.GET_DIGEST) as call:
            authz.check_operator_of(call.caller, self._node)
            municipality = local_gov_code("municipality_code", request.municipality_code)
            d = await self._store.read(lambda c: queries.digest(c, municipality))
            return admin_pb2.GetDigestResponse(
                municipality_code=municipality,
                registration_count=d.count,
                active_count=d.active,
                digest=d.sha256,
                head_seq=d.head_seq,
            )
        raise AssertionError("unreachable")

    async def ListAccessLog(
        self, request: admin_pb2.ListAccessLogRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListAccessLogResponse:
        async with self._guard.call(context, authz.LIST_ACCESS_LOG) as call:
            authz.check_operator_of(call.caller, self._node)
            if request.page_size < 0:
                raise InvalidField("page_size", "must not be negative")
            limit = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
            before: int | None = None
            if request.page_token:
                if not request.page_token.isdigit() or len(request.page_token) > 19:
                    raise InvalidField("page_token", "is not a token this node issued")
                before = int(request.page_token)
            if request.resident_code and not (len(request.resident_code) == 11 and request.resident_code.isdigit()):
                raise InvalidField("resident_code", "must be 11 digits")
            page = await self._store.read(
                lambda c: queries.access_page(
                    c,
                    before_id=before,
                    limit=limit + 1,
                    resident_code=request.resident_code,
                    peer=request.caller[:200],
                )
            )
            more = len(page) > limit
            page = page[:limit]
            return admin_pb2.ListAccessLogResponse(
                entries=[
                    admin_pb2.AccessLogEntry(
                        id=entry_id,
                        time=timestamp(e.at),
                        request_id=e.request_id,
                        peer=e.peer,
                        method=e.method,
                        purpose=e.purpose,
                        subjects=list(e.subjects),
                        outcome=e.outcome,
                        direction=e.direction,
                    )
                    for entry_id, e in page
                ],
                next_page_token=str(page[-1][0]) if more and page else "",
            )
        raise AssertionError("unreachable")
