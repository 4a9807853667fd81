"""Checks the codes of every applied event behind the relay (jukinet.storage.code_checks)."""

import asyncio
import contextlib
import datetime as dt
from functools import partial

import structlog

from jukinet.observability.metrics import NodeMetrics
from jukinet.storage import Store
from jukinet.storage.code_checks import (
    DEFAULT_BATCH,
    anomaly_counts,
    checked_through,
    find_anomalies,
    newest_event,
    record_anomalies,
    settled_newest_event,
)

log = structlog.get_logger(__name__)


class CodeChecker:
    """Every `interval_s`, checks the events applied since the last run, `batch` events per step: the
    anomalies are found on a reader connection, recorded (with the cursor) in one small writer job."""

    def __init__(
        self, store: Store, metrics: NodeMetrics, *, interval_s: float = 1.0, batch: int = DEFAULT_BATCH
    ) -> None:
        self._store = store
        self._metrics = metrics
        self.interval_s = interval_s
        self.batch = batch

    async def catch_up(self) -> int:
        """Checks every event committed when it starts (what the relay applies meanwhile waits for the next
        round: chasing the tail would check it in many small steps); returns how many new anomalies were
        recorded."""
        recorded = 0
        if self._store.dialect == "sqlite":
            # One writer at a time assigns and commits ids in order: a reader's newest id is settled already.
            # A writer job every second would take the write lock from the agency lookups' group commits.
            target = await self._store.read(newest_event)
        else:
            target = await self._store.write(settled_newest_event)
        while (start := await self._store.read(checked_through)) < target:
            through = min(target, start + self.batch)
            found = await self._store.read(partial(find_anomalies, after_id=start, through_id=through))
            now = dt.datetime.now(dt.UTC)
            new = await self._store.write(partial(record_anomalies, anomalies=found, through_id=through, now=now))
            if new:
                log.warning(
                    "code_anomalies_found",
                    new=new,
                    kinds=sorted({a.kind for a in found}),
                    events=f"{start + 1}..{through}",
                    fix="list them with `jukinet codes anomalies` and reconcile with the municipalities named",
                )
            recorded += new
        for kind, count in (await self._store.read(anomaly_counts)).items():
            self._metrics.code_anomalies.labels(kind).set(count)
        return recorded

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a database hiccup: the cursor did not move; retry next round
                log.error("code_check_failed", error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
