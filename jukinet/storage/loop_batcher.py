"""Agency lookups on SQLite: small transactions run on the event loop itself, many calls to each.

A WriteBatcher hands every group of lookups to the store's writer thread and back. On this 2-vCPU VM that
round trip, not the SQL, was the largest cost of a lookup: each hand-over makes the two threads trade the
GIL (futex wake-ups across vCPUs), and a writer job with an empty transaction already cut the center's
lookups per second by about 30 % against answering without a database (bench/provision.py --quick set-up,
c=16, 2026-12-01). A LoopBatcher runs the same batch function, `finish` and commit (synchronous=FULL: the
fsync included) on the event loop, on a connection of its own, and answers each caller after that commit.

Grouping. The loop blocks for a transaction's statements and its fsync, so each one must serve many calls.
The first call that finds no group waiting starts a linger timer; every call until it fires joins the
group (or `max_items` of them flush it at once). With linger 0 a group held about one call and lookups/s
fell by 14 %; with a linger the center answered 20-30 % more lookups per second than through the writer
thread. How long to linger, and when a group is complete before its linger ends, is
jukinet.storage.group_timing's policy (adaptive: in proportion to the measured transaction); a
GroupTiming with a fixed linger pins it (tests). History: a fixed 2 ms won against 5 ms on a fast stretch
of the VM (0.461-0.479 of the bare handler against 0.448-0.460, 2026-12-02) and lost badly to the adaptive
policy on a slow one (0.34 against 0.55): a linger's worth depends on the machine's speed.

A caller alone pays the linger without any gain, so a timer that fires with fewer than `min_group` calls
switches to prompt mode for at most `quiet_s`: each call is flushed on the next turn of the loop. A lone
sequential caller: 550-580 lookups/s. Prompt mode ends early at the first flush that finds company
(`min_group` calls or more), or that finds the event loop's thread busy (`busy_share` of the wall time in
CPU, `cpu_clock`) ever since the previous flush ended: a loop that never idled between two calls had more
callers queued behind them. That second rule matters because under load the calls reach the batcher one
per turn of the loop, so a prompt flush hardly ever finds company: one lull under sixteen callers left
the center committing one call a transaction (46 % of its groups had one call; a one-call transaction
costs about as much CPU as a call's whole gRPC handling) until `quiet_s` ran out, and the next lull put it
back. Thirteenth session, two centers on copies of bench/provision.py's 100,000-resident database, c=16 in
alternating 0.5 s slices, seven pairs: -4 % to +19 % lookups/s with the rule (median +5.5 %), the most where
the old policy had fallen into one-call transactions; one-call groups 1-3 % instead of 10-46 %.

Sharing the database with the writer thread. Both connections begin with BEGIN IMMEDIATE (the writer's
flag is set in Store), so neither reads a snapshot that the other's commit then makes stale. The loop
never waits for the lock (busy_timeout=0 on its connection): when the writer holds it (a relay group, the
provision indexer), the group is handed to `fallback`, the WriteBatcher that queues it behind the writer.

Not on PostgreSQL: a network round trip per statement would block the loop; there the WriteBatcher runs
alone."""

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Generic

import structlog
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from jukinet.storage.batcher import BatchFn, FinishFn, I, O, WriteBatcher
from jukinet.storage.group_timing import GroupTiming
from jukinet.storage.store import Store

log = structlog.get_logger(__name__)

MAX_ITEMS = 64
MIN_GROUP = 2
QUIET_S = 1.0
BUSY_SHARE = 0.8
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


class LoopBatcher(Generic[I, O]):
    def __init__(
        self,
        store: Store,
        run: "BatchFn[I, O]",
        *,
        finish: "FinishFn[I, O]",
        fallback: WriteBatcher[I, O],
        timing: GroupTiming | None = None,
        max_items: int = MAX_ITEMS,
        min_group: int = MIN_GROUP,
        quiet_s: float = QUIET_S,
        busy_share: float = BUSY_SHARE,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
        on_flush: Callable[[int, int, float], None] | None = None,
    ) -> None:
        """`on_flush(committed, handed_over, linger_s)` is told, for each group, how many calls its transaction
        on the loop answered and how many went to the writer thread instead (one of the two is 0), and the
        linger the next group will wait (GroupTiming's, after this group). `clock` is wall time, `cpu_clock`
        the CPU time of the event loop's thread (it runs every flush)."""
        if store.dialect != "sqlite":
            raise ValueError("LoopBatcher runs SQLite transactions on the event loop; use WriteBatcher elsewhere")
        self._store = store
        self._run = run
        self._finish = finish
        self._fallback = fallback
        self._timing = timing if timing is not None else GroupTiming()
        self._lingered_out = False  # the group being flushed waited out its linger or filled up
        self.max_items = max_items
        self.min_group = min_group
        self.quiet_s = quiet_s
        self.busy_share = busy_share
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._flushed_at: tuple[float, float] | None = None  # (clock, cpu_clock) when the last flush ended
        self._on_flush = on_flush
        self._connection: Connection | None = None
        self._pending: list[tuple[I, asyncio.Future[O]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flush_queued = False
        self._prompt_until = 0.0
        self._handed_over: set[asyncio.Task[None]] = set()
        self._closed = False
        self.groups = 0  # transactions committed on the loop
        self.handed_over = 0  # calls passed to the writer thread because it held the lock

    async def submit(self, item: I) -> O:
        if self._closed:
            return await self._fallback.submit(item)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[O] = loop.create_future()
        self._pending.append((item, future))
        waiting = len(self._pending)
        now = self._clock()
        if waiting >= self.max_items:
            self._lingered_out = True
            self._flush_soon(loop)
        elif now < self._prompt_until:
            self._flush_soon(loop)
        elif (full := self._timing.full_at(now)) >= self.min_group and waiting >= full:
            self._flush_soon(loop)  # everyone a group held lately is here: lingering on would idle the loop
        elif self._timer is None and not self._flush_queued:
            self._timer = loop.call_later(self._timing.linger_s(), self._linger_over)
        return await future

    def close(self) -> None:
        """Flushes what waits and closes the connection; later calls go through the writer thread."""
        self._closed = True
        self._flush()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._flush_queued:
            self._flush_queued = True
            loop.call_soon(self._flush)

    def _linger_over(self) -> None:
        self._timer = None
        self._lingered_out = True
        if len(self._pending) < self.min_group:  # few callers: lingering only delays them
            self._prompt_until = self._clock() + self.quiet_s
        self._flush()

    def _flush(self) -> None:
        try:
            self._flush_taken()
        finally:
            self._flushed_at = (self._clock(), self._cpu_clock())

    def _loop_stayed_busy(self) -> bool:
        """In prompt mode: whether the loop's thread has been running (not waiting for calls) since the last
        flush ended."""
        if self._flushed_at is None or self._clock() >= self._prompt_until:
            return False
        since, cpu_since = self._flushed_at
        wall = self._clock() - since
        return wall > 0 and self._cpu_clock() - cpu_since >= self.busy_share * wall

    def _flush_taken(self) -> None:
        self._flush_queued = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Callers that gave up meanwhile (deadline, cancellation) get nothing: leave them out of the logs.
        taken = [(item, future) for item, future in self._pending if not future.cancelled()]
        self._pending = []
        lingered, self._lingered_out = self._lingered_out, False
        if not taken:
            return
        if len(taken) >= self.min_group or self._loop_stayed_busy():  # company again: the next group lingers
            self._prompt_until = 0.0
        items = [item for item, _ in taken]
        started = time.perf_counter()
        try:
            results = self._transact(items)
        except _WriterBusy:
            for item, future in taken:
                self._hand_over(item, future)
            self._report(0, len(taken))
            return
        except Exception as error:
            log.error("loop_transaction_failed", error=repr(error), calls=len(items))
            for _, future in taken:
                if not future.done():
                    future.set_exception(error)
            return
        self.groups += 1
        took = time.perf_counter() - started
        self._timing.committed(len(taken), took, self._clock(), lingered=lingered)
        self._store.report_group(1, took)
        self._report(len(taken), 0)
        for (_, future), result in zip(taken, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _report(self, committed: int, handed_over: int) -> None:
        if self._on_flush is None:
            return
        try:
            self._on_flush(committed, handed_over, self._timing.linger_s())
        except Exception as error:  # a metrics hiccup must not fail calls already committed
            log.warning("loop_batcher_report_failed", error=repr(error))

    def _transact(self, items: list[I]) -> "list[O | Exception]":
        conn = self._connect()
        try:
            with conn.begin():
                results = list(self._run(conn, items))
                self._finish(conn, items, results)
            return results
        except (OperationalError, sqlite3.OperationalError) as error:
            # BEGIN runs straight on the driver (jukinet.storage.engine): its error arrives unwrapped
            if _is_busy(error.orig if isinstance(error, OperationalError) else error):
                raise _WriterBusy from error
            self._drop_connection()
            raise
        except Exception:
            self._drop_connection()  # whatever state it is in, the next group starts on a fresh one
            raise

    def _hand_over(self, item: I, future: "asyncio.Future[O]") -> None:
        self.handed_over += 1
        task = asyncio.ensure_future(self._through_writer(item, future))
        self._handed_over.add(task)
        task.add_done_callback(self._handed_over.discard)

    async def _through_writer(self, item: I, future: "asyncio.Future[O]") -> None:
        try:
            result = await self._fallback.submit(item)
        except Exception as error:
            if not future.done():
                future.set_exception(error)
            return
        if not future.done():
            future.set_result(result)

    def _connect(self) -> Connection:
        if self._connection is None or self._connection.closed or self._connection.invalidated:
            connection = self._store.engine.connect()
            connection.detach()  # its settings below must never reach a pooled reader
            connection.info["immediate"] = True
            connection.connection.dbapi_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
            self._connection = connection
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as error:  # already broken: nothing more to release
                log.warning("loop_connection_close_failed", error=repr(error))


class _WriterBusy(Exception):
    """Internal: the writer thread holds the write lock; the group goes to it instead."""


def _is_busy(error: BaseException | None) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.OperationalError)
        and code is not None
        and code & 0xFF
        in (
            _SQLITE_BUSY,
            _SQLITE_LOCKED,
        )
    )
