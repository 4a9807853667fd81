"""A node's database: one writer thread with group commit, plus a small pool of readers.

All writes of a node go through one thread, so SQLite writes are serialized in one place. Jobs queued
while a transaction is running are committed together (group commit): each job runs in its own
SAVEPOINT, so a failing job is rolled back alone and the others still commit. No job's caller is
answered before the transaction holding its job has committed.

On SQLite the writer keeps one connection for its whole life. A connection that begins a transaction after
another connection has written throws away its page cache and unmaps the database file (SQLite's pager does
this whenever the WAL changed under it); taking the next pooled connection for every group did exactly that
for nearly every group (the pool hands its connections out in turn), and the writer then faulted the pages of
a 1M-resident database back in one by one. PostgreSQL has no such cost and keeps checking out per group, with
the pool's pre-ping catching a connection the server dropped.
"""

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Engine

from jukinet.storage.engine import AUTOCHECKPOINT_PAGES, make_engine
from jukinet.storage.wal_checkpointer import CheckpointResult, WalCheckpointer

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Job:
    fn: Callable[[Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Any]"
    after_commit: Callable[[Any], None] | None = None
    isolated: bool = True


_STOP = object()


class Store:
    """Owns the engine, the writer thread and the reader pool of one node."""

    def __init__(
        self,
        url: str,
        *,
        max_group: int = 64,
        on_group: Callable[[int, float], None] | None = None,
        on_checkpoint: Callable[[CheckpointResult], None] | None = None,
        autocheckpoint_pages: int = AUTOCHECKPOINT_PAGES,
    ) -> None:
        """`on_group(jobs, seconds)` is called on the writer thread after every transaction it ran (committed
        or rolled back): how many jobs shared it and how long it took, commit included. On SQLite a thread of
        its own copies the WAL into the database file ahead of the commit that checkpoints it every
        `autocheckpoint_pages` (jukinet.storage.wal_checkpointer); `on_checkpoint` is told the outcome of each
        of its checkpoints, on that thread."""
        self.url = url
        self._on_group = on_group
        self.engine: Engine = make_engine(url, autocheckpoint_pages=autocheckpoint_pages)  # a file or a server
        self.checkpointer: WalCheckpointer | None = None
        if self.engine.dialect.name == "sqlite":
            self.checkpointer = WalCheckpointer(
                self.engine, autocheckpoint_pages=autocheckpoint_pages, on_checkpoint=on_checkpoint
            )
            self.checkpointer.start()
        self._max_group = max_group
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-read")
        self._keep_connection = self.engine.dialect.name == "sqlite"
        self._connection: Connection | None = None  # the writer's own (SQLite), opened on first use
        self._writer = threading.Thread(target=self._write_loop, name="db-write", daemon=True)
        self._writer.start()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def write(
        self,
        fn: Callable[[Connection], T],
        *,
        after_commit: Callable[[T], None] | None = None,
        isolated: bool = True,
    ) -> T:
        """Runs fn in a transaction on the writer thread; returns after the commit.

        `after_commit` runs on the event loop once the job is committed, even if the caller was cancelled
        meanwhile (a client deadline, a shutdown): whatever must follow a commit (waking the relay sender)
        never depends on the caller still waiting.

        `isolated=False` skips the job's SAVEPOINT inside a group commit (a measurable cost on hot read-mostly
        paths such as agency lookups); if such a job raises, the whole group is rolled back and every job of
        it fails with that error (there is no savepoint to return to, and PostgreSQL aborts the transaction
        on any failed statement)."""
        return await self.submit(fn, after_commit=after_commit, isolated=isolated)

    def submit(
        self,
        fn: Callable[[Connection], T],
        *,
        after_commit: Callable[[T], None] | None = None,
        isolated: bool = True,
    ) -> "asyncio.Future[T]":
        """Queues fn for the writer at once and returns the future of its result (see `write`).

        Jobs run in the order they were submitted, so a stream can hand the writer its next message before the
        previous one has committed; the writer then commits the queued messages together."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future, after_commit, isolated))
        return future

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Runs fn on a reader connection (its own snapshot transaction)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, fn)

    def read_sync(self, fn: Callable[[Connection], T]) -> T:
        return self._read_sync(fn)

    def _read_sync(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            result = fn(conn)
            conn.rollback()
            return result

    def report_group(self, jobs: int, seconds: float) -> None:
        """Passes one committed or rolled-back transaction to the `on_group` hook: the writer's, and those
        a LoopBatcher runs on the event loop."""
        if self._on_group is None:
            return
        try:
            self._on_group(jobs, seconds)
        except Exception as error:  # a metrics hook must never stop a writer
            log.warning("db_group_hook_failed", error=repr(error))

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._writer.join(timeout=30)
        self._readers.shutdown(wait=True)
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()

    def _write_loop(self) -> None:
        try:
            self._serve_jobs()
        finally:
            self._drop_connection()

    def _serve_jobs(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            group: list[_Job] = [first]
            stop_after = False
            while len(group) < self._max_group:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                group.append(more)
            self._run_group(group)
            if stop_after:
                return

    def _run_group(self, group: list[_Job]) -> None:
        """Runs and commits one group, reports it to `on_group`, then answers its jobs (so a caller that has
        its answer finds its transaction already counted)."""
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            with self._connect() as conn, conn.begin():
                for job in group:
                    savepoint = len(group) > 1 and job.isolated
                    outcome = self._run_job(conn, job, savepoint=savepoint)
                    outcomes.append(outcome)
                    if not outcome[0] and not savepoint:
                        # Nothing to roll back to: on PostgreSQL a failed statement aborts the whole
                        # transaction, and its COMMIT then rolls back without an error. Every job of the
                        # group fails with this one's error; none is reported durable.
                        raise _RollbackAll(outcome[1])
        except _RollbackAll as failed:
            if len(group) > 1:
                log.error("db_group_rolled_back", error=repr(failed.error), jobs=len(group))
            outcomes = [(False, failed.error) for _ in group]
        except Exception as error:  # the commit itself failed: nobody's job is durable
            log.error("db_commit_failed", error=repr(error), jobs=len(group))
            outcomes = [(False, error) for _ in group]
            self._drop_connection()  # the next group starts on a fresh connection
        self.report_group(len(group), time.perf_counter() - started)
        for job, (ok, value) in zip(group, outcomes, strict=True):
            if ok:
                job.loop.call_soon_threadsafe(_committed, job, value)
            else:
                job.loop.call_soon_threadsafe(_reject, job.future, value)

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """The connection a group runs on: the writer's own on SQLite, a pooled one otherwise."""
        if not self._keep_connection:
            with self.engine.connect() as conn:
                yield conn
            return
        if self._connection is None or self._connection.closed or self._connection.invalidated:
            self._drop_connection()
            connection = self.engine.connect()
            # Out of the pool, so that its flag never reaches a reader: BEGIN IMMEDIATE (jukinet.storage.engine),
            # as a LoopBatcher's connection writes too, and a transaction that read first and then wrote would
            # fail on a snapshot the other's commit had made stale.
            connection.detach()
            connection.info["immediate"] = True
            self._connection = connection
        yield self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception as error:  # already broken: nothing more to release
                log.warning("db_connection_close_failed", error=repr(error))

    @staticmethod
    def _run_job(conn: Connection, job: _Job, *, savepoint: bool) -> tuple[bool, Any]:
        try:
            if savepoint:
                with conn.begin_nested():
                    return True, job.fn(conn)
            return True, job.fn(conn)
        except Exception as error:
            return False, error


class _RollbackAll(Exception):
    """Internal: a job without a SAVEPOINT failed; roll back the whole group's transaction."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def _committed(job: _Job, value: Any) -> None:
    if job.after_commit is not None:
        try:
            job.after_commit(value)
        except Exception as error:
            log.error("after_commit_failed", error=repr(error))
    _resolve(job.future, value)


def _resolve(future: "asyncio.Future[Any]", value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _reject(future: "asyncio.Future[Any]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
