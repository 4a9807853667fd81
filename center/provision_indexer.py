"""Keeps the provision log's by-resident index close behind the log (jukinet.storage.provision_index)."""

import asyncio
import contextlib
import time

import structlog
from sqlalchemy import Connection

from jukinet.observability.metrics import NodeMetrics
from jukinet.storage import Store
from jukinet.storage.provision_index import (
    DEFAULT_BATCH,
    DROP_OLD_INDEXES,
    index_provisions,
    newest_provision,
    unindexed,
)

log = structlog.get_logger(__name__)


def _drop_old_indexes(conn: Connection) -> None:
    for statement in DROP_OLD_INDEXES:
        conn.exec_driver_sql(statement)


class ProvisionIndexer:
    """Every `interval_s`, looks at how many entries wait to be indexed, and indexes them once there are
    `min_entries` or the oldest has waited `max_wait_s`: `batch` entries per writer job (a job holds the
    writer, so a backlog is worked off in several, and answers waiting for a commit wait at most one).

    Indexing seldom and in large batches keeps agency lookups steady. A job holds the write lock, and under
    closed-loop load every caller in flight waits for it; and a job costs about one pass over the part of
    the index it lands in (the newest segment or two, jukinet.storage.provision_index), whatever the batch's
    size, since entries of random residents land on nearly every page of it (offline, before segments, with
    1.7-1.85 million entries indexed: 17,000 entries took 259 ms, 100,000 273 ms, 200,000 441 ms). Run
    every second, those waits put 1 % of lookups above 20 ms at concurrency 16 (p99 22-35 ms in three
    rounds); every 10 s, p99 was 15-18 ms and lookups/s 8 % higher (bench/provision.py --quick set-up,
    2026-12-01). With no
    indexing at all, against a million residents, lookups/s were about 8 % higher again and the share of
    lookups above 20 ms fell from 0.7-1.0 % to 0.3-0.8 % (three interleaved 15 s passes each, 2026-12-02),
    hence one job a minute at most under load. A disclosure meanwhile scans the unindexed tail: at most
    `min_entries` or `max_wait_s` of lookups (at 2,000 lookups/s, 120,000 entries: a scan of some tens of
    milliseconds, for an operator's request)."""

    def __init__(
        self,
        store: Store,
        metrics: NodeMetrics,
        *,
        interval_s: float = 1.0,
        batch: int = DEFAULT_BATCH,
        min_entries: int = 200_000,
        max_wait_s: float = 60.0,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.interval_s = interval_s
        self.batch = batch
        self.min_entries = min_entries
        self.max_wait_s = max_wait_s
        self._old_index_dropped = False

    async def catch_up(self) -> int:
        """Indexes everything committed when it starts (not what arrives meanwhile: chasing a busy log's tail
        would index it in many small jobs); returns how many entries."""
        target = await self._store.read(newest_provision)
        total = 0
        caught_up = False
        started = time.monotonic()
        while not caught_up:
            indexed, caught_up = await self._store.write(lambda conn: index_provisions(conn, self.batch, upto=target))
            total += indexed
        if total:
            log.info("provisions_indexed", entries=total, through=target, seconds=round(time.monotonic() - started, 3))
        if not self._old_index_dropped:
            # A database from before this index: its per-entry index or unsegmented index served disclosure
            # until the backfill above caught up; from now on they only cost.
            await self._store.write(_drop_old_indexes)
            self._old_index_dropped = True
        self._metrics.provisions_unindexed.set(await self._store.read(unindexed))
        return total

    async def run(self, stop: asyncio.Event) -> None:
        waiting_since: float | None = None  # when entries were first seen waiting since the last catch-up
        while not stop.is_set():
            try:
                waiting = await self._store.read(unindexed)
                self._metrics.provisions_unindexed.set(waiting)
                now = time.monotonic()
                if waiting and waiting_since is None:
                    waiting_since = now
                due = waiting_since is not None and now - waiting_since >= self.max_wait_s
                if waiting >= self.min_entries or due or not self._old_index_dropped:
                    await self.catch_up()
                    waiting_since = None
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a database hiccup: disclosure still scans the tail; retry
                log.error("provision_indexing_failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
