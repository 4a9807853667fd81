"""The provision log's by-resident index, filled behind the log: a disclosure page is the same whether
its entries are indexed, still in the unindexed tail, or split across the cursor (SQLite and PostgreSQL)."""

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, inspect, select

from center.provision_indexer import ProvisionIndexer
from jukinet.observability.metrics import NodeMetrics
from jukinet.services.ports import ProvisionEntry
from jukinet.storage import SqlTx, Store, make_engine, provision_index
from jukinet.storage.provision_index import index_provisions, indexed_through, unindexed
from jukinet.storage.provision_queries import provision_page
from jukinet.storage.schema import provision_by_resident

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CODES = ("A0000000001", "B0000000002", "C0000000003")
ENTRIES = [
    ProvisionEntry(T0 + dt.timedelta(minutes=i), f"r{i}", "pension", "pension-benefit", CODES[i * 7 % 3], ("name",))
    for i in range(30)
]
Query = tuple[tuple[str, ...], dt.datetime | None, dt.datetime | None, int, int]
MANY_CODES = tuple(f"X{n:010d}" for n in range(200))  # a resident with far more codes than anyone has
QUERIES: list[Query] = [  # (codes, since, until, after_id, limit)
    (CODES[:1], None, None, 0, 100),
    ((*MANY_CODES, CODES[2]), None, None, 0, 100),
    (CODES[:2], None, None, 0, 100),
    (CODES, T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(minutes=21), 0, 100),
    (CODES[1:], None, None, 9, 4),
    (CODES, None, None, 12, 5),
]


def _expected(query: Query) -> list[tuple[int, str]]:
    codes, since, until, after, limit = query
    found = [
        (i, e.request_id)
        for i, e in enumerate(ENTRIES, start=1)
        if e.resident_code in codes
        and i > after
        and (since is None or since <= e.at)
        and (until is None or e.at < until)
    ]
    return found[:limit]


def _pages(engine: Engine) -> list[list[tuple[int, str]]]:
    pages = []
    with engine.begin() as conn:
        for codes, since, until, after, limit in QUERIES:
            page = provision_page(conn, codes, since=since, until=until, after_id=after, limit=limit)
            pages.append([(i, e.request_id) for i, e in page])
    return pages


def test_a_page_is_the_same_before_during_and_after_indexing(db_factory: Callable[[str], str]) -> None:
    engine = make_engine(db_factory("center"))
    with engine.begin() as conn:
        SqlTx(conn).append_provisions(ENTRIES)
    expected = [_expected(q) for q in QUERIES]
    assert _pages(engine) == expected  # nothing indexed: all from the tail
    for step in (7, 8, 15):  # the cursor at 7, 15, then 30
        with engine.begin() as conn:
            index_provisions(conn, step)
        assert _pages(engine) == expected
    with engine.begin() as conn:
        assert indexed_through(conn) == 30
        assert unindexed(conn) == 0
        assert index_provisions(conn, 100) == (0, True)  # caught up: nothing copied twice
        assert conn.execute(select(func.count()).select_from(provision_by_resident)).scalar() == 30
    engine.dispose()


def test_pages_stay_the_same_across_segment_boundaries_and_a_cursor_that_moves_on(
    db_factory: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments of 4 entries: the 30 entries span eight, batches cross their ends, and a page whose reader
    saw the cursor in an earlier segment than the one it has reached meanwhile still finds every entry once."""
    monkeypatch.setattr(provision_index, "PROVISION_SEGMENT", 4)
    engine = make_engine(db_factory("center"))
    with engine.begin() as conn:
        SqlTx(conn).append_provisions(ENTRIES)
    expected = [_expected(q) for q in QUERIES]
    for step in (3, 6, 5, 9, 7):  # the cursor at 3, 9, 14, 23, then 30
        with engine.begin() as conn:
            index_provisions(conn, step)
        assert _pages(engine) == expected
    with engine.begin() as conn:
        segments = conn.execute(select(provision_by_resident.c.segment, provision_by_resident.c.provision_id)).all()
        assert sorted(segments) == [(i // 4, i) for i in range(1, 31)]
    # A reader that read the cursor in segment 1 (id 5) while it has reached 30 since: stale by six segments.
    monkeypatch.setattr(provision_index, "indexed_through", lambda conn: 5)
    assert _pages(engine) == expected
    engine.dispose()


async def test_a_center_indexes_behind_the_log_and_drops_the_older_indexes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'center.db'}")
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("CREATE INDEX ix_provision_log_resident_code ON provision_log (resident_code)")
            conn.exec_driver_sql(  # the unsegmented index of the eleventh to thirteenth sessions
                "CREATE TABLE provision_key (resident_code VARCHAR(11), provision_id BIGINT, "
                "PRIMARY KEY (resident_code, provision_id)) WITHOUT ROWID"
            )
            conn.exec_driver_sql("CREATE TABLE provision_key_cursor (id SMALLINT PRIMARY KEY, indexed_through BIGINT)")
        metrics = NodeMetrics()
        indexer = ProvisionIndexer(store, metrics, interval_s=0.05, batch=4)
        await store.write(lambda conn: SqlTx(conn).append_provisions(ENTRIES[:10]))
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("provision_log")}
        assert "ix_provision_log_resident_code" in indexes  # serves disclosure until the backfill is done
        stop = asyncio.Event()
        task = asyncio.create_task(indexer.run(stop))
        try:
            for _ in range(200):
                if await store.read(indexed_through) == 10:
                    break
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await task
        assert await store.read(indexed_through) == 10  # three jobs of at most 4
        indexes = {i["name"] for i in inspect(store.engine).get_indexes("provision_log")}
        assert "ix_provision_log_resident_code" not in indexes  # dropped once the backfill caught up
        tables = set(inspect(store.engine).get_table_names())
        assert {"provision_key", "provision_key_cursor"}.isdisjoint(tables)
        assert {"provision_by_resident", "provision_by_resident_cursor"} <= tables
        assert metrics.provisions_unindexed._value.get() == 0
        assert await indexer.catch_up() == 0
    finally:
        store.close()


async def test_the_indexer_waits_for_a_large_batch_or_for_the_oldest_entry_to_wait_long_enough(
    tmp_path: Path,
) -> None:
    """Indexing jobs hold the writer, so the center indexes seldom and in bulk: a few entries wait (and are
    still found by disclosure through the tail scan) until enough have gathered or the oldest is old."""
    store = Store(f"sqlite:///{tmp_path / 'center.db'}")
    metrics = NodeMetrics()
    try:
        patient = ProvisionIndexer(store, metrics, interval_s=0.01, min_entries=5, max_wait_s=3600)

        async def run_a_while(indexer: ProvisionIndexer, rounds: int = 10) -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(indexer.run(stop))
            for _ in range(rounds):
                await asyncio.sleep(indexer.interval_s * 2)
            stop.set()
            await task

        await run_a_while(patient)  # the first round drops the old per-entry index (none here)
        await store.write(lambda conn: SqlTx(conn).append_provisions(ENTRIES[:3]))
        await run_a_while(patient)
        assert await store.read(indexed_through) == 0  # 3 < 5 and the oldest has not waited an hour
        assert metrics.provisions_unindexed._value.get() == 3
        with store.engine.begin() as conn:  # found all the same, from the tail
            assert [e.request_id for _, e in provision_page(conn, CODES, after_id=0, limit=10)] == ["r0", "r1", "r2"]
        await store.write(lambda conn: SqlTx(conn).append_provisions(ENTRIES[3:6]))
        await run_a_while(patient)
        assert await store.read(indexed_through) == 6  # 6 >= 5: indexed without waiting
        await store.write(lambda conn: SqlTx(conn).append_provisions(ENTRIES[6:7]))
        await run_a_while(ProvisionIndexer(store, metrics, interval_s=0.01, min_entries=5, max_wait_s=0))
        assert await store.read(indexed_through) == 7  # one entry, but it has waited long enough
    finally:
        store.close()


def test_indexing_stops_at_the_entry_it_was_asked_to_reach(db_factory: Callable[[str], str]) -> None:
    """A catch-up indexes what was committed when it started; entries appended meanwhile wait for the next
    one (chasing a busy log's tail would index it in many small jobs)."""
    engine = make_engine(db_factory("center"))
    with engine.begin() as conn:
        SqlTx(conn).append_provisions(ENTRIES)
        assert index_provisions(conn, 5, upto=12) == (5, False)
        assert index_provisions(conn, 100, upto=12) == (7, True)
        assert indexed_through(conn) == 12
        assert index_provisions(conn, 100, upto=12) == (0, True)
        assert index_provisions(conn, 100) == (18, True)
    engine.dispose()
