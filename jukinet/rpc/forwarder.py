"""The sending side of the relay: streams stored events to the next tier and resumes from its cursor.

At-least-once transport: a batch is resent after any failure until the receiver's cursor covers it;
the receiver's idempotent apply on (origin, seq) makes the effect exactly-once."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import grpc
import structlog
from sqlalchemy import Connection, Row

from jukinet.domain.identity import NodeId
from jukinet.domain.model import EventRow
from jukinet.observability.metrics import NodeMetrics
from jukinet.pki import channel_options
from jukinet.rpc import authz
from jukinet.rpc.convert import add_event_rows
from jukinet.rpc.guard import REQUEST_ID_KEY
from jukinet.rpc.switch import LinkSwitch
from jukinet.services.ports import AccessEntry
from jukinet.storage import SqlTx, Store, queries
from jukinet.wire.v1 import relay_pb2, relay_pb2_grpc, types_pb2

log = structlog.get_logger(__name__)
RPC_TIMEOUT_S = 10.0
RECENT_LIMIT = 50_000  # events kept in memory after commit so the sender need not read them back


Cached = Sequence[types_pb2.ChangeEvent] | Sequence[EventRow]


class Forwarder:
    def __init__(
        self,
        *,
        store: Store,
        upstream: str,
        upstream_identity: str,
        credentials: Callable[[], grpc.ChannelCredentials],
        metrics: NodeMetrics,
        batch_size: int = 2000,
        window: int = 4,
        switch: LinkSwitch | None = None,
    ) -> None:
        self._switch = switch
        self._store = store
        self._upstream = upstream
        self._upstream_identity = upstream_identity
        self._channel_options = channel_options(NodeId.parse(upstream_identity))  # it must be that node
        self._credentials = credentials
        self._metrics = metrics
        self._batch_size = batch_size
        self._window = max(1, window)
        self._heads: dict[str, int] = {}  # loaded from the database at every session start
        self._acked: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._recent: dict[str, dict[int, Cached]] = {}
        self._recent_size = 0
        self.connected = False

    def notify(self, origin: str, head_seq: int, events: Cached = ()) -> None:
        """Called after a local commit: there is something new to send. `events`, when given, are the
        committed events themselves (consecutive), kept briefly so the sender need not read them back: the
        messages a prefecture received, or the rows a municipality recorded (turned into messages only when
        sent, so a row evicted before it is sent is converted once, from the database)."""
        if head_seq > self._heads.get(origin, 0):
            self._heads[origin] = head_seq
        if events:
            self._recent.setdefault(origin, {})[events[0].seq] = events  # the caller hands them over
            self._recent_size += len(events)
            while self._recent_size > RECENT_LIMIT:
                self._evict_one()
        self._update_depth()
        self._wake.set()

    def _evict_one(self) -> None:
        for bucket in self._recent.values():
            if bucket:
                first = next(iter(bucket))
                self._recent_size -= len(bucket.pop(first))
                return
        self._recent_size = 0

    def _take_recent(self, origin: str, first_seq: int, request: relay_pb2.PushEventsRequest) -> int:
        """Adds consecutive cached events from first_seq on to `request` (joining small batches up to the
        batch size); returns how many."""
        bucket = self._recent.get(origin, {})
        events = request.events
        taken = 0
        while (part := bucket.get(first_seq + taken)) is not None:
            if taken and taken + len(part) > self._batch_size:
                break  # never exceed the batch size by joining (a single cached part is <= MAX_BATCH)
            del bucket[first_seq + taken]
            self._recent_size -= len(part)
            if part and isinstance(part[0], EventRow):
                add_event_rows(events, part)
            else:
                events.extend(part)  # type: ignore[arg-type]  # a list of messages (mypy cannot narrow the union)
            taken += len(part)
        return taken

    def _uncached_run(self, origin: str, first_seq: int) -> int:
        """How many events to read back from first_seq on: up to the next cached part (so the reads end where
        the cache takes over again), at most a batch. Parts before first_seq (sent meanwhile) are dropped."""
        bucket = self._recent.get(origin, {})
        while bucket:
            first = next(iter(bucket))
            if first > first_seq:
                return min(self._batch_size, first - first_seq)
            self._recent_size -= len(bucket.pop(first))
        return self._batch_size

    async def _refresh_heads(self) -> None:
        """Cheap per-origin re-read of the known origins' heads (an index lookup each)."""
        origins = list(self._heads)
        heads = await self._store.read(lambda conn: {o: SqlTx(conn).head_seq(o) for o in origins})
        for origin, head in heads.items():
            if head > self._heads.get(origin, 0):
                self._heads[origin] = head

    def forwarded(self) -> dict[str, int]:
        return dict(self._acked)

    def pending(self) -> int:
        return sum(max(0, h - self._acked.get(o, 0)) for o, h in self._heads.items())

    def _update_depth(self) -> None:
        if self._acked or not self._heads:
            self._metrics.outbox_depth.set(self.pending())

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.2
        while not stop.is_set():
            if self._switch is not None and self._switch.cut_off:
                self._set_connected(False)
                await _first(stop.wait(), self._switch.wait_open())
                continue
            try:
                async with grpc.aio.secure_channel(
                    self._upstream,
                    self._credentials(),
                    options=self._channel_options,  # credentials re-read: renewals
                ) as channel:
                    await self._session(relay_pb2_grpc.RelayServiceStub(channel), stop)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._set_connected(False)
                code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
                detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
                log.warning(
                    "relay_session_failed",
                    upstream=self._upstream,
                    code=code,
                    detail=detail,
                    retry_in=backoff,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                backoff = min(backoff * 2, 5.0)
        self._set_connected(False)

    def _check_open(self) -> None:
        if self._switch is not None and self._switch.cut_off:
            raise ConnectionAbortedError("this node was cut off by its operator; the stream is closed")

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self._metrics.upstream_up.set(1 if value else 0)

    async def _session(self, stub: relay_pb2_grpc.RelayServiceAsyncStub, stop: asyncio.Event) -> None:
        # Safety net for a lost wake-up: every session starts from what the database holds.
        for origin, head in (await self._store.read(queries.head_seqs)).items():
            self.notify(origin, head)
        origins = sorted(self._heads)
        # Asked even with no origin yet: the session counts as connected only once the upstream answered.
        reply = await stub.GetCursors(relay_pb2.GetCursorsRequest(origins=origins), timeout=RPC_TIMEOUT_S)
        for cursor in reply.cursors:
            self._acked[cursor.origin] = cursor.acked_seq
            if cursor.acked_seq > self._heads.get(cursor.origin, 0):
                # The next tier holds more of this origin than we do (a restored backup?): the events
                # in between would be acknowledged without effect. Operators must reconcile.
                log.error(
                    "upstream_ahead_of_local_log",
                    origin=cursor.origin,
                    upstream_seq=cursor.acked_seq,
                    local_seq=self._heads.get(cursor.origin, 0),
                )
        made = AccessEntry(
            at=dt.datetime.now(dt.UTC),
            request_id=uuid.uuid4().hex,
            peer=self._upstream_identity,
            method=authz.GET_CURSORS,
            outcome="OK",
            direction="made",
        )
        await self._store.write(partial(_append_access, made))
        self._set_connected(True)
        self._update_depth()
        log.info("relay_session_open", upstream=self._upstream, cursors=dict(self._acked))
        session_id = uuid.uuid4().hex
        call = stub.PushEvents(metadata=((REQUEST_ID_KEY, session_id),))  # type: ignore[call-arg]  # grpc-stubs: iterator is optional
        sent = dict(self._acked)
        inflight: deque[tuple[str, int, int, float, list[str]]] = deque()
        slots = asyncio.Semaphore(self._window)

        async def read_acks() -> None:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]  # missing from grpc-stubs
                    raise ConnectionError("upstream closed the relay stream")
                assert isinstance(response, relay_pb2.PushEventsResponse)  # noqa: S101
                origin, first, last, oldest, codes = inflight.popleft()
                if response.origin != origin or response.acked_seq < last:
                    raise ConnectionError(
                        f"upstream acked {response.origin}#{response.acked_seq}, expected {origin}#{last}"
                    )
                slots.release()
                self._acked[origin] = response.acked_seq
                self._metrics.changes_forwarded.inc(last - first + 1)
                self._update_depth()
                self._metrics.relay_lag.set(max(0.0, time.time() - oldest) if inflight else 0.0)
                entry = AccessEntry(
                    at=dt.datetime.now(dt.UTC),
                    request_id=f"{session_id}:{origin}:{first}-{last}",
                    peer=self._upstream_identity,
                    method=authz.PUSH_EVENTS,
                    outcome="OK",
                    direction="made",
                    subjects=codes,
                )
                await self._store.write(partial(_append_access, entry))

        reader = asyncio.create_task(read_acks())
        try:
            rotation = 0
            while not stop.is_set():
                if reader.done():
                    reader.result()
                pending = [o for o in sorted(self._heads) if self._heads[o] > sent.get(o, 0)]
                if not pending:
                    await self._refresh_heads()
                    if any(self._heads[o] > sent.get(o, 0) for o in self._heads):
                        continue
                    self._wake.clear()
                    waiter = asyncio.create_task(self._wake.wait())
                    stopper = asyncio.create_task(stop.wait())
                    switched = asyncio.create_task(self._switch.changed()) if self._switch else None
                    waiting = {waiter, stopper, reader} | ({switched} if switched else set())
                    await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    for task in (waiter, stopper, switched):
                        if task is not None:
                            task.cancel()
                    self._check_open()
                    continue
                origin = pending[rotation % len(pending)]
                rotation += 1
                self._check_open()
                acquire = asyncio.ensure_future(slots.acquire())
                await asyncio.wait({acquire, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not acquire.done():
                    acquire.cancel()
                    reader.result()
                    raise ConnectionError("relay stream ack reader stopped")
                after = sent.get(origin, 0)
                request = relay_pb2.PushEventsRequest(origin=origin)
                if not self._take_recent(origin, after + 1, request):
                    limit = self._uncached_run(origin, after + 1)
                    rows = await self._store.read(partial(_event_rows_after, origin, after, limit))
                    add_event_rows(request.events, rows)
                batch = request.events
                if not batch:
                    slots.release()
                    continue
                first, last = batch[0], batch[-1]
                oldest = first.recorded_time.seconds + first.recorded_time.nanos / 1e9
                inflight.append((origin, first.seq, last.seq, oldest, [e.resident_code for e in batch]))
                await call.write(request)
                sent[origin] = last.seq
            await call.done_writing()
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            call.cancel()


def _append_access(entry: AccessEntry, conn: Connection) -> None:
    SqlTx(conn).append_access([entry])


def _event_rows_after(origin: str, after: int, limit: int, conn: Connection) -> list[Row[Any]]:
    return SqlTx(conn).event_rows_after(origin, after, limit)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
