"""Reconciliation of 住民票コード at the center, behind the relay.

The relay applies every change a municipality acknowledged (refusing one would block that municipality's
queue), so a register can put a code into the network that should not be there: one the center never
issued (a typing error in a 転入 that still passes the check digit), or one a code change retired that a
municipality registers again afterwards (a move-in with the resident's old code). The center is the only
tier that knows which codes it issued, so it checks every event it applied, in event-id order behind a
cursor, and records each such code once per kind in `code_anomaly` for operators to reconcile. Both
checks look at events only (never at registrations, whose state changes), so what is found does not depend
on the order the origins' events arrive in.

The checks are set-based SQL over one range of events (SQLite does the work without the GIL); a reader
connection finds the anomalies, and one small write job records the new ones and moves the cursor."""

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, func, select, union_all

from jukinet.domain.errors import AlreadyResolved, NotFoundError
from jukinet.domain.model import CREATE_REASONS, ChangeReason
from jukinet.domain.validate import JST
from jukinet.storage import rows
from jukinet.storage.cursors import move_cursor, newest_id, read_cursor
from jukinet.storage.schema import code_anomaly, code_check_cursor, event, issued_code
from jukinet.storage.sql_tx import in_chunks

# Events that register their resident code at the origin: a create, or a code change (to that code).
_REGISTERING = sorted(int(r) for r in (*CREATE_REASONS, ChangeReason.CODE_CHANGE))
# The center only: the retired side of a pair is found by the code it retired (few events have one).
PREVIOUS_CODE_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_event_previous_code ON event (previous_code) WHERE previous_code != ''"
)
UNISSUED = "unissued"
RETIRED_IN_USE = "retired_in_use"
KINDS = (UNISSUED, RETIRED_IN_USE)
DEFAULT_BATCH = 5_000


@dataclass(frozen=True, slots=True)
class CodeAnomaly:
    resident_code: str
    kind: str
    municipality: str
    origin: str
    seq: int
    detail: str
    detected_at: dt.datetime | None = None
    id: int = 0
    resolved_at: dt.datetime | None = None
    resolved_by: str = ""
    resolution: str = ""
    replaced_by: str = ""  # retired_in_use: the code that replaced it (the resident's current one)

    @property
    def codes(self) -> tuple[str, ...]:
        """The resident codes it shows (what an access entry about it names)."""
        return (self.resident_code, self.replaced_by) if self.replaced_by else (self.resident_code,)


def checked_through(conn: Connection) -> int:
    """event.id of the last event checked (0 before the first check)."""
    return read_cursor(conn, code_check_cursor, "checked_through")


def newest_event(conn: Connection) -> int:
    return newest_id(conn, event)


def settled_newest_event(conn: Connection) -> int:
    """The newest event id, once no insert below it can still be in flight: on PostgreSQL a second writer
    could hold a lower id uncommitted, and a cursor moved past it would never check that event. Run it as a
    writer job (the lock lasts until its commit)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE event IN SHARE ROW EXCLUSIVE MODE")
    return newest_event(conn)


def unchecked(conn: Connection) -> int:
    return max(0, newest_event(conn) - checked_through(conn))


def find_anomalies(conn: Connection, after_id: int, through_id: int) -> list[CodeAnomaly]:
    """The anomalies the events with after_id < id <= through_id show, at most one per (code, kind), with
    the first such event; codes already recorded are included again (record_anomalies skips them)."""

    def in_range_of(table: Any) -> ColumnElement[bool]:
        return and_(table.c.id > after_id, table.c.id <= through_id)

    found: dict[tuple[str, str], CodeAnomaly] = {}
    for code, origin, seq, reason in conn.execute(_unissued(in_range_of(event))):
        key = (code, UNISSUED)
        if key not in found:
            found[key] = CodeAnomaly(
                code,
                UNISSUED,
                origin,
                origin,
                int(seq),
                f"never issued by the center; first seen in {origin}#{seq} ({_reason_name(reason)})",
            )
    for row in conn.execute(_retired(in_range_of)):
        code, origin, seq, reason, recorded, retired_at, retired_seq, replaced_by, retired_when = row
        key = (code, RETIRED_IN_USE)
        if key not in found:
            found[key] = CodeAnomaly(
                code,
                RETIRED_IN_USE,
                origin,
                origin,
                int(seq),
                replaced_by=replaced_by,
                detail=(
                    f"retired by code change {retired_at}#{retired_seq} (recorded {_when(retired_when)}, replaced "
                    f"by {replaced_by}); registered again by {_reason_name(reason)} {origin}#{seq} (recorded "
                    f"{_when(recorded)})"
                ),
            )
    return list(found.values())


def _when(micros: int) -> str:
    return rows.from_us(int(micros)).astimezone(JST).strftime("%Y-%m-%d %H:%M JST")


def _reason_name(reason: int) -> str:
    try:
        return ChangeReason(reason).name.lower()
    except ValueError:
        return f"reason {reason}"


def _unissued(in_range: ColumnElement[bool]) -> Select[Any]:
    """Codes named by events in range (as the resident's code or as the code a change retired) that the
    center never issued."""
    queries = []
    for column in (event.c.resident_code, event.c.previous_code):
        issued = select(issued_code.c.resident_code).where(issued_code.c.resident_code == column)
        queries.append(
            select(column.label("code"), event.c.origin, event.c.seq, event.c.reason, event.c.id).where(
                in_range, column != "", ~issued.exists()
            )
        )
    both = union_all(*queries).subquery()
    return select(both.c.code, both.c.origin, both.c.seq, both.c.reason).order_by(both.c.id)


def _retired(in_range_of: "Callable[[Any], ColumnElement[bool]]") -> Select[Any]:
    """Pairs of events: a code change that retired X, and an event recorded after it that registers X
    again (a create, or a code change to X), at any municipality. Facts that never change, so the result
    depends neither on the order origins arrive in nor on when the check runs: a pair is found when its
    second event, in whichever role, is checked. Effective dates do not order them (a 転入 may be
    backdated to the move); the municipalities' recording times do."""
    retiring = event.alias("retiring")
    using = event.alias("using")
    pair = and_(
        retiring.c.reason == int(ChangeReason.CODE_CHANGE),
        retiring.c.previous_code != "",
        using.c.resident_code == retiring.c.previous_code,
        using.c.reason.in_(_REGISTERING),
        using.c.recorded_us > retiring.c.recorded_us,
    )
    columns = (
        using.c.resident_code,
        using.c.origin,
        using.c.seq,
        using.c.reason,
        using.c.recorded_us,
        retiring.c.origin,
        retiring.c.seq,
        retiring.c.resident_code,
        retiring.c.recorded_us,
    )
    # Split by which event is new, so that each half starts from the range and reaches the other event
    # through an index (resident code; the center's partial index on previous_code).
    by_retiring = select(*columns, retiring.c.id.label("at")).select_from(retiring).join(using, pair)
    by_using = select(*columns, using.c.id.label("at")).select_from(using).join(retiring, pair)
    both = union_all(by_retiring.where(in_range_of(retiring)), by_using.where(in_range_of(using))).subquery()
    return select(*[c for c in both.c if c.name != "at"]).order_by(both.c.at)


def record_anomalies(conn: Connection, anomalies: Sequence[CodeAnomaly], through_id: int, now: dt.datetime) -> int:
    """Records the anomalies not recorded yet and moves the cursor to through_id (never back); returns how
    many were new. Runs as a writer job: only this task writes these two tables."""
    new = 0
    if anomalies:
        known: set[tuple[str, str]] = set()
        for chunk in in_chunks(sorted({a.resident_code for a in anomalies})):
            known.update(
                (str(c), str(k))
                for c, k in conn.execute(
                    select(code_anomaly.c.resident_code, code_anomaly.c.kind).where(
                        code_anomaly.c.resident_code.in_(chunk)
                    )
                )
            )
        fresh = [a for a in anomalies if (a.resident_code, a.kind) not in known]
        if fresh:
            at = rows.to_us(now)
            conn.execute(
                code_anomaly.insert(),
                [
                    {
                        "detected_us": at,
                        "resident_code": a.resident_code,
                        "kind": a.kind,
                        "municipality": a.municipality,
                        "origin": a.origin,
                        "seq": a.seq,
                        "detail": a.detail[:300],
                        "replaced_by": a.replaced_by,
                    }
                    for a in fresh
                ],
            )
        new = len(fresh)
    if through_id > checked_through(conn):
        move_cursor(conn, code_check_cursor, "checked_through", through_id)
    return new


def anomaly_counts(conn: Connection) -> dict[str, int]:
    """Open (unresolved) anomalies by kind."""
    counts = dict.fromkeys(KINDS, 0)
    query = select(code_anomaly.c.kind, func.count()).where(code_anomaly.c.resolved_us.is_(None))
    for kind, count in conn.execute(query.group_by(code_anomaly.c.kind)):
        counts[str(kind)] = int(count)
    return counts


def anomaly_page(
    conn: Connection, *, before_id: int | None, limit: int, kind: str = "", include_resolved: bool = False
) -> list[CodeAnomaly]:
    """Newest first, ids below before_id; open ones only unless include_resolved."""
    query = select(code_anomaly).order_by(code_anomaly.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(code_anomaly.c.id < before_id)
    if kind:
        query = query.where(code_anomaly.c.kind == kind)
    if not include_resolved:
        query = query.where(code_anomaly.c.resolved_us.is_(None))
    return [_anomaly(r) for r in conn.execute(query)]


def resolve_anomaly(conn: Connection, anomaly_id: int, *, by: str, resolution: str, now: dt.datetime) -> CodeAnomaly:
    """Marks an open anomaly resolved (who, when, what was done); returns it as it now stands.
    Raises NotFoundError for an unknown id and AlreadyResolved for one resolved before."""
    row = conn.execute(select(code_anomaly).where(code_anomaly.c.id == anomaly_id)).first()
    if row is None:
        raise NotFoundError(f"no code anomaly {anomaly_id}; list them with `jukinet codes anomalies --all`")
    if row.resolved_us is not None:
        raise AlreadyResolved(
            f"code anomaly {anomaly_id} ({row.resident_code}) was resolved by {row.resolved_by} at "
            f"{rows.from_us(int(row.resolved_us)).astimezone(JST):%Y-%m-%d %H:%M} JST: {row.resolution}"
        )
    conn.execute(
        code_anomaly.update()
        .where(code_anomaly.c.id == anomaly_id, code_anomaly.c.resolved_us.is_(None))
        .values(resolved_us=rows.to_us(now), resolved_by=by[:200], resolution=resolution[:300])
    )
    resolved = conn.execute(select(code_anomaly).where(code_anomaly.c.id == anomaly_id)).one()
    return _anomaly(resolved)


def _anomaly(r: Any) -> CodeAnomaly:
    return CodeAnomaly(
        resident_code=r.resident_code,
        kind=r.kind,
        municipality=r.municipality,
        origin=r.origin,
        seq=int(r.seq),
        detail=r.detail,
        detected_at=rows.from_us(int(r.detected_us)),
        id=int(r.id),
        resolved_at=None if r.resolved_us is None else rows.from_us(int(r.resolved_us)),
        resolved_by=r.resolved_by,
        resolution=r.resolution,
        replaced_by=r.replaced_by,
    )
