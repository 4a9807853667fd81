"""Read-only queries for operators: digests, status counts, access log pages."""

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from jukinet.domain.validate import JST
from jukinet.services.ports import AccessEntry
from jukinet.storage import rows
from jukinet.storage.schema import access_log, event, free_code, provision_log, registration


@dataclass(frozen=True, slots=True)
class Digest:
    municipality: str
    count: int
    active: int
    sha256: bytes
    head_seq: int


def digest(conn: Connection, municipality: str) -> Digest:
    """SHA-256 over (code, active, seq, replaced_by, items) of every registration of one municipality,
    sorted by code: equal digests at two tiers mean they hold exactly the same state for it."""
    query = (
        select(
            registration.c.resident_code,
            registration.c.active,
            registration.c.seq,
            registration.c.replaced_by,
            registration.c.reason,
            registration.c.effective_date,
            registration.c.name,
            registration.c.alias,
            registration.c.birth_date,
            registration.c.sex,
            registration.c.address,
        )
        .where(registration.c.municipality == municipality)
        .order_by(registration.c.resident_code)
    )
    hasher = hashlib.sha256()
    count = active = 0
    for row in conn.execute(query):
        count += 1
        active += 1 if row.active else 0
        fields = (
            row.resident_code,
            "1" if row.active else "0",
            str(row.seq),
            row.replaced_by,
            str(row.reason),
            row.effective_date,
            row.name,
            row.alias,
            row.birth_date,
            str(row.sex),
            row.address,
        )
        hasher.update("\x1f".join(fields).encode("utf-8") + b"\x1e")
    head = conn.execute(select(func.max(event.c.seq)).where(event.c.origin == municipality)).scalar()
    return Digest(municipality, count, active, hasher.digest(), int(head or 0))


def head_seqs(conn: Connection) -> dict[str, int]:
    query = select(event.c.origin, func.max(event.c.seq)).group_by(event.c.origin)
    return {origin: int(seq) for origin, seq in conn.execute(query)}


@dataclass(frozen=True, slots=True)
class Counts:
    events: int
    active: int
    access_log: int
    free_codes: int


def counts(conn: Connection) -> Counts:
    def scalar(stmt: object) -> int:
        return int(conn.execute(stmt).scalar() or 0)  # type: ignore[call-overload]

    return Counts(
        events=scalar(select(func.count()).select_from(event)),
        active=scalar(select(func.count()).select_from(registration).where(registration.c.active)),
        access_log=scalar(select(func.count()).select_from(access_log)),
        free_codes=scalar(select(func.count()).select_from(free_code)),
    )


def access_page(
    conn: Connection, *, before_id: int | None, limit: int, resident_code: str = "", peer: str = ""
) -> list[tuple[int, AccessEntry]]:
    """Newest first. Filtering by resident code scans the subjects text (fine for operator use)."""
    query = select(access_log).order_by(access_log.c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(access_log.c.id < before_id)
    if resident_code:
        query = query.where(access_log.c.subjects.contains(resident_code))
    if peer:
        query = query.where(access_log.c.peer == peer)
    return [
        (
            row.id,
            AccessEntry(
                at=rows.from_us(row.at_us),
                request_id=row.request_id,
                peer=row.peer,
                method=row.method,
                outcome=row.outcome,
                direction=row.direction,
                purpose=row.purpose,
                subjects=tuple(row.subjects.split()) if row.subjects else (),
            ),
        )
        for row in conn.execute(query)
    ]


def provided_today(conn: Connection) -> dict[str, int]:
    """Records provided per agency since midnight JST (to restore daily quotas after a restart)."""
    midnight = dt.datetime.combine(dt.datetime.now(JST).date(), dt.time(), JST)
    query = (
        select(provision_log.c.agency, func.count())
        .where(provision_log.c.at_us >= rows.to_us(midnight))
        .group_by(provision_log.c.agency)
    )
    return {agency: int(count) for agency, count in conn.execute(query)}
