"""RegisterService: the municipal register system pushes resident changes here."""

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import grpc
from sqlalchemy import Connection

from jukinet.domain.errors import CodePoolExhausted, InvalidField
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.model import EventRow, RegisterChange
from jukinet.observability.metrics import NodeMetrics
from jukinet.rpc import authz
from jukinet.rpc.convert import add_outcomes, outcome_to_pb, register_change_from_pb, register_change_or_refusal
from jukinet.rpc.guard import AlreadyLogged, Call, Guard
from jukinet.rpc.pipeline import StreamWrites, writes_in_order
from jukinet.services.intake import Accepted, IntakeResult, Outcome, Refused, record_changes
from jukinet.services.relay import CallInfo
from jukinet.storage import SqlTx, Store
from jukinet.wire.v1 import register_pb2, register_pb2_grpc

MAX_CHANGES_PER_MESSAGE = 5000


class RegisterServicer(register_pb2_grpc.RegisterServiceServicer):
    def __init__(
        self,
        origin: str,
        store: Store,
        guard: Guard,
        metrics: NodeMetrics,
        on_recorded: Callable[[int, Sequence[EventRow]], None],
        on_pool_exhausted: Callable[[], None],
    ) -> None:
        self._origin = origin
        self._node = NodeId(Role.MUNICIPALITY, origin)
        self._store = store
        self._guard = guard
        self._metrics = metrics
        self._on_recorded = on_recorded
        self._on_pool_exhausted = on_pool_exhausted

    async def _record(self, changes: Sequence[RegisterChange | Refused], call: CallInfo) -> list[Outcome]:
        return (await self._submit(changes, call)).outcomes

    def _submit(
        self, changes: Sequence[RegisterChange | Refused], call: CallInfo, writes: StreamWrites | None = None
    ) -> "asyncio.Future[IntakeResult]":
        """Queues the changes' transaction with the writer (in call order) and returns its future; `writes`:
        the stream it belongs to, if any (nothing of a stream applies after a failed message)."""
        now = dt.datetime.now(dt.UTC)
        self._metrics.changes_received.inc(len(changes))

        def job(conn: Connection) -> IntakeResult:
            return record_changes(SqlTx(conn), self._origin, changes, call, now)

        return self._store.submit(job if writes is None else writes.job(job), after_commit=self._committed)

    def _committed(self, result: IntakeResult) -> None:
        """Runs after the commit even if the register system went away meanwhile: the relay always hears of it."""
        accepted = sum(1 for o in result.outcomes if isinstance(o, Accepted))
        self._metrics.changes_applied.inc(len(result.events))
        self._metrics.changes_duplicate.inc(accepted - len(result.events))  # replayed request ids
        exhausted = False
        for outcome in result.outcomes:
            if isinstance(outcome, Refused):
                self._metrics.changes_refused.labels(outcome.error.reason).inc()
                exhausted = exhausted or isinstance(outcome.error, CodePoolExhausted)
        if result.events:
            self._on_recorded(result.events[-1].seq, result.events)
        if exhausted:
            self._on_pool_exhausted()

    async def RecordChange(
        self, request: register_pb2.RecordChangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> register_pb2.RecordChangeResponse:
        async with self._guard.call(context, authz.RECORD_CHANGE) as call:
            authz.check_origin(call.caller, self._origin, self._node)
            if not request.HasField("change"):
                raise InvalidField("change", "is required")
            change = register_change_from_pb(request.change)
            (outcome,) = await self._record([change], call.info)
            if isinstance(outcome, Refused):
                raise AlreadyLogged(outcome.error)
            return register_pb2.RecordChangeResponse(result=outcome_to_pb(outcome))
        raise AssertionError("unreachable")

    async def RecordChanges(
        self,
        request_iterator: AsyncIterator[register_pb2.RecordChangesRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[register_pb2.RecordChangesResponse]:
        async with self._guard.call(context, authz.RECORD_CHANGES) as call:
            authz.check_origin(call.caller, self._origin, self._node)
            async for answer in writes_in_order(request_iterator, partial(self._start_message, call)):
                yield answer

    def _start_message(
        self, call: Call, request: register_pb2.RecordChangesRequest, writes: StreamWrites
    ) -> Awaitable[register_pb2.RecordChangesResponse]:
        """Checks one message and queues its write in arrival order; the stream reads the next message
        meanwhile, so messages that arrive together are recorded in one transaction."""
        call.check_open()
        if len(request.changes) > MAX_CHANGES_PER_MESSAGE:
            raise InvalidField(
                "changes",
                f"{len(request.changes)} changes in one message; the limit is {MAX_CHANGES_PER_MESSAGE}",
            )
        changes = [register_change_or_refusal(pb) for pb in request.changes]
        return _answer(self._submit(changes, call.info, writes) if changes else None)


async def _answer(recorded: Awaitable[IntakeResult] | None) -> register_pb2.RecordChangesResponse:
    response = register_pb2.RecordChangesResponse()
    if recorded is not None:
        add_outcomes(response.results, (await recorded).outcomes)
    return response
