"""The center's SQL transaction: the relay ports plus search keys, provision reads and the change feed."""

import json
from collections.abc import Sequence
from operator import itemgetter
from typing import Final

from sqlalchemy import insert, select

from jukinet.domain.model import ChangeEvent, RegistrationRow
from jukinet.domain.normalize import search_key
from jukinet.storage import rows
from jukinet.storage.cursors import newest_id
from jukinet.storage.schema import event, feed_item, feed_subscription, registration
from jukinet.storage.sql_tx import SqlTx, _insert_sql

_KEYED_COLUMNS = (*rows.REGISTRATION_COLUMNS, "name_key", "address_key")
_UPSERT_KEYED_REGISTRATION = _insert_sql("registration", _KEYED_COLUMNS) + (
    " ON CONFLICT (resident_code, municipality) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _KEYED_COLUMNS[2:])
)
_NAME: Final = 8  # positions in REGISTRATION_COLUMNS (tests/unit/test_event_rows.py checks them)
_ADDRESS: Final = 12
_INSERT_FEED_ITEM = _insert_sql("feed_item", ("agency", "purpose", "seq", "event_id"))
# The change feed's reads on SQLite, packed into one JSON value each (see _packed): (event id, columns…) and
# (feed seq, columns…) per row. A JSON array's order is not promised, so the rows are sorted after decoding.
_EVENT_VALUES = ", ".join(f"e.{c}" for c in rows.EVENT_COLUMNS)
_EVENTS_AFTER_PACKED = (
    "SELECT json_group_array(json_array(e.id, " + _EVENT_VALUES + ")) FROM "  # noqa: S608 - constant names
    "(SELECT * FROM event WHERE id > ? ORDER BY id LIMIT ?) AS e"
)
_FEED_ITEMS_PACKED = (
    "SELECT json_group_array(json_array(f.seq, " + _EVENT_VALUES + ")) FROM "  # noqa: S608 - constant names
    "(SELECT seq, event_id FROM feed_item WHERE agency = ? AND purpose = ? AND seq > ? ORDER BY seq LIMIT ?) AS f "
    "JOIN event AS e ON e.id = f.event_id"
)


class CenterTx(SqlTx):
    def upsert_registration_rows(self, registrations: Sequence[RegistrationRow]) -> None:
        """The center also stores each registration's search keys (indexed by name key, center only)."""
        self._executemany(
            _UPSERT_KEYED_REGISTRATION,
            [(*r, search_key(r[_NAME]), search_key(r[_ADDRESS])) for r in registrations],
        )

    def codes_matching(
        self, *, name_key: str, birth_date: str = "", sex: int = 0, address_key: str = "", limit: int
    ) -> list[str]:
        """Codes with a registration whose keys match exactly (current or past registrations)."""
        query = select(registration.c.resident_code).where(registration.c.name_key == name_key)
        if address_key:
            query = query.where(registration.c.address_key == address_key)
        else:
            query = query.where(registration.c.birth_date == birth_date, registration.c.sex == sex)
        return list(dict.fromkeys(self.conn.execute(query.limit(limit)).scalars()))

    # -- change feed -------------------------------------------------------------------------------------

    def feed_subscription_start(self, agency: str, purpose: str) -> int | None:
        """The event id the subscriber's feed starts after; None before it was first followed."""
        where = (feed_subscription.c.agency == agency, feed_subscription.c.purpose == purpose)
        start = self.conn.execute(select(feed_subscription.c.start_event_id).where(*where)).scalar()
        return None if start is None else int(start)

    def feed_start(self, agency: str, purpose: str, now_us: int) -> int:
        """The subscriber's start (created on first use: the feed holds events after that moment)."""
        start = self.feed_subscription_start(agency, purpose)
        if start is not None:
            return start
        head = newest_id(self.conn, event)
        self.conn.execute(
            insert(feed_subscription),
            [{"agency": agency, "purpose": purpose, "start_event_id": head, "created_us": now_us}],
        )
        return head

    def feed_head(self, agency: str, purpose: str) -> tuple[int, int]:
        """(last seq, last event id) delivered to the subscriber, (0, 0) if none."""
        query = (
            select(feed_item.c.seq, feed_item.c.event_id)
            .where(feed_item.c.agency == agency, feed_item.c.purpose == purpose)
            .order_by(feed_item.c.seq.desc())
            .limit(1)
        )
        row = self.conn.execute(query).first()
        return (int(row.seq), int(row.event_id)) if row else (0, 0)

    def feed_items(self, agency: str, purpose: str, after_seq: int, limit: int) -> list[tuple[int, ChangeEvent]]:
        """Already numbered items after `after_seq`, with their events."""
        if self._placeholder == "?":
            return self._packed(_FEED_ITEMS_PACKED, (agency, purpose, after_seq, limit))
        query = (
            select(feed_item.c.seq.label("feed_seq"), event)
            .join(event, event.c.id == feed_item.c.event_id)
            .where(feed_item.c.agency == agency, feed_item.c.purpose == purpose, feed_item.c.seq > after_seq)
            .order_by(feed_item.c.seq)
            .limit(limit)
        )
        return [(int(row.feed_seq), rows.event_from(row)) for row in self.conn.execute(query)]

    def events_after_id(self, event_id: int, limit: int) -> list[tuple[int, ChangeEvent]]:
        """(event id, event) of the events stored after `event_id`, in storage order."""
        if self._placeholder == "?":
            return self._packed(_EVENTS_AFTER_PACKED, (event_id, limit))
        query = select(event).where(event.c.id > event_id).order_by(event.c.id).limit(limit)
        return [(int(row.id), rows.event_from(row)) for row in self.conn.execute(query)]

    def _packed(self, sql: str, params: tuple[object, ...]) -> list[tuple[int, ChangeEvent]]:
        """(key, event) pairs from a query that packs its rows into one JSON array (SQLite), by key.

        The sqlite3 driver releases the GIL for every statement step, that is for every row fetched, and
        retakes it after; a feed batch runs as a writer job, and while the event loop runs Python each
        retake waits for it. Offline, 500-event batches beside a thread running Python: 817 µs an event
        fetched row by row against 17 µs alone; packed, the query is one step (SqlTx._registration_rows
        does the same for lookups). Every column is text, an integer or NULL, which JSON carries exactly."""
        packed = self._fetchall(sql, params)[0][0]
        found = sorted(json.loads(packed), key=itemgetter(0))
        return [(int(values[0]), rows.event_from_tuple(values[1:])) for values in found]

    def add_feed_items(self, agency: str, purpose: str, items: Sequence[tuple[int, int]]) -> None:
        self._executemany(_INSERT_FEED_ITEM, [(agency, purpose, seq, event_id) for seq, event_id in items])
