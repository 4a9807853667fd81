"""The center's SQL transaction: the relay ports plus search keys, provision reads and the change feed."""

from collections.abc import Sequence
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
        query = select(event).where(event.c.id > event_id).order_by(event.c.id).limit(limit)
        return [(int(row.id), rows.event_from(row)) for row in self.conn.execute(query)]

    def add_feed_items(self, agency: str, purpose: str, items: Sequence[tuple[int, int]]) -> None:
        self._executemany(_INSERT_FEED_ITEM, [(agency, purpose, seq, event_id) for seq, event_id in items])
