"""The change feed's two reads (CenterTx.events_after_id, CenterTx.feed_items) and history's events_of bring
every event back exactly as stored, in order, with the right keys and limits. On SQLite they read their rows
packed in one JSON value (CenterTx._packed, SqlTx.events_of); the expected values here come from plain
SQLAlchemy queries, so the test holds the packed path to the driver's own rows. Run on SQLite and
PostgreSQL."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, select

from jukinet.codes import resident_code_from_body
from jukinet.domain.model import ChangeEvent, EventRow
from jukinet.storage import rows
from jukinet.storage.center_tx import CenterTx
from jukinet.storage.schema import event
from tests.helpers.center_db import AWKWARD_TEXT, rolled_back

CODES = [resident_code_from_body(f"{n:010d}") for n in range(300, 340)]


def _event_rows(texts: list[str], recorded: list[int], count: int) -> list[EventRow]:
    found: list[EventRow] = []
    for seq in range(1, count + 1):
        name, alias, address = texts[seq % len(texts)], texts[(seq + 1) % len(texts)], texts[(seq + 2) % len(texts)]
        code_change = seq % 5 == 0
        found.append(
            EventRow(
                "132080",
                seq,
                CODES[seq % len(CODES)],
                CODES[(seq + 1) % len(CODES)] if code_change else "",
                10 if code_change else 5,
                "2021-03-04",
                recorded[seq % len(recorded)],
                name,
                alias,
                "1979-12-31",
                1 + seq % 2,
                address,
            )
        )
    return found


def _stored(conn: Connection, after_id: int) -> list[tuple[int, ChangeEvent]]:
    """What the driver's own rows say, through SQLAlchemy."""
    query = select(event).where(event.c.id > after_id).order_by(event.c.id)
    return [(int(row.id), rows.event_from(row)) for row in conn.execute(query)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(AWKWARD_TEXT, min_size=3, max_size=5),
    recorded=st.lists(st.integers(0, 2**53), min_size=1, max_size=3),
    count=st.integers(0, 12),
    limit=st.integers(1, 15),
    data=st.data(),
)
def test_events_after_an_id_come_back_exactly_and_in_order(
    engine: Engine, texts: list[str], recorded: list[int], count: int, limit: int, data: st.DataObject
) -> None:
    with rolled_back(engine) as conn:
        tx = CenterTx(conn)
        tx.insert_event_rows(_event_rows(texts, recorded, count))
        everything = _stored(conn, 0)
        after = data.draw(st.sampled_from([0, *(event_id for event_id, _ in everything)]), label="after")
        found = tx.events_after_id(after, limit)
    expected = [(event_id, e) for event_id, e in everything if event_id > after][:limit]
    assert found == expected
    assert [event_id for event_id, _ in found] == sorted(event_id for event_id, _ in found)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(AWKWARD_TEXT, min_size=3, max_size=5),
    count=st.integers(1, 12),
    after_seq=st.integers(0, 12),
    limit=st.integers(1, 15),
)
def test_numbered_feed_items_come_back_with_their_events_in_feed_order(
    engine: Engine, texts: list[str], count: int, after_seq: int, limit: int
) -> None:
    with rolled_back(engine) as conn:
        tx = CenterTx(conn)
        tx.insert_event_rows(_event_rows(texts, [1_700_000_000_000_000], count))
        everything = _stored(conn, 0)
        # Feed order differs from storage order (newest event first), so sorting by event id would show.
        numbered = [(seq, event_id) for seq, (event_id, _) in enumerate(reversed(everything), start=1)]
        tx.add_feed_items("pension", "check", numbered)
        tx.add_feed_items("other", "check", [(1, everything[0][0])])  # another subscriber's item
        found = tx.feed_items("pension", "check", after_seq, limit)
    by_id = dict(everything)
    expected = [(seq, by_id[event_id]) for seq, event_id in numbered if seq > after_seq][:limit]
    assert found == expected


def test_an_empty_feed_reads_nothing(engine: Engine) -> None:
    with rolled_back(engine) as conn:
        tx = CenterTx(conn)
        assert tx.events_after_id(0, 500) == []
        assert tx.feed_items("pension", "check", 0, 500) == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(AWKWARD_TEXT, min_size=3, max_size=5),
    recorded=st.lists(st.integers(0, 2**53), min_size=1, max_size=4),
    count=st.integers(0, 12),
    asked=st.lists(st.sampled_from(CODES), max_size=8, unique=True),
)
def test_the_events_of_some_codes_come_back_exactly_oldest_first(
    engine: Engine, texts: list[str], recorded: list[int], count: int, asked: list[str]
) -> None:
    """SqlTx.events_of (history lookups) packs each chunk's rows on SQLite too."""
    with rolled_back(engine) as conn:
        tx = CenterTx(conn)
        tx.insert_event_rows(_event_rows(texts, recorded, count))
        everything = [e for _, e in _stored(conn, 0)]
        found = tx.events_of(asked)
    expected = sorted((e for e in everything if e.resident_code in asked), key=lambda e: (e.recorded_at, e.seq))
    assert found == expected
