"""The store's writer on SQLite works on one connection of its own: SQLite resets a connection's page cache
and unmaps the database file whenever a transaction begins after another connection wrote, so a writer that
took the next pooled connection per group paid that on nearly every group (jukinet/storage/store.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection

from jukinet.storage import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'node.db'}")
    await store.write(lambda c: c.exec_driver_sql("CREATE TABLE IF NOT EXISTS item (n INTEGER PRIMARY KEY)"))
    try:
        yield store
    finally:
        store.close()


def _insert_and_see(n: int) -> Callable[[Connection], tuple[int, int]]:
    """A write job that also reports the connection it ran on and that connection's data_version."""

    def job(conn: Connection) -> tuple[int, int]:
        conn.exec_driver_sql("INSERT INTO item (n) VALUES (?)", (n,))
        # data_version changes for a connection only when another connection has committed meanwhile
        version = int(conn.exec_driver_sql("PRAGMA data_version").scalar_one())
        return id(conn.connection.dbapi_connection), version

    return job


async def test_the_writer_keeps_its_connection_while_readers_use_the_pool(store: Store) -> None:
    seen: list[tuple[int, int]] = []
    for n in range(12):
        seen.append(await store.write(_insert_and_see(n)))
        # Two readers at once: the pool holds several connections, which used to be handed out in turn.
        counts = await asyncio.gather(
            store.read(lambda c: c.exec_driver_sql("SELECT count(*) FROM item").scalar_one()),
            store.read(lambda c: c.exec_driver_sql("SELECT count(*) FROM item").scalar_one()),
        )
        assert list(counts) == [n + 1, n + 1]
    assert len({connection for connection, _ in seen}) == 1
    assert len({version for _, version in seen}) == 1  # nobody else wrote under the writer: its cache stayed


async def test_a_failed_commit_gives_the_next_group_a_fresh_connection(store: Store) -> None:
    first, _ = await store.write(_insert_and_see(1))

    def close_under_the_writer(conn: Connection) -> None:
        conn.exec_driver_sql("INSERT INTO item (n) VALUES (2)")
        conn.connection.dbapi_connection.close()  # type: ignore[union-attr]  # the commit must now fail

    with pytest.raises(Exception, match="closed"):
        await store.write(close_under_the_writer)
    second, _ = await store.write(_insert_and_see(3))
    assert second != first
    stored = await store.read(lambda c: [n for (n,) in c.exec_driver_sql("SELECT n FROM item ORDER BY n")])
    assert stored == [1, 3]  # the failed group left nothing behind


async def test_jobs_queued_behind_a_running_one_share_the_next_transaction(tmp_path: Path) -> None:
    """Group commit, which the streams' read-ahead relies on: jobs submitted while the writer is busy are
    committed together, in submission order, and the on_group hook sees every transaction's job count."""
    groups: list[int] = []
    store = Store(f"sqlite:///{tmp_path / 'node.db'}", on_group=lambda jobs, seconds: groups.append(jobs))
    release = threading.Event()
    try:
        await store.write(lambda c: c.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, n INTEGER)"))

        def blocking(conn: Connection) -> None:
            release.wait(timeout=10)
            conn.exec_driver_sql("INSERT INTO item (n) VALUES (0)")

        first = store.submit(blocking)
        await asyncio.sleep(0.05)  # the writer is now inside the first job
        queued = [store.submit(_insert_and_see(n)) for n in range(1, 6)]
        release.set()
        await first
        results = await asyncio.gather(*queued)
        assert len({version for _, version in results}) == 1
        stored = await store.read(lambda c: [n for (n,) in c.exec_driver_sql("SELECT n FROM item ORDER BY id")])
        assert stored == [0, 1, 2, 3, 4, 5]
        assert groups == [1, 1, 5]  # the table, the blocking job, then the five queued behind it together
    finally:
        release.set()
        store.close()
