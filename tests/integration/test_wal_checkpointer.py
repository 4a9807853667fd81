"""A Store copies its SQLite WAL into the database file on a thread of its own, ahead of the commit that
checkpoints it (jukinet/storage/wal_checkpointer.py): that commit's checkpoint then has almost nothing left
to copy, and the WAL still restarts under steady commits and reads."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection

from jukinet.storage import Store
from jukinet.storage.engine import make_engine
from jukinet.storage.wal_checkpointer import CheckpointResult, WalCheckpointer

PAGE_FILLER = "x" * 3000  # most of a 4 KiB page per row (a one-row commit writes about 3 WAL frames)
PAGE_BYTES = 4096 + 24  # a WAL frame


def _fill(first: int, rows: int) -> Callable[[Connection], None]:
    def job(conn: Connection) -> None:
        conn.exec_driver_sql(
            "INSERT INTO filler (n, t) VALUES (?, ?)", [(n, PAGE_FILLER) for n in range(first, first + rows)]
        )

    return job


def _create(conn: Connection) -> None:
    conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (n INTEGER PRIMARY KEY, t TEXT)")


def _count(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SELECT count(*) FROM filler").scalar_one())


def test_a_checkpoint_copies_what_commits_left_in_the_wal(tmp_path: Path) -> None:
    """With the automatic checkpoint out of reach (10,000 pages), 300 one-page commits stay in the WAL until
    the checkpointer copies them all; the next commit then starts the WAL from its beginning again."""
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    checkpointer = WalCheckpointer(engine)  # not started: checkpoints only when asked
    try:
        with engine.connect() as conn:
            _create(conn)
            conn.commit()
            for n in range(300):
                conn.exec_driver_sql("INSERT INTO filler (n, t) VALUES (?, ?)", (n, PAGE_FILLER))
                conn.commit()
        full = checkpointer.checkpoint_now()
        assert full.wal_frames >= 300
        assert full.copied_frames == full.wal_frames
        assert full.pending == 0
        with engine.connect() as conn:
            conn.exec_driver_sql("INSERT INTO filler (n, t) VALUES (?, ?)", (5000, PAGE_FILLER))
            conn.commit()
        after = checkpointer.checkpoint_now()
        assert 0 < after.wal_frames < 10  # restarted: only the last commit's frames
        with engine.connect() as conn:
            assert _count(conn) == 301
    finally:
        checkpointer.stop()
        engine.dispose()


async def test_the_thread_copies_ahead_while_writes_go_on(tmp_path: Path) -> None:
    seen: list[CheckpointResult] = []
    threads: set[str] = set()

    def on_checkpoint(result: CheckpointResult) -> None:
        seen.append(result)
        threads.add(threading.current_thread().name)

    store = Store(f"sqlite:///{tmp_path / 'node.db'}", on_checkpoint=on_checkpoint)
    try:
        assert store.checkpointer is not None
        store.checkpointer.interval_s = 0.05
        await store.write(_create)
        for batch in range(30):
            await store.write(_fill(batch * 20, 20))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 10
        while not any(r.copied_frames > 0 and r.pending == 0 for r in seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert any(r.copied_frames > 0 and r.pending == 0 for r in seen), seen[-5:]
        assert threads == {"db-checkpoint"}
        assert await store.read(_count) == 600
    finally:
        store.close()
    assert store.checkpointer is not None
    assert not store.checkpointer.running
    with pytest.raises(RuntimeError, match="stopped"):
        store.checkpointer.checkpoint_now()  # no connection is opened again after stop


async def test_the_wal_stays_bounded_under_steady_commits_and_reads(tmp_path: Path) -> None:
    """The relay's shape: a writer committing back to back while a reader reads back to back. The WAL must
    keep restarting; with the commits' own checkpoints turned off and only the thread checkpointing, it never
    did (each checkpoint landed while the writer was inside a transaction) and grew without end: about 4,500
    frames here (18.7 MB), against 230-900 with the commits' own checkpoints every 200 pages (a restart also
    waits for the reader, so the peak varies)."""
    path = tmp_path / "node.db"
    store = Store(f"sqlite:///{path}", autocheckpoint_pages=200)
    stop = threading.Event()
    largest = 0

    def read_back_to_back() -> None:
        while not stop.is_set():
            store.read_sync(_count)

    def watch_the_wal() -> None:
        nonlocal largest
        wal = Path(f"{path}-wal")
        while not stop.is_set():
            if wal.exists():
                largest = max(largest, wal.stat().st_size)
            time.sleep(0.005)

    await store.write(_create)
    workers = [threading.Thread(target=read_back_to_back), threading.Thread(target=watch_the_wal)]
    for worker in workers:
        worker.start()
    try:
        for n in range(1500):
            await store.write(_fill(n, 1))
        assert await store.read(_count) == 1500
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        store.close()
    assert 0 < largest < 2000 * PAGE_BYTES, f"the WAL grew to {largest:,} bytes"


def test_a_checkpoint_that_finds_another_one_running_says_so(tmp_path: Path) -> None:
    """While another connection checkpoints (a commit's own automatic checkpoint), PASSIVE answers busy
    (1, -1, -1): that means "unknown", not "nothing pending", and it is not reported to the metrics."""
    path = tmp_path / "node.db"
    engine = make_engine(f"sqlite:///{path}")
    reported: list[CheckpointResult] = []
    checkpointer = WalCheckpointer(engine, on_checkpoint=reported.append)
    writer = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
    try:
        with engine.connect() as conn:
            _create(conn)
            conn.commit()
            _fill(0, 20)(conn)
            conn.commit()
        # A FULL checkpoint takes the checkpoint lock, then waits for the write lock: held here, so the
        # other connection sits inside its checkpoint until the writer commits.
        writer.execute("BEGIN IMMEDIATE")
        done = None
        for _attempt in range(5):
            running = threading.Thread(target=lambda: other.execute("PRAGMA wal_checkpoint(FULL)").fetchall())
            running.start()
            while running.is_alive():  # it holds the checkpoint lock while it waits (10 s busy timeout)
                time.sleep(0.05)
                done = checkpointer.checkpoint_now()
                if done.busy:
                    break
            if done is not None and done.busy:
                break
            running.join()  # ours took the lock first and the other one gave up at once: again
        writer.execute("COMMIT")
        running.join()
        assert done is not None
        assert done.busy
        assert (done.wal_frames, done.copied_frames) == (0, 0)
        assert not any(r.busy for r in reported)
        settled = checkpointer.checkpoint_now()
        assert not settled.busy
        assert reported[-1] == settled
    finally:
        writer.close()
        other.close()
        checkpointer.stop()
        engine.dispose()


async def test_a_failing_hook_does_not_stop_checkpoints(tmp_path: Path) -> None:
    calls = 0

    def broken(_result: CheckpointResult) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("metrics are down")

    store = Store(f"sqlite:///{tmp_path / 'node.db'}", on_checkpoint=broken)
    try:
        assert store.checkpointer is not None
        store.checkpointer.interval_s = 0.02
        await store.write(_create)
        deadline = time.monotonic() + 10
        while calls < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert calls >= 3
        done = store.checkpointer.checkpoint_now()  # still works when asked directly
        assert not done.busy
        assert done.pending == 0
    finally:
        store.close()


def test_only_sqlite_stores_have_a_wal_checkpointer(database_url: str) -> None:
    store = Store(database_url)
    try:
        if store.dialect == "sqlite":
            assert store.checkpointer is not None
        else:
            assert store.checkpointer is None
            with pytest.raises(ValueError, match="SQLite"):
                WalCheckpointer(store.engine)
    finally:
        store.close()
