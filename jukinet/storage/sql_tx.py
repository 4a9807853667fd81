"""The SQL implementation of the relay and intake ports, on one open Connection (one transaction)."""

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, islice
from typing import Any, cast

from sqlalchemy import Connection, Row, func, select

from jukinet.audit import GENESIS, EntryValues
from jukinet.audit import append as chain_append
from jukinet.domain.model import ChangeEvent, EventRow, Registration, RegistrationRow
from jukinet.services.ports import AccessEntry, ProvisionEntry
from jukinet.storage import rows
from jukinet.storage.schema import event

_IN_CHUNK = 500  # bound parameter lists (SQLite allows 32,766 variables; keep statements small)


_MAX_PARAMS = 30_000  # below SQLite's 32,766 bound variables per statement (PostgreSQL allows 65,535)
_MAX_ROWS = 1_000


class _Append:
    """A plain append as multi-row INSERTs: one statement per up to _MAX_ROWS rows.

    The sqlite3 driver releases and retakes the GIL around every statement step, so an executemany of N
    rows is N hand-offs; while the event loop thread is busy each retake can wait for it. One multi-row
    statement is one step. (Upserts stay executemany: PostgreSQL refuses one statement that updates the
    same row twice.)"""

    def __init__(self, table: str, columns: Sequence[str]) -> None:
        self.width = len(columns)
        self.rows_per_statement = max(1, min(_MAX_ROWS, _MAX_PARAMS // self.width))
        self._head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608 - constant names
        self._row = "(" + ", ".join("?" for _ in columns) + ")"
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        found = self._sql.get(rows)
        if found is None:
            found = self._head + ", ".join(self._row for _ in range(rows))
            if len(self._sql) < 64:
                self._sql[rows] = found
        return found


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    """A one-row INSERT, built at import from constant table and column names, never from input."""
    return _Append(table, columns).sql(1)


_INSERT_EVENT = _Append("event", rows.EVENT_COLUMNS)
_INSERT_EVENT_ROW = _Append("event", rows.EVENT_COLUMNS[:-1])  # a relayed event: no register request id
_INSERT_ACCESS = _Append(
    "access_log",
    ("at_us", "request_id", "direction", "peer", "method", "purpose", "subjects", "outcome", "prev_hash", "entry_hash"),
)
# The chain head: the newest row's hash (a primary-key lookup). Read in the caller's transaction, so it
# sees the group commit's earlier jobs and never a row of a SAVEPOINT that was rolled back.
_ACCESS_HEAD = "SELECT entry_hash FROM access_log ORDER BY id DESC LIMIT 1"
_LOCK_ACCESS_CHAIN = "SELECT pg_advisory_xact_lock(5801001)"  # a constant key: the access-log chain
_SELECT_REGISTRATIONS = f"SELECT {', '.join(rows.REGISTRATION_COLUMNS)} FROM registration WHERE resident_code IN ("  # noqa: S608 - constant names
# The same rows as one JSON array in one row (SQLite): see SqlTx._registration_rows.
_SELECT_REGISTRATIONS_PACKED = (
    f"SELECT json_group_array(json_array({', '.join(rows.REGISTRATION_COLUMNS)}))"  # noqa: S608 - constant names
    " FROM registration WHERE resident_code IN ("
)
_SELECT_EVENTS_OF_PACKED = (
    f"SELECT json_group_array(json_array({', '.join(rows.EVENT_COLUMNS)}))"  # noqa: S608 - constant names
    " FROM event WHERE resident_code IN ("
)
_SELECT_EVENTS_BY_REQUEST = f"SELECT {', '.join(rows.EVENT_COLUMNS)} FROM event WHERE request_id IN ("  # noqa: S608 - constant names
_SELECT_EVENTS_AT = f"SELECT {', '.join(rows.EVENT_COLUMNS[:-1])} FROM event WHERE origin = ? AND seq IN ("  # noqa: S608 - constant names
_SELECT_ISSUED = "SELECT resident_code FROM issued_code WHERE resident_code IN ("
_SELECT_REGISTERED = "SELECT resident_code FROM registration WHERE resident_code IN ("
_PEEK_FREE_CODES = "SELECT resident_code FROM free_code ORDER BY id LIMIT ?"
# The pool's first codes: the n-th one, then a range of the primary key through it (no index on the codes:
# keeping one cost a random index insert per code received and a random delete per code handed out).
_FREE_CODE_AT = "SELECT id, resident_code FROM free_code ORDER BY id LIMIT 1 OFFSET ?"
_DELETE_FREE_CODES_THROUGH = "DELETE FROM free_code WHERE id <= ?"
_INSERT_PROVISION = _Append(
    "provision_log", ("at_us", "request_id", "agency", "purpose", "resident_code", "fields", "channel")
)
_INSERT_CODE = {t: _Append(t, ("resident_code", "block_id")) for t in ("issued_code", "free_code")}
_UPSERT_REGISTRATION = _insert_sql("registration", rows.REGISTRATION_COLUMNS) + (
    " ON CONFLICT (resident_code, municipality) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in rows.REGISTRATION_COLUMNS[2:])
)


def _text(value: str, limit: int) -> str:
    """Caller-supplied text as the log can hold it: cut to the column, NUL replaced (PostgreSQL text
    cannot store it, and a refused call must still leave its entry)."""
    value = value[:limit]
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def in_chunks(values: Iterable[str]) -> Iterable[list[str]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, _IN_CHUNK)):
        yield chunk


class SqlTx:
    """Implements jukinet.services.ports.IntakeTx (and so RelayTx) with SQLAlchemy Core."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._placeholder = "?" if conn.dialect.paramstyle == "qmark" else "%s"

    def head_seq(self, origin: str) -> int:
        value = self.conn.execute(select(func.max(event.c.seq)).where(event.c.origin == origin)).scalar()
        return int(value or 0)

    # Hot paths use the driver's executemany with plain tuples: SQLAlchemy Core's per-row parameter
    # processing costs about twice the insert itself here (see STACK-LIMITS.md and bench/relay.py).
    # Inside a transaction they go straight to a DB-API cursor: exec_driver_sql costs about ten times a
    # one-row statement's own work (its result and event machinery), which agency lookups pay per call.
    def _executemany(self, sql: str, values: Sequence[tuple[object, ...]]) -> None:
        if not values:
            return
        if not self.conn.in_transaction():
            self.conn.exec_driver_sql(self._driver_sql(sql), values)  # a list of tuples: the driver's executemany
            return
        with self._cursor() as cursor:
            cursor.executemany(self._driver_sql(sql), values)

    def _append(self, target: _Append, values: Sequence[tuple[object, ...]]) -> None:
        per = target.rows_per_statement
        for start in range(0, len(values), per):
            chunk = values[start : start + per]
            self._execute(target.sql(len(chunk)), tuple(chain.from_iterable(chunk)))

    def _execute(self, sql: str, params: tuple[object, ...]) -> int:
        """Runs one statement; returns the rows it changed."""
        if not self.conn.in_transaction():
            return int(self.conn.exec_driver_sql(self._driver_sql(sql), params).rowcount)
        with self._cursor() as cursor:
            cursor.execute(self._driver_sql(sql), params)
            return int(cursor.rowcount)

    def _fetchall(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        if not self.conn.in_transaction():
            return [tuple(row) for row in self.conn.exec_driver_sql(self._driver_sql(sql), params)]
        with self._cursor() as cursor:
            cursor.execute(self._driver_sql(sql), params)
            return list(cursor.fetchall())

    def _driver_sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        cursor = self.conn.connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def insert_event_rows(self, events: Sequence[EventRow], request_ids: Sequence[str] | None = None) -> None:
        """Relayed events (no request id), or a municipality's own with the register's request ids."""
        if request_ids is None:
            self._append(_INSERT_EVENT_ROW, events)
        else:
            self._append(_INSERT_EVENT, [(*e, r) for e, r in zip(events, request_ids, strict=True)])

    def upsert_registration_rows(self, registrations: Sequence[RegistrationRow]) -> None:
        self._executemany(_UPSERT_REGISTRATION, registrations)

    def _access_head(self) -> bytes:
        if self._placeholder != "?":
            # PostgreSQL: hold the chain until commit, so a second writer (another process on the same
            # database) cannot read the same head and fork the chain. SQLite allows one writer anyway.
            self._execute(_LOCK_ACCESS_CHAIN, ())
        found = self._fetchall(_ACCESS_HEAD, ())
        return GENESIS if not found or found[0][0] is None else bytes(found[0][0])

    def append_access(self, entries: Sequence[AccessEntry]) -> None:
        """Appends hash-chained entries (jukinet.audit.chain) after the current head."""
        if not entries:
            return
        head = self._access_head()
        values: list[tuple[object, ...]] = []
        for e in entries:
            stored: EntryValues = (
                rows.to_us(e.at),
                _text(e.request_id, 128),
                e.direction,
                _text(e.peer, 200),
                _text(e.method, 120),
                _text(e.purpose, 64),
                " ".join(e.subjects),
                e.outcome[:32],
            )
            prev, head = head, chain_append(head, stored)
            values.append((*stored, prev, head))
        self._append(_INSERT_ACCESS, values)

    def append_provisions(self, entries: Sequence[ProvisionEntry]) -> None:
        # A bulk message's entries share their instant and field list: convert each distinct one once.
        micros: dict[dt.datetime, int] = {}
        joined: dict[tuple[str, ...], str] = {}
        values: list[tuple[object, ...]] = []
        for e in entries:
            at = micros.get(e.at)
            if at is None:
                at = micros[e.at] = rows.to_us(e.at)
            fields = joined.get(e.fields)
            if fields is None:
                fields = joined[e.fields] = " ".join(e.fields)
            values.append((at, e.request_id[:128], e.agency, e.purpose, e.resident_code, fields, e.channel))
        self._append(_INSERT_PROVISION, values)

    def append_provisions_for(self, template: ProvisionEntry, codes: Sequence[str]) -> None:
        head = (rows.to_us(template.at), template.request_id[:128], template.agency, template.purpose)
        tail = (" ".join(template.fields), template.channel)
        self._append(_INSERT_PROVISION, [(*head, code, *tail) for code in codes])

    def events_of(self, codes: Iterable[str]) -> list[ChangeEvent]:
        """Every stored event of these codes, oldest recording first. On SQLite each chunk's rows come packed
        in one JSON value, one statement step (see _registration_rows): history lookups run on the writer
        thread beside the event loop (bulk lookups for a purpose with history)."""
        found = []
        for chunk in in_chunks(codes):
            if self._placeholder == "?":
                packed = self._fetchall(_SELECT_EVENTS_OF_PACKED + _marks(len(chunk)) + ")", tuple(chunk))
                found += [rows.event_from_tuple(values) for values in json.loads(packed[0][0])]
            else:
                query = select(event).where(event.c.resident_code.in_(chunk))
                found += [rows.event_from(row) for row in self.conn.execute(query)]
        return sorted(found, key=lambda e: (e.recorded_at, e.origin, e.seq))

    def insert_code_rows(self, table: str, codes: Sequence[str], block_id: str) -> None:
        """Adds up to 100,000 (code, block) rows to issued_code (center) or free_code (municipality)."""
        self._append(_INSERT_CODE[table], [(code, block_id) for code in codes])

    def registrations_at(self, codes: Iterable[str], municipality: str) -> dict[str, Registration]:
        found: dict[str, Registration] = {}
        for chunk in in_chunks(codes):
            sql = _SELECT_REGISTRATIONS + _marks(len(chunk)) + ") AND municipality = ?"
            for values in self._fetchall(sql, (*chunk, municipality)):
                found[values[0]] = rows.registration_from_tuple(values)
        return found

    def registrations_of(self, codes: Iterable[str]) -> dict[str, list[Registration]]:
        """Every municipality's registration of each code (the agency hot path: driver-level query)."""
        return {
            code: [rows.registration_from_tuple(values) for values in stored]
            for code, stored in self.registration_rows_of(codes).items()
        }

    def registration_rows_of(self, codes: Iterable[str]) -> dict[str, list[RegistrationRow]]:
        """registrations_of as stored rows (REGISTRATION_COLUMNS order), no domain objects: bulk lookups."""
        found: dict[str, list[RegistrationRow]] = {}
        for chunk in in_chunks(codes):
            for values in self._registration_rows(chunk):
                found.setdefault(values[0], []).append(values)
        return found

    def _registration_rows(self, chunk: list[str]) -> list[RegistrationRow]:
        """The rows of these codes, as tuples in column order.

        On SQLite the rows come packed in one JSON value, so the query is one step. The sqlite3 driver
        releases the GIL for every step, i.e. for every row fetched, and retakes it after: on the writer
        thread, while the event loop runs Python, each retake waits for the loop. That fetch was the largest
        item of the writer's time in a bulk lookup (py-spy). Offline, 500-row chunks with another thread
        running Python: 35 µs a row packed against 1,458 µs a row fetched; alone, about the same (9.5-12 µs).
        Every column is text or an integer, which JSON carries exactly."""
        params = tuple(chunk)
        if self._placeholder == "?":
            packed = self._fetchall(_SELECT_REGISTRATIONS_PACKED + _marks(len(chunk)) + ")", params)
            return [cast(RegistrationRow, tuple(values)) for values in json.loads(packed[0][0])]
        return cast(list[RegistrationRow], self._fetchall(_SELECT_REGISTRATIONS + _marks(len(chunk)) + ")", params))

    def event_rows_at(self, origin: str, seqs: Sequence[int]) -> dict[int, EventRow]:
        found: dict[int, EventRow] = {}
        for start in range(0, len(seqs), _IN_CHUNK):
            chunk = tuple(seqs[start : start + _IN_CHUNK])
            sql = _SELECT_EVENTS_AT + _marks(len(chunk)) + ")"
            for values in self._fetchall(sql, (origin, *chunk)):
                found[values[1]] = EventRow(*values)
        return found

    def events_by_request_id(self, request_ids: Iterable[str]) -> dict[str, ChangeEvent]:
        found: dict[str, ChangeEvent] = {}
        for chunk in in_chunks(request_ids):
            for values in self._fetchall(_SELECT_EVENTS_BY_REQUEST + _marks(len(chunk)) + ")", tuple(chunk)):
                found[values[-1]] = rows.event_from_tuple(values)
        return found

    def known_among(self, codes: Sequence[str]) -> set[str]:
        """Which of `codes` the center has ever issued, or any municipality has registered (index probes only:
        one statement per chunk for both tables, no rows read)."""
        found: set[str] = set()
        for chunk in in_chunks(codes):
            marks = _marks(len(chunk))
            sql = f"{_SELECT_ISSUED}{marks}) UNION ALL {_SELECT_REGISTERED}{marks})"
            found.update(row[0] for row in self._fetchall(sql, (*chunk, *chunk)))
        return found

    def peek_free_codes(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        return [row[0] for row in self._fetchall(_PEEK_FREE_CODES, (limit,))]

    def remove_free_codes(self, codes: Sequence[str]) -> None:
        if not codes:
            return
        last = self._fetchall(_FREE_CODE_AT, (len(codes) - 1,))
        if not last or last[0][1] != codes[-1]:
            raise RuntimeError(f"the pool's code #{len(codes)} is not {codes[-1]}: codes were not the pool's first")
        removed = self._execute(_DELETE_FREE_CODES_THROUGH, (last[0][0],))
        if removed != len(codes):  # not the pool's head: roll the whole transaction back
            raise RuntimeError(f"removed {removed} free codes instead of {len(codes)}: codes were not the pool's first")

    def event_rows_after(self, origin: str, after_seq: int, limit: int) -> list[Row[Any]]:
        """Raw rows for the relay sender, which turns them into protobuf without a domain round trip."""
        query = (
            select(event).where(event.c.origin == origin, event.c.seq > after_seq).order_by(event.c.seq).limit(limit)
        )
        return list(self.conn.execute(query))
