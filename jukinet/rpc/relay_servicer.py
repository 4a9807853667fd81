"""RelayService, served by prefectures (to municipalities) and the center (to prefectures)."""

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import grpc
from sqlalchemy import Connection

from jukinet.domain.errors import InvalidField
from jukinet.domain.identity import NodeId
from jukinet.domain.model import EventRow
from jukinet.domain.validate import local_gov_code, today_jst
from jukinet.observability.metrics import NodeMetrics
from jukinet.rpc import authz
from jukinet.rpc.convert import relayed_events_from_pb
from jukinet.rpc.guard import Call, Guard
from jukinet.rpc.pipeline import StreamWrites, writes_in_order
from jukinet.services.ports import RelayTx
from jukinet.services.relay import BatchOutcome, CallInfo, apply_batch
from jukinet.storage import SqlTx, Store
from jukinet.wire.v1 import relay_pb2, relay_pb2_grpc, types_pb2

MAX_BATCH = 10_000  # events per relay message: the wire limit (relay.proto)


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    def __init__(
        self,
        node: NodeId,
        store: Store,
        guard: Guard,
        metrics: NodeMetrics,
        on_applied: Callable[[str, int, Sequence[types_pb2.ChangeEvent]], None] | None = None,
        tx: Callable[[Connection], RelayTx] = SqlTx,
    ) -> None:
        self._node = node
        self._tx = tx
        self._new_events = asyncio.Event()
        self._store = store
        self._guard = guard
        self._metrics = metrics
        self._on_applied = on_applied

    async def PushEvents(
        self,
        request_iterator: AsyncIterator[relay_pb2.PushEventsRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[relay_pb2.PushEventsResponse]:
        async with self._guard.call(context, authz.PUSH_EVENTS) as call:
            async for answer in writes_in_order(request_iterator, partial(self._start_batch, call)):
                yield answer

    def _start_batch(
        self, call: Call, request: relay_pb2.PushEventsRequest, writes: StreamWrites
    ) -> Awaitable[relay_pb2.PushEventsResponse]:
        """Validates one batch and queues its write (in arrival order: the writer's queue keeps it); the
        stream reads the next batch meanwhile, so batches that arrive together commit together. Two streams
        of one origin are safe too: each batch checks the cursor inside the writer's transaction."""
        call.check_open()
        origin = local_gov_code("origin", request.origin)
        authz.check_origin(call.caller, origin, self._node)
        if len(request.events) > MAX_BATCH:
            raise InvalidField("events", f"{len(request.events)} events in one batch; the limit is {MAX_BATCH}")
        # Fields this node does not know never travel on with the events it forwards.
        request.DiscardUnknownFields()
        events, forward = relayed_events_from_pb(origin, request.events, today=today_jst())
        self._metrics.changes_received.inc(len(events))
        now = dt.datetime.now(dt.UTC)
        committed = self._store.submit(
            writes.job(partial(self._apply, origin, events, call.info, now)),
            after_commit=partial(self._committed, origin, forward),
        )
        return _acknowledgement(origin, committed)

    def new_events(self) -> asyncio.Event:
        """Set (and replaced) whenever a batch adds events: change-feed streams wait on it."""
        return self._new_events

    def _apply(
        self, origin: str, events: list[EventRow], call: CallInfo, now: dt.datetime, conn: Connection
    ) -> BatchOutcome:
        return apply_batch(self._tx(conn), origin, events, call, now)

    def _committed(self, origin: str, forward: list[types_pb2.ChangeEvent], outcome: BatchOutcome) -> None:
        """Runs after the commit even if the sender went away meanwhile, so the next hop always hears of it."""
        self._metrics.changes_applied.inc(outcome.applied)
        self._metrics.changes_duplicate.inc(outcome.duplicates)
        if outcome.applied:
            if self._on_applied is not None:  # a next hop exists (prefecture): hand it the validated events
                self._on_applied(origin, outcome.acked_seq, forward[len(forward) - outcome.applied :])
            self._new_events.set()
            self._new_events = asyncio.Event()

    async def GetCursors(
        self, request: relay_pb2.GetCursorsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.GetCursorsResponse:
        async with self._guard.call(context, authz.GET_CURSORS) as call:
            if len(request.origins) > 1000:
                raise InvalidField("origins", "at most 1000 origins per request")
            origins = [local_gov_code("origins", o) for o in request.origins]
            for origin in origins:
                authz.check_origin(call.caller, origin, self._node)
            heads = await self._store.read(lambda conn: {o: SqlTx(conn).head_seq(o) for o in origins})
            await self._guard.log_served(call)
            return relay_pb2.GetCursorsResponse(
                cursors=[relay_pb2.OriginCursor(origin=o, acked_seq=heads[o]) for o in origins]
            )
        raise AssertionError("unreachable: the guard aborts on every error")


async def _acknowledgement(origin: str, committed: Awaitable[BatchOutcome]) -> relay_pb2.PushEventsResponse:
    return relay_pb2.PushEventsResponse(origin=origin, acked_seq=(await committed).acked_seq)
