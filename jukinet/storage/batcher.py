"""Concurrent one-item writes that share one store job (agency lookups: many small calls at once).

Each caller submits one item and waits for its own answer. The first item queues a job on the store's
writer; every item submitted before that job starts joins it, and so does every item submitted while it
runs (up to max_items): the job takes what is waiting, runs it (one SELECT for all its codes), takes again,
and once nothing is left runs `finish` over everything it took (one multi-row INSERT per log for the whole
job) and commits. Each caller is answered after that commit. Nobody waits for a timer: under light load a
job holds one item, under heavy load many, and the commits (with their fsync) are shared.

The batch function returns one result per item, in order: a value, or the exception for that item alone.
If the batch itself fails (a database error, `finish`, the commit), every item of it gets that error.

Each statement the writer thread runs lets the event loop take the GIL, and the writer waits to get it
back: one `finish` per job instead of the logs' INSERTs per take cut a lookup job's statements from about
ten to about five.
"""

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy import Connection

from jukinet.storage.store import Store

I = TypeVar("I")  # noqa: E741 - the item type
O = TypeVar("O")  # noqa: E741 - the result type

BatchFn = Callable[[Connection, Sequence[I]], Sequence[O | Exception]]
# Runs once per job, after the last take, in the job's transaction: every item taken whose caller still
# waits, and its result.
FinishFn = Callable[[Connection, Sequence[I], Sequence[O | Exception]], None]


class WriteBatcher(Generic[I, O]):
    def __init__(
        self, store: Store, run: "BatchFn[I, O]", *, finish: "FinishFn[I, O] | None" = None, max_items: int = 512
    ) -> None:
        self._store = store
        self._run = run
        self._finish = finish
        self._max_items = max_items
        self._lock = threading.Lock()  # the event loop appends, the writer thread takes
        self._pending: list[tuple[I, asyncio.Future[O]]] = []
        self._queued = 0  # 1 while a job is queued or still taking items, else 0
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, item: I) -> O:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[O] = loop.create_future()
        with self._lock:
            self._pending.append((item, future))
            start = self._queued == 0
            if start:
                self._queued += 1
        if start:
            self._schedule_flush(loop)
        return await future

    def _take(self, room: int) -> tuple[list[tuple[I, "asyncio.Future[O]"]], bool]:
        """Up to `room` pending items for the running job, and whether the job gave up its slot: it does
        when none are left, or when it is full (then a new job is scheduled for what still waits)."""
        with self._lock:
            taken, self._pending = self._pending[:room], self._pending[room:]
            done = not taken or room <= len(taken)
        if done:
            self._release()
        return taken, done

    def _release(self) -> None:
        """The running job's slot is free; items still waiting get a job of their own."""
        with self._lock:
            self._queued -= 1
            more = bool(self._pending)
            if more:
                self._queued += 1
                loop = self._pending[0][1].get_loop()
        if more:
            loop.call_soon_threadsafe(self._schedule_flush, loop)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # A task of its own: the job's answers reach every caller even if the one who started it is cancelled.
        flush = loop.create_task(self._flush())
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        taken: list[tuple[I, asyncio.Future[O]]] = []

        def job(conn: Connection) -> Sequence[O | Exception]:
            # Items that arrive while the job runs join it too, up to max_items: one commit for all.
            results: list[O | Exception] = []
            released = False
            try:
                while not released:
                    more, released = self._take(self._max_items - len(taken))
                    taken.extend(more)
                    if more:
                        results.extend(self._run(conn, [item for item, _ in more]))
            finally:
                if not released:  # the batch failed while the job still held its slot
                    self._release()
            if self._finish is not None:
                # Callers that gave up meanwhile (deadline, cancellation) will get nothing: leave them out. One
                # who gives up after this still counts as served: over-reported, never under-reported.
                live = [i for i, (_, future) in enumerate(taken) if not future.cancelled()]
                self._finish(conn, [taken[i][0] for i in live], [results[i] for i in live])
            return results

        try:
            results = await self._store.write(job)
        except Exception as error:
            for _, future in taken:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(taken, results, strict=True):
            if future.done():  # the caller gave up (deadline, cancellation)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
