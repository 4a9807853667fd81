"""Keeps the provision log's by-resident index close behind the log (jukinet.storage.provision_index)."""

import asyncio
import contextlib

import structlog

from jukinet.observability.metrics import NodeMetrics
from jukinet.storage import Store
from jukinet.storage.provision_index import DEFAULT_BATCH, DROP_PER_ENTRY_INDEX, index_provisions, unindexed

log = structlog.get_logger(__name__)


class ProvisionIndexer:
    """Every `interval_s`, indexes what the log gained, `batch` entries per writer job (a job holds the
    writer, so a backlog is worked off in several, and answers waiting for a commit wait at most one)."""

    def __init__(
        self, store: Store, metrics: NodeMetrics, *, interval_s: float = 1.0, batch: int = DEFAULT_BATCH
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.interval_s = interval_s
        self.batch = batch
        self._old_index_dropped = False

    async def catch_up(self) -> int:
        """Indexes everything committed so far; returns how many entries."""
        total = 0
        caught_up = False
        while not caught_up:
            indexed, caught_up = await self._store.write(lambda conn: index_provisions(conn, self.batch))
            total += indexed
        if not self._old_index_dropped:
            # A database from before this index: its per-entry index served disclosure until the backfill
            # above caught up; from now on it only costs.
            await self._store.write(lambda conn: conn.exec_driver_sql(DROP_PER_ENTRY_INDEX))
            self._old_index_dropped = True
        self._metrics.provisions_unindexed.set(await self._store.read(unindexed))
        return total

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a database hiccup: disclosure still scans the tail; retry
                log.error("provision_indexing_failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
