"""LoopBatcher on a real SQLite store: calls within the linger share one transaction run on the event loop,
each caller is answered after its commit, the writer thread takes over while it holds the write lock, and
a failed group fails its own calls only."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from jukinet.observability.metrics import NodeMetrics
from jukinet.storage import Store
from jukinet.storage.batcher import WriteBatcher
from jukinet.storage.group_timing import GroupTiming
from jukinet.storage.loop_batcher import LoopBatcher


class Odd(Exception):
    pass


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'loop.db'}")
    await store.write(lambda c: c.exec_driver_sql("CREATE TABLE IF NOT EXISTS item (n INTEGER PRIMARY KEY)"))
    try:
        yield store
    finally:
        store.close()


class Recorder:
    """Batch and finish functions that insert their items and remember which thread ran each group."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.threads: list[str] = []
        self.finished: list[list[int]] = []
        self.fail_on = fail_on

    def run(self, conn: Connection, items: Sequence[int]) -> list[int | Exception]:
        self.groups.append(list(items))
        self.threads.append(threading.current_thread().name)
        if self.fail_on in items:
            raise RuntimeError("the database refused the group")
        return [Odd(f"{n} is odd") if n % 2 else n * 10 for n in items]

    def finish(self, conn: Connection, items: Sequence[int], results: Sequence[int | Exception]) -> None:
        self.finished.append(list(items))
        conn.execute(text("INSERT INTO item (n) VALUES (:n)"), [{"n": n} for n in items])


def batcher_for(
    store: Store,
    rec: Recorder,
    metrics: NodeMetrics | None = None,
    *,
    linger_s: float,
    **options: float | Callable[[], float],
) -> LoopBatcher[int, int]:
    """A batcher with a fixed linger (no adaptive timing, no early commits): groups the tests can predict."""
    fallback: WriteBatcher[int, int] = WriteBatcher(store, rec.run, finish=rec.finish)
    on_flush = None if metrics is None else metrics.observe_lookup_group
    return LoopBatcher(
        store,
        rec.run,
        finish=rec.finish,
        fallback=fallback,
        timing=GroupTiming(fixed_linger_s=linger_s),
        on_flush=on_flush,
        **options,  # type: ignore[arg-type]
    )


def sample(metrics: NodeMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def stored(store: Store) -> list[int]:
    return await store.read(lambda c: sorted(c.execute(text("SELECT n FROM item")).scalars()))


async def test_calls_within_the_linger_share_one_transaction_on_the_event_loop(store: Store) -> None:
    rec = Recorder()
    metrics = NodeMetrics()
    batcher = batcher_for(store, rec, metrics, linger_s=0.05)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(6)), return_exceptions=True)
    assert rec.groups == [list(range(6))]
    assert rec.threads == [threading.current_thread().name]  # the event loop's thread, not the writer's
    assert [r if isinstance(r, int) else str(r) for r in results] == [0, "1 is odd", 20, "3 is odd", 40, "5 is odd"]
    assert await stored(store) == list(range(6))
    assert batcher.groups == 1
    assert sample(metrics, "jukinet_lookup_transaction_calls_count") == 1
    assert sample(metrics, "jukinet_lookup_transaction_calls_sum") == 6  # six calls in that one transaction
    batcher.close()


async def test_a_caller_is_answered_only_once_its_group_is_committed(store: Store) -> None:
    rec = Recorder()
    batcher = batcher_for(store, rec, linger_s=0.01)
    seen: list[list[int]] = []

    async def call(n: int) -> None:
        await batcher.submit(n)
        seen.append(await stored(store))  # another connection, right after the answer

    await asyncio.gather(call(2), call(4), call(6))
    assert seen == [[2, 4, 6]] * 3
    batcher.close()


async def test_a_lone_caller_switches_to_prompt_groups(store: Store) -> None:
    """A linger that gathers fewer than min_group calls only delayed them: for quiet_s, each call is
    flushed on the next turn of the loop instead of waiting for company."""
    rec = Recorder()
    # cpu_clock standing still: the loop's thread idled between the calls (nobody else was queued)
    batcher = batcher_for(store, rec, linger_s=0.02, min_group=3, quiet_s=60.0, cpu_clock=lambda: 0.0)
    assert await batcher.submit(2) == 20  # alone: the linger ran out with one call
    first = asyncio.ensure_future(batcher.submit(4))
    await asyncio.sleep(0)  # the next turn of the loop flushes it
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.submit(6))
    assert list(await asyncio.gather(first, second)) == [40, 60]
    assert rec.groups == [[2], [4], [6]]
    batcher.close()


async def test_prompt_mode_ends_when_a_flush_finds_company(store: Store) -> None:
    """Under load a lull can leave one call alone in a linger; the first prompt flush that takes min_group
    calls or more switches lingering back on, long before quiet_s."""
    rec = Recorder()
    batcher = batcher_for(store, rec, linger_s=0.02, min_group=2, quiet_s=60.0, cpu_clock=lambda: 0.0)
    assert await batcher.submit(2) == 20  # alone: prompt mode
    assert list(await asyncio.gather(batcher.submit(4), batcher.submit(6))) == [40, 60]  # one prompt flush, two calls
    first = asyncio.ensure_future(batcher.submit(8))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # in prompt mode this turn would have flushed it alone
    second = asyncio.ensure_future(batcher.submit(10))
    assert list(await asyncio.gather(first, second)) == [80, 100]
    assert rec.groups == [[2], [4, 6], [8, 10]]  # the last two lingered together
    batcher.close()


@pytest.mark.parametrize("loop_busy", [True, False])
async def test_prompt_mode_ends_when_the_loop_never_idled_since_the_last_flush(store: Store, loop_busy: bool) -> None:
    """Under load the calls reach the batcher one per turn of the loop, so a prompt flush hardly ever finds
    company. A prompt flush that finds the loop's thread busy ever since the previous flush ended (its CPU
    time kept pace with the wall clock) ends prompt mode: the next calls linger together again. A loop that
    idled in between (a lone caller's round trip) stays prompt."""
    rec = Recorder()
    cpu_clock = time.monotonic if loop_busy else (lambda: 0.0)
    batcher = batcher_for(store, rec, linger_s=0.02, min_group=2, quiet_s=60.0, cpu_clock=cpu_clock)
    assert await batcher.submit(2) == 20  # alone in its linger: prompt mode
    assert await batcher.submit(4) == 40  # a prompt flush of one call
    first = asyncio.ensure_future(batcher.submit(6))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # in prompt mode this turn flushes it alone
    second = asyncio.ensure_future(batcher.submit(8))
    assert list(await asyncio.gather(first, second)) == [60, 80]
    if loop_busy:
        assert rec.groups == [[2], [4], [6, 8]]  # the prompt flush of 4 found the loop busy: lingering again
    else:
        assert rec.groups == [[2], [4], [6], [8]]
    batcher.close()


async def test_a_group_as_large_as_a_recent_lingered_one_commits_without_waiting(store: Store) -> None:
    """Adaptive timing (the default): once as many calls wait as the last group that lingered to its end
    held, the group commits at once; fewer keep lingering. The linger here is a minute, so a group that
    completed did not wait it out."""
    rec = Recorder()
    metrics = NodeMetrics()
    timing = GroupTiming(min_s=60.0, max_s=60.0)
    batcher = LoopBatcher(
        store,
        rec.run,
        finish=rec.finish,
        fallback=WriteBatcher(store, rec.run, finish=rec.finish),
        timing=timing,
        on_flush=metrics.observe_lookup_group,
    )
    first = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 4, 6)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(f.done() for f in first)  # no group measured yet: it lingers
    timing.committed(3, 0.001, now=time.monotonic(), lingered=True)  # as if a group of three had lingered
    last = asyncio.ensure_future(batcher.submit(8))  # the fourth call: more than three wait, commit now
    assert await asyncio.wait_for(asyncio.gather(*first, last), timeout=10) == [20, 40, 60, 80]
    timing.committed(4, 0.001, now=time.monotonic(), lingered=True)
    pair = [asyncio.ensure_future(batcher.submit(n)) for n in (10, 12)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not any(f.done() for f in pair)  # two of four: they linger
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in (14, 16)]
    assert await asyncio.wait_for(asyncio.gather(*pair, *rest), timeout=10) == [100, 120, 140, 160]
    assert rec.groups == [[2, 4, 6, 8], [10, 12, 14, 16]]
    assert sample(metrics, "jukinet_lookup_linger_seconds") == 60.0  # what operators see of the timing
    batcher.close()


async def test_while_the_writer_holds_the_lock_the_group_goes_through_the_writer(store: Store) -> None:
    rec = Recorder()
    metrics = NodeMetrics()
    batcher = batcher_for(store, rec, metrics, linger_s=0.01)
    inside, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        conn.execute(text("INSERT INTO item (n) VALUES (100)"))  # the writer's transaction holds the lock
        inside.set()
        release.wait(10)

    held = asyncio.ensure_future(store.write(hold))
    while not inside.is_set():
        await asyncio.sleep(0.005)
    calls = asyncio.gather(*(batcher.submit(n) for n in (2, 4)))
    await asyncio.sleep(0.1)  # the group found the lock taken and was handed over
    assert not calls.done()
    release.set()
    await held
    assert await calls == [20, 40]
    assert batcher.handed_over == 2
    assert set(rec.threads) == {"db-write"}
    assert await stored(store) == [2, 4, 100]
    assert await batcher.submit(8) == 80  # and the loop takes the next group again
    assert rec.threads[-1] == threading.current_thread().name
    # operators see both: two calls queued behind the writer, one transaction of one call on the loop
    assert sample(metrics, "jukinet_lookups_handed_to_writer_total") == 2
    assert sample(metrics, "jukinet_lookup_transaction_calls_count") == 1
    assert sample(metrics, "jukinet_lookup_transaction_calls_sum") == 1
    batcher.close()


async def test_a_failed_group_fails_its_own_calls_and_rolls_back(store: Store) -> None:
    rec = Recorder(fail_on=13)
    batcher = batcher_for(store, rec, linger_s=0.01)
    doomed = await asyncio.gather(batcher.submit(12), batcher.submit(13), return_exceptions=True)
    assert [str(d) for d in doomed] == ["the database refused the group"] * 2
    assert await batcher.submit(14) == 140
    assert await stored(store) == [14]
    batcher.close()


async def test_callers_who_gave_up_are_left_out_of_the_group(store: Store) -> None:
    rec = Recorder()
    batcher = batcher_for(store, rec, linger_s=0.05)
    gave_up = asyncio.ensure_future(batcher.submit(2))
    stays = asyncio.ensure_future(batcher.submit(4))
    await asyncio.sleep(0)
    gave_up.cancel()
    assert await stays == 40
    assert rec.finished == [[4]]
    assert await stored(store) == [4]
    batcher.close()


async def test_close_commits_what_waits_and_later_calls_use_the_writer(store: Store) -> None:
    rec = Recorder()
    batcher = batcher_for(store, rec, linger_s=60.0)
    waiting = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    batcher.close()
    assert await waiting == 20
    assert await batcher.submit(4) == 40
    assert rec.threads == [threading.current_thread().name, "db-write"]


async def test_readers_never_inherit_the_writers_immediate_begin(store: Store) -> None:
    """The loop's and the writer's connections begin with BEGIN IMMEDIATE and never return to the pool: a
    reader started while the writer holds the lock reads at once (a reader with IMMEDIATE would wait)."""
    rec = Recorder()
    batcher = batcher_for(store, rec, linger_s=0.01)
    assert await batcher.submit(2) == 20
    batcher.close()  # its connection is closed, not handed back to the pool
    inside, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        conn.execute(text("INSERT INTO item (n) VALUES (100)"))
        inside.set()
        release.wait(10)

    held = asyncio.ensure_future(store.write(hold))
    while not inside.is_set():
        await asyncio.sleep(0.005)
    try:
        reads = [await asyncio.wait_for(stored(store), timeout=5) for _ in range(4)]  # every pooled reader
    finally:
        release.set()
        await held
    assert reads == [[2]] * 4


async def test_only_sqlite(tmp_path: Path, database_url: str) -> None:
    """On SQLite it runs; on PostgreSQL (a network round trip per statement on the loop) it refuses."""
    store = Store(database_url)
    rec = Recorder()
    try:
        fallback: WriteBatcher[int, int] = WriteBatcher(store, rec.run, finish=rec.finish)
        if database_url.startswith("postgresql"):
            with pytest.raises(ValueError, match="SQLite"):
                LoopBatcher(store, rec.run, finish=rec.finish, fallback=fallback)
        else:
            await store.write(lambda c: c.exec_driver_sql("CREATE TABLE IF NOT EXISTS item (n INTEGER PRIMARY KEY)"))
            batcher = LoopBatcher(store, rec.run, finish=rec.finish, fallback=fallback)
            assert await batcher.submit(4) == 40
            batcher.close()
    finally:
        store.close()
