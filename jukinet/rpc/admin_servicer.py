"""AdminService, served by every node to its operators."""

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import structlog
from sqlalchemy import Connection

from jukinet.domain.errors import InvalidField, NotOnThisNode
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.validate import local_gov_code, page_token, text
from jukinet.observability.metrics import NodeMetrics
from jukinet.rpc import authz
from jukinet.rpc.convert import timestamp
from jukinet.rpc.guard import Guard
from jukinet.rpc.switch import LinkSwitch, store_reason
from jukinet.services.ports import AccessEntry
from jukinet.services.relay import CallInfo
from jukinet.storage import SqlTx, Store, code_checks, queries
from jukinet.wire.v1 import admin_pb2, admin_pb2_grpc

log = structlog.get_logger(__name__)
MAX_PAGE = 1000
DEFAULT_PAGE = 50


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        node: NodeId,
        store: Store,
        guard: Guard,
        forwarded: Callable[[], Mapping[str, int]] = dict,
        switch: LinkSwitch | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._switch = switch or LinkSwitch(node.uri)
        self._metrics = metrics
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
            await self._guard.log_served(call)
            return admin_pb2.GetStatusResponse(
                node=self._node.uri,
                event_count=counts.events,
                active_count=counts.active,
                outbox_depth=depth,
                origins=origins,
                free_codes=counts.free_codes,
                access_log_count=counts.access_log,
                cut_off=self._switch.cut_off,
            )
        raise AssertionError("unreachable")

    async def GetDigest(
        self, request: admin_pb2.GetDigestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.GetDigestResponse:
        async with self._guard.call(context, authz.GET_DIGEST) as call:
            authz.check_operator_of(call.caller, self._node)
            municipality = local_gov_code("municipality_code", request.municipality_code)
            d = await self._store.read(lambda c: queries.digest(c, municipality))
            await self._guard.log_served(call, purpose=f"digest of {municipality}")
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
            limit = _page_limit(request.page_size)
            before = page_token("page_token", request.page_token)
            if request.resident_code and not (
                len(request.resident_code) == 11 and request.resident_code.isascii() and request.resident_code.isdigit()
            ):
                raise InvalidField("resident_code", "must be 11 digits")
            caller = text("caller", request.caller, max_chars=200, required=False)
            page = await self._store.read(
                lambda c: queries.access_page(
                    c,
                    before_id=before,
                    limit=limit + 1,
                    resident_code=request.resident_code,
                    peer=caller,
                )
            )
            more = len(page) > limit
            page = page[:limit]
            await self._guard.log_served(call, subjects=[request.resident_code] if request.resident_code else [])
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

    async def ListCodeAnomalies(
        self, request: admin_pb2.ListCodeAnomaliesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ListCodeAnomaliesResponse:
        async with self._guard.call(context, authz.LIST_CODE_ANOMALIES) as call:
            self._check_reconciles(call.caller)
            limit = _page_limit(request.page_size)
            if request.kind and request.kind not in code_checks.KINDS:
                raise InvalidField("kind", f"{request.kind[:40]!r} is not a kind; use {' or '.join(code_checks.KINDS)}")
            before = page_token("page_token", request.page_token)

            def read(c: Connection) -> tuple[list[code_checks.CodeAnomaly], int]:
                page = code_checks.anomaly_page(
                    c, before_id=before, limit=limit + 1, kind=request.kind, include_resolved=request.include_resolved
                )
                return page, code_checks.unchecked(c)

            page, unchecked = await self._store.read(read)
            more = len(page) > limit
            page = page[:limit]
            await self._guard.log_served(call, subjects=[code for a in page for code in a.codes])
            return admin_pb2.ListCodeAnomaliesResponse(
                anomalies=[_anomaly_pb(a) for a in page],
                next_page_token=str(page[-1].id) if more and page else "",
                unchecked_events=unchecked,
            )
        raise AssertionError("unreachable")

    async def ResolveCodeAnomaly(
        self, request: admin_pb2.ResolveCodeAnomalyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ResolveCodeAnomalyResponse:
        async with self._guard.call(context, authz.RESOLVE_CODE_ANOMALY) as call:
            self._check_reconciles(call.caller)
            if request.id <= 0:
                raise InvalidField("id", "must be the id of a listed anomaly (a positive number)")
            resolution = text("resolution", request.resolution, max_chars=300)
            now = dt.datetime.now(dt.UTC)

            def persist(conn: Connection) -> code_checks.CodeAnomaly:
                anomaly = code_checks.resolve_anomaly(
                    conn, request.id, by=call.caller.uri, resolution=resolution, now=now
                )
                entry = AccessEntry(
                    at=now,
                    request_id=call.info.request_id,
                    peer=call.info.peer,
                    method=call.info.method,
                    outcome="OK",
                    subjects=anomaly.codes,
                )
                SqlTx(conn).append_access([entry])
                return anomaly

            anomaly = await self._store.write(persist)
            log.warning("code_anomaly_resolved", id=anomaly.id, kind=anomaly.kind, by=call.caller.uri)
            if self._metrics is not None:
                self._metrics.code_anomalies.labels(anomaly.kind).dec()
            return admin_pb2.ResolveCodeAnomalyResponse(anomaly=_anomaly_pb(anomaly))
        raise AssertionError("unreachable")

    def _check_reconciles(self, caller: NodeId) -> None:
        authz.check_operator_of(caller, self._node)
        if self._node.role is not Role.CENTER:
            raise NotOnThisNode(
                f"{self._node.uri} does not reconcile 住民票コード: only the center knows which codes it issued; "
                "ask the center"
            )

    async def CutOff(
        self, request: admin_pb2.CutOffRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CutOffResponse:
        async with self._guard.call(context, authz.CUT_OFF) as call:
            authz.check_operator_of(call.caller, self._node)
            reason = text("reason", request.reason, max_chars=120, required=False) or "emergency"
            await self._set(call.info, f"{reason} (by {call.caller.uri})")
            return admin_pb2.CutOffResponse(cut_off=True)
        raise AssertionError("unreachable")

    async def Resume(
        self, request: admin_pb2.ResumeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.ResumeResponse:
        async with self._guard.call(context, authz.RESUME) as call:
            authz.check_operator_of(call.caller, self._node)
            await self._set(call.info, None)
            return admin_pb2.ResumeResponse(cut_off=False)
        raise AssertionError("unreachable")

    async def _set(self, info: CallInfo, reason: str | None) -> None:
        """Persist the state and its access-log entry in one transaction, then flip the switch."""
        now = dt.datetime.now(dt.UTC)
        entry = AccessEntry(at=now, request_id=info.request_id, peer=info.peer, method=info.method, outcome="OK")

        def persist(conn: Connection) -> None:
            store_reason(conn, reason, now)
            SqlTx(conn).append_access([entry])

        await self._store.write(persist)
        self._switch.set(reason)
        if self._metrics is not None:
            self._metrics.cut_off.set(1 if reason is not None else 0)
        log.warning("node_cut_off" if reason is not None else "node_resumed", reason=reason, by=info.peer)


def _page_limit(page_size: int) -> int:
    """A page size as asked (0: the default), at most MAX_PAGE."""
    if page_size < 0:
        raise InvalidField("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE, MAX_PAGE)


def _anomaly_pb(a: code_checks.CodeAnomaly) -> admin_pb2.CodeAnomaly:
    return admin_pb2.CodeAnomaly(
        id=a.id,
        detected_time=timestamp(a.detected_at) if a.detected_at else None,
        resident_code=a.resident_code,
        kind=a.kind,
        municipality_code=a.municipality,
        origin=a.origin,
        seq=a.seq,
        detail=a.detail,
        resolved_time=timestamp(a.resolved_at) if a.resolved_at else None,
        resolved_by=a.resolved_by,
        resolution=a.resolution,
        replaced_by=a.replaced_by,
    )
