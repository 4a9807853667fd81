"""The SQL implementation of the relay and intake ports, on one open Connection (one transaction)."""

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from jukinet.domain.model import ChangeEvent, Registration
from jukinet.services.ports import AccessEntry
from jukinet.storage import rows
from jukinet.storage.schema import access_log, event, free_code, registration

_IN_CHUNK = 500  # bound parameter lists (SQLite allows 32,766 variables; keep statements small)
_REG_UPDATABLE = [c.name for c in registration.columns if c.name not in ("resident_code", "municipality")]


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, _IN_CHUNK)):
        yield chunk


class SqlTx:
    """Implements jukinet.services.ports.IntakeTx (and so RelayTx) with SQLAlchemy Core."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._dialect = conn.dialect.name

    def head_seq(self, origin: str) -> int:
        value = self.conn.execute(select(func.max(event.c.seq)).where(event.c.origin == origin)).scalar()
        return int(value or 0)

    def insert_events(self, events: Sequence[ChangeEvent], request_ids: Sequence[str] | None = None) -> None:
        if not events:
            return
        ids: Sequence[str | None] = request_ids if request_ids is not None else [None] * len(events)
        self.conn.execute(insert(event), [rows.event_row(e, r) for e, r in zip(events, ids, strict=True)])

    def upsert_registrations(self, registrations: Iterable[Registration]) -> None:
        values = [rows.registration_row(r) for r in registrations]
        if not values:
            return
        stmt: Any = (postgresql if self._dialect == "postgresql" else sqlite).insert(registration)
        stmt = stmt.on_conflict_do_update(
            index_elements=["resident_code", "municipality"],
            set_={name: stmt.excluded[name] for name in _REG_UPDATABLE},
        )
        self.conn.execute(stmt, values)

    def append_access(self, entries: Sequence[AccessEntry]) -> None:
        if not entries:
            return
        self.conn.execute(
            insert(access_log),
            [
                {
                    "at_us": rows.to_us(e.at),
                    "request_id": e.request_id[:128],
                    "direction": e.direction,
                    "peer": e.peer[:200],
                    "method": e.method[:120],
                    "purpose": e.purpose[:64],
                    "subjects": " ".join(e.subjects),
                    "outcome": e.outcome[:32],
                }
                for e in entries
            ],
        )

    def registrations_at(self, codes: Iterable[str], municipality: str) -> dict[str, Registration]:
        found: dict[str, Registration] = {}
        for chunk in _chunks(codes):
            query = select(registration).where(
                registration.c.municipality == municipality, registration.c.resident_code.in_(chunk)
            )
            for row in self.conn.execute(query):
                found[row.resident_code] = rows.registration_from(row)
        return found

    def registrations_of(self, codes: Iterable[str]) -> dict[str, list[Registration]]:
        found: dict[str, list[Registration]] = {}
        for chunk in _chunks(codes):
            for row in self.conn.execute(select(registration).where(registration.c.resident_code.in_(chunk))):
                found.setdefault(row.resident_code, []).append(rows.registration_from(row))
        return found

    def events_by_request_id(self, request_ids: Iterable[str]) -> dict[str, ChangeEvent]:
        found: dict[str, ChangeEvent] = {}
        for chunk in _chunks(request_ids):
            for row in self.conn.execute(select(event).where(event.c.request_id.in_(chunk))):
                found[row.request_id] = rows.event_from(row)
        return found

    def peek_free_codes(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        query = select(free_code.c.resident_code).order_by(free_code.c.resident_code).limit(limit)
        return list(self.conn.execute(query).scalars())

    def remove_free_codes(self, codes: Sequence[str]) -> None:
        for chunk in _chunks(codes):
            self.conn.execute(delete(free_code).where(free_code.c.resident_code.in_(chunk)))

    def events_after(self, origin: str, after_seq: int, limit: int) -> list[ChangeEvent]:
        query = (
            select(event).where(event.c.origin == origin, event.c.seq > after_seq).order_by(event.c.seq).limit(limit)
        )
        return [rows.event_from(row) for row in self.conn.execute(query)]
