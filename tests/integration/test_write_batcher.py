"""WriteBatcher on a real store (SQLite and PostgreSQL): items submitted together share one job, each
caller gets its own result or its own error, and a failed job fails only its own items."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import pytest
from sqlalchemy import Connection, text

from jukinet.storage import Store
from jukinet.storage.batcher import WriteBatcher


class Odd(Exception):
    pass


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    store = Store(database_url)
    await store.write(lambda c: c.exec_driver_sql("CREATE TABLE IF NOT EXISTS item (n INTEGER PRIMARY KEY)"))
    try:
        yield store
    finally:
        store.close()


def _hold_writer(store: Store) -> tuple[threading.Event, asyncio.Future[None]]:
    """Occupies the writer thread until the returned event is set."""
    release = threading.Event()
    held = asyncio.ensure_future(store.write(lambda c: release.wait(10)))
    return release, held  # type: ignore[return-value]


async def test_items_submitted_together_share_one_job_and_get_their_own_results(store: Store) -> None:
    jobs: list[list[int]] = []

    def run(conn: Connection, items: Sequence[int]) -> list[int | Exception]:
        jobs.append(list(items))
        conn.execute(text("INSERT INTO item (n) VALUES (:n)"), [{"n": n} for n in items])
        return [Odd(f"{n} is odd") if n % 2 else n * 10 for n in items]

    batcher: WriteBatcher[int, int] = WriteBatcher(store, run)
    release, held = _hold_writer(store)
    calls = [asyncio.ensure_future(batcher.submit(n)) for n in range(8)]
    await asyncio.sleep(0.05)  # every submit is queued behind the held writer
    release.set()
    await held
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert jobs == [list(range(8))]
    assert [r if isinstance(r, int) else str(r) for r in results] == [
        0, "1 is odd", 20, "3 is odd", 40, "5 is odd", 60, "7 is odd"
    ]  # fmt: skip
    stored = await store.read(lambda c: sorted(c.execute(text("SELECT n FROM item")).scalars()))
    assert stored == list(range(8))


async def test_a_failing_job_fails_its_own_items_only_and_the_next_job_runs(store: Store) -> None:
    def run(conn: Connection, items: Sequence[int]) -> list[int | Exception]:
        conn.execute(text("INSERT INTO item (n) VALUES (:n)"), [{"n": n} for n in items])
        if 13 in items:
            raise RuntimeError("the database refused the batch")
        return list(items)

    batcher: WriteBatcher[int, int] = WriteBatcher(store, run)
    release, held = _hold_writer(store)
    doomed = [asyncio.ensure_future(batcher.submit(n)) for n in (12, 13)]
    await asyncio.sleep(0.05)
    release.set()
    await held
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert [str(o) for o in outcomes] == ["the database refused the batch"] * 2
    assert await batcher.submit(14) == 14
    stored = await store.read(lambda c: sorted(c.execute(text("SELECT n FROM item")).scalars()))
    assert stored == [14]  # the failed job's inserts were rolled back with it


async def test_a_cancelled_caller_does_not_stop_the_others(store: Store) -> None:
    batcher: WriteBatcher[int, int] = WriteBatcher(store, lambda conn, items: [n + 1 for n in items])
    release, held = _hold_writer(store)
    first = asyncio.ensure_future(batcher.submit(1))  # this caller's task queued the job
    second = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.05)
    first.cancel()
    release.set()
    await held
    assert await second == 3
    assert first.cancelled()


async def test_more_items_than_one_job_holds_are_split_across_jobs(store: Store) -> None:
    sizes: list[int] = []

    def run(conn: Connection, items: Sequence[int]) -> list[int | Exception]:
        sizes.append(len(items))
        return list(items)

    batcher: WriteBatcher[int, int] = WriteBatcher(store, run, max_items=4)
    release, held = _hold_writer(store)
    calls = [asyncio.ensure_future(batcher.submit(n)) for n in range(10)]
    await asyncio.sleep(0.05)
    release.set()
    await held
    assert await asyncio.gather(*calls) == list(range(10))
    assert sizes == [4, 4, 2]


async def test_items_arriving_while_a_job_runs_join_its_transaction(store: Store) -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[tuple[object, list[int]]] = []

    def run(conn: Connection, items: Sequence[int]) -> list[int | Exception]:
        runs.append((conn.get_transaction(), list(items)))
        if len(runs) == 1:
            started.set()
            release.wait(10)
        return list(items)

    batcher: WriteBatcher[int, int] = WriteBatcher(store, run)
    first = asyncio.ensure_future(batcher.submit(0))
    while not started.is_set():
        await asyncio.sleep(0.005)
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)  # submitted while the job is still running its first item
    release.set()
    assert [await first, *await asyncio.gather(*later)] == [0, 1, 2, 3]
    assert [items for _, items in runs] == [[0], [1, 2, 3]]
    assert runs[0][0] is runs[1][0]  # one transaction, one commit


async def test_finish_runs_once_per_job_over_every_take_in_the_same_transaction(store: Store) -> None:
    """Items arriving while a job runs join it as a second take; `finish` then sees every item and result of
    the job once, and a failing `finish` fails the whole job, its reads' results included."""
    takes: list[list[int]] = []
    finished: list[tuple[list[int], list[object]]] = []
    late: list[asyncio.Future[int]] = []
    loop = asyncio.get_running_loop()

    def run(conn: Connection, items: Sequence[int]) -> list[int | Exception]:
        takes.append(list(items))
        if len(takes) == 1:  # while the first take runs, two more callers arrive
            ready = threading.Event()

            def submit_more() -> None:
                late.extend(asyncio.ensure_future(batcher.submit(n)) for n in (3, 4))
                loop.call_soon(ready.set)  # after both submits have run up to their wait

            loop.call_soon_threadsafe(submit_more)
            ready.wait(5)
        return [Odd("odd") if n % 2 else n for n in items]

    def finish(conn: Connection, items: Sequence[int], results: Sequence[int | Exception]) -> None:
        finished.append((list(items), [r if isinstance(r, int) else str(r) for r in results]))
        conn.execute(text("INSERT INTO item (n) VALUES (:n)"), [{"n": n} for n in items])
        if 99 in items:
            raise RuntimeError("the log refused the job")

    batcher: WriteBatcher[int, int] = WriteBatcher(store, run, finish=finish)
    first = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2)]
    results = await asyncio.gather(*first, return_exceptions=True)
    results += await asyncio.gather(*late, return_exceptions=True)
    assert takes == [[1, 2], [3, 4]]
    assert finished == [([1, 2, 3, 4], ["odd", 2, "odd", 4])]
    assert [r if isinstance(r, int) else str(r) for r in results] == ["odd", 2, "odd", 4]
    doomed = await asyncio.gather(batcher.submit(98), batcher.submit(99), return_exceptions=True)
    assert [str(d) for d in doomed] == ["the log refused the job"] * 2
    stored = await store.read(lambda c: sorted(c.execute(text("SELECT n FROM item")).scalars()))
    assert stored == [1, 2, 3, 4]  # finish's writes committed with their job; the failed job's rolled back


async def test_a_failed_job_without_savepoint_fails_its_whole_group(store: Store) -> None:
    """A job that runs without a SAVEPOINT (isolated=False) has nothing to roll back to: on PostgreSQL its
    failed statement aborts the whole transaction, whose COMMIT then rolls back without an error. So the
    group fails as a whole: no job of it is reported durable (before, the other job's caller got OK)."""
    release, held = _hold_writer(store)
    await asyncio.sleep(0.05)  # the writer runs the holding job alone
    committed = asyncio.ensure_future(
        store.write(lambda c: c.execute(text("INSERT INTO item (n) VALUES (1)")).rowcount)
    )
    failing = asyncio.ensure_future(
        store.write(lambda c: c.execute(text("SELECT n FROM no_such_table")).scalar(), isolated=False)
    )
    await asyncio.sleep(0.05)  # both queued behind the held writer: one group
    release.set()
    await held
    outcomes = await asyncio.gather(committed, failing, return_exceptions=True)
    assert all(isinstance(o, Exception) for o in outcomes), outcomes
    assert str(outcomes[0]) == str(outcomes[1])  # the failing job's error, for both
    assert await store.read(lambda c: c.execute(text("SELECT count(*) FROM item")).scalar()) == 0
    assert await store.write(lambda c: c.execute(text("INSERT INTO item (n) VALUES (2)")).rowcount) == 1


async def test_finish_leaves_out_callers_who_gave_up_before_it_ran(store: Store) -> None:
    """A caller cancelled (a deadline) while its item waits is not logged by `finish`: it will get nothing."""
    finished: list[list[int]] = []
    batcher: WriteBatcher[int, int] = WriteBatcher(
        store, lambda conn, items: list(items), finish=lambda conn, items, results: finished.append(list(items))
    )
    release, held = _hold_writer(store)
    await asyncio.sleep(0.05)
    calls = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)
    calls[1].cancel()
    release.set()
    await held
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert outcomes[2] == 3
    assert finished == [[1, 3]]
