"""Copies a node's SQLite WAL into the database file on a thread of its own, ahead of SQLite's checkpoints.

SQLite's automatic checkpoint runs inside the COMMIT that leaves `wal_autocheckpoint` pages or more in the
WAL: that commit copies every page not yet copied into the database file and fsyncs it before it returns.
Agency lookups commit on the center's event loop (jukinet.storage.loop_batcher), so each such checkpoint
stopped the loop, and every caller in flight with it: a loop transaction timed at 14-18 ms with the database
file written, about every 10 s under concurrency-16 load, against 1-3 ms for the others (bench/provision.py,
1M residents, 2026-12-02). The relay's writer thread paid the same inside its groups.

This checkpointer runs `PRAGMA wal_checkpoint(PASSIVE)` on a connection of its own every `interval_s`, and
every `busy_interval_s` once the WAL holds half of `autocheckpoint_pages`. PASSIVE takes no lock that writers
wait for, and the sqlite3 module releases the GIL while SQLite copies and syncs, so commits on the loop and
the writer thread go on meanwhile. When a commit then reaches `autocheckpoint_pages`, its own checkpoint finds
almost everything copied already: it copies the last few pages, and the next transaction of that connection
starts the WAL from its beginning again.

Why SQLite's automatic checkpoint stays on. Only a connection whose transaction begins after a checkpoint
that copied every frame (and with no reader left on an older snapshot) restarts the WAL; a writer that is
busy all the time begins its next transaction right after its last commit, so a checkpoint from another
connection almost never lands in that gap. With the automatic checkpoint off and this thread alone, the WAL
files never restarted under the relay's steady commits: the municipality's grew past 350 MB in a
200,000-change run, each commit's fsync extending the file (10-15 % fewer changes per second), and a RESTART
checkpoint held the writers off for 5.4 s waiting for the relay sender's back-to-back reads. The commit's own
checkpoint runs in exactly that gap, as it always did; it is only short now."""

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from jukinet.storage.engine import AUTOCHECKPOINT_PAGES

log = structlog.get_logger(__name__)

INTERVAL_S = 0.5
BUSY_INTERVAL_S = 0.02  # once the WAL is half way to the commit's own checkpoint


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    wal_frames: int  # frames in the WAL when the checkpoint ended (small again once it has restarted; 0 if busy)
    copied_frames: int  # of those, how many are now in the database file
    seconds: float
    busy: bool = False  # another connection was checkpointing: nothing was done, the counts are unknown

    @property
    def pending(self) -> int:
        """Frames not yet copied into the database file."""
        return max(0, self.wal_frames - self.copied_frames)


class WalCheckpointer:
    """A daemon thread checkpointing one SQLite database (PASSIVE) until `stop`."""

    def __init__(
        self,
        engine: Engine,
        *,
        interval_s: float = INTERVAL_S,
        busy_interval_s: float = BUSY_INTERVAL_S,
        autocheckpoint_pages: int = AUTOCHECKPOINT_PAGES,
        on_checkpoint: Callable[[CheckpointResult], None] | None = None,
    ) -> None:
        if engine.dialect.name != "sqlite":
            raise ValueError("WalCheckpointer checkpoints SQLite WAL files; PostgreSQL checkpoints itself")
        self._engine = engine
        self.interval_s = interval_s
        self.busy_interval_s = busy_interval_s
        self.busy_from_frames = max(1, autocheckpoint_pages // 2)
        self._on_checkpoint = on_checkpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-checkpoint", daemon=True)
        self._proxied: PoolProxiedConnection | None = None
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one checkpoint at a time: the thread's, or checkpoint_now's

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        with self._lock:
            self._connect()  # now, while a relative database path means what it meant to the engine's caller
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._drop_connection()

    def checkpoint_now(self) -> CheckpointResult:
        """One PASSIVE checkpoint, on the calling thread. `busy`: another connection was checkpointing (a
        commit's own automatic checkpoint), so this one did nothing; it is not reported to `on_checkpoint`."""
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("this WalCheckpointer was stopped")
            started = time.perf_counter()
            busy, frames, copied = self._connect().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            result = CheckpointResult(
                max(0, int(frames)), max(0, int(copied)), time.perf_counter() - started, busy=bool(busy)
            )
            if self._on_checkpoint is not None and not result.busy:
                try:
                    self._on_checkpoint(result)  # under the lock: reports arrive in the order they were taken
                except Exception as error:  # a metrics hook must never stop checkpoints
                    log.warning("wal_checkpoint_hook_failed", error=repr(error))
        return result

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            proxied = self._engine.raw_connection()  # the engine's pragmas (jukinet.storage.engine) included
            proxied.detach()  # its own for good: never back into the pool; close() closes it
            connection = proxied.dbapi_connection
            if not isinstance(connection, sqlite3.Connection):
                proxied.close()
                raise TypeError(f"expected a sqlite3 connection, got {type(connection).__name__}")
            self._proxied, self._connection = proxied, connection
        return self._connection

    def _run(self) -> None:
        failing = False
        wait = self.interval_s
        while not self._stop.wait(wait):
            try:
                done = self.checkpoint_now()
            except Exception as error:  # a damaged file, a full disk: say so once, keep trying
                if self._stop.is_set():
                    return
                if not failing:
                    log.error("wal_checkpoint_failed", error=repr(error))
                failing = True
                self._drop_connection()
                wait = self.interval_s
                continue
            large = done.busy or done.wal_frames >= self.busy_from_frames  # busy: a commit is checkpointing
            wait = self.busy_interval_s if large else self.interval_s
            if failing:
                log.info("wal_checkpoint_recovered")
                failing = False

    def _drop_connection(self) -> None:
        with self._lock:
            proxied, self._proxied, self._connection = self._proxied, None, None
        if proxied is not None:
            try:
                proxied.close()
            except Exception as error:  # already broken: nothing more to release
                log.warning("wal_checkpoint_connection_close_failed", error=repr(error))
