"""SQL for the tamper-evident access log: this node's checkpoints, the children's witnessed checkpoints and
alerts, and streaming the chain for verification. Hashing and signature logic live in jukinet.audit."""

from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from jukinet.audit import GENESIS, Checkpoint, EntryValues, LogRow, Position, SignedCheckpoint, canonical
from jukinet.storage.schema import access_log, audit_alert, audit_checkpoint, audit_witnessed

PAGE = 5000  # rows per keyset page when streaming the log


# -- the log ------------------------------------------------------------------------------------------

_ROW_COLUMNS = (
    access_log.c.id,
    access_log.c.at_us,
    access_log.c.request_id,
    access_log.c.direction,
    access_log.c.peer,
    access_log.c.method,
    access_log.c.purpose,
    access_log.c.subjects,
    access_log.c.outcome,
    access_log.c.prev_hash,
    access_log.c.entry_hash,
)


def _log_row(row: Any) -> LogRow:
    values: EntryValues = (
        int(row[1]),
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
    )
    return LogRow(int(row[0]), values, bytes(row[9]), bytes(row[10]))


def log_rows(conn: Connection, after_id: int = 0, upto_id: int | None = None) -> Iterator[LogRow]:
    """The log in chain (id) order, streamed in keyset pages."""
    last = after_id
    while True:
        query = select(*_ROW_COLUMNS).where(access_log.c.id > last).order_by(access_log.c.id).limit(PAGE)
        if upto_id is not None:
            query = query.where(access_log.c.id <= upto_id)
        page = [_log_row(r) for r in conn.execute(query)]
        yield from page
        if len(page) < PAGE:
            return
        last = page[-1].id


def count_after(conn: Connection, after_id: int) -> int:
    return int(
        conn.execute(select(func.count()).select_from(access_log).where(access_log.c.id > after_id)).scalar() or 0
    )


def entry_at(conn: Connection, after_id: int, offset: int) -> tuple[int, bytes] | None:
    """(id, entry_hash) of the offset-th entry (1-based) after `after_id`."""
    query = (
        select(access_log.c.id, access_log.c.entry_hash)
        .where(access_log.c.id > after_id)
        .order_by(access_log.c.id)
        .offset(offset - 1)
        .limit(1)
    )
    row = conn.execute(query).first()
    return (int(row[0]), bytes(row[1])) if row else None


def entry_hash_of(conn: Connection, entry_id: int) -> bytes | None:
    value = conn.execute(select(access_log.c.entry_hash).where(access_log.c.id == entry_id)).scalar()
    return bytes(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class DigestRun:
    """The entries after a base, as a parent is sent them, and what the stored hashes say about them."""

    digests: bytes  # concatenated SHA-256 digests of the entries' canonical bytes
    count: int
    last_id: int
    stored_head: bytes  # the last entry's stored entry_hash (the base head when there is none)
    recomputed_head: bytes  # the chain recomputed from the base head over the entries' contents
    first_inconsistent_id: int | None  # first entry whose stored hashes disagree with the recomputed chain


def digests_after(conn: Connection, base_id: int, base_head: bytes, upto_id: int) -> DigestRun:
    parts: list[bytes] = []
    head = stored = base_head
    last_id = base_id
    bad: int | None = None
    for row in log_rows(conn, base_id, upto_id):
        digest = sha256(canonical(row.values)).digest()
        parts.append(digest)
        if bad is None and row.prev_hash != head:
            bad = row.id
        head = sha256(head + digest).digest()
        if bad is None and row.entry_hash != head:
            bad = row.id
        stored, last_id = row.entry_hash, row.id
    return DigestRun(b"".join(parts), len(parts), last_id, stored, head, bad)


# -- this node's checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnCheckpoint:
    id: int
    last_id: int
    signed: SignedCheckpoint


def _signed(row: Any, node_column: str = "node") -> SignedCheckpoint:
    return SignedCheckpoint(
        checkpoint=Checkpoint(getattr(row, node_column), int(row.size), bytes(row.head), int(row.at_us)),
        signature=bytes(row.signature),
        signer_cert=bytes(row.signer_cert),
        witness=row.witness or "",
        witnessed_us=int(row.witnessed_us or 0),
        countersignature=bytes(row.countersignature or b""),
        witness_cert=bytes(row.witness_cert or b""),
    )


def own_checkpoints(conn: Connection) -> list[OwnCheckpoint]:
    rows = conn.execute(select(audit_checkpoint).order_by(audit_checkpoint.c.id))
    return [OwnCheckpoint(int(r.id), int(r.last_id), _signed(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class OwnState:
    latest: OwnCheckpoint | None
    witnessed: OwnCheckpoint | None  # the latest countersigned one
    new_entries: int  # entries after the latest checkpoint


def own_state(conn: Connection) -> OwnState:
    def one(query: Any) -> OwnCheckpoint | None:
        row = conn.execute(query.order_by(audit_checkpoint.c.id.desc()).limit(1)).first()
        return OwnCheckpoint(int(row.id), int(row.last_id), _signed(row)) if row else None

    latest = one(select(audit_checkpoint))
    witnessed = one(select(audit_checkpoint).where(audit_checkpoint.c.countersignature.is_not(None)))
    return OwnState(latest, witnessed, count_after(conn, latest.last_id if latest else 0))


def insert_own(conn: Connection, signed: SignedCheckpoint, last_id: int) -> int:
    cp = signed.checkpoint
    result = conn.execute(
        insert(audit_checkpoint).values(
            node=cp.node,
            size=cp.size,
            last_id=last_id,
            head=cp.head,
            at_us=cp.at_us,
            signature=signed.signature,
            signer_cert=signed.signer_cert,
            witness="",
        )
    )
    key = result.inserted_primary_key
    assert key is not None  # noqa: S101
    return int(key[0])


def set_countersigned(conn: Connection, checkpoint_id: int, signed: SignedCheckpoint) -> None:
    conn.execute(
        update(audit_checkpoint)
        .where(audit_checkpoint.c.id == checkpoint_id)
        .values(
            witness=signed.witness,
            witnessed_us=signed.witnessed_us,
            countersignature=signed.countersignature,
            witness_cert=signed.witness_cert,
        )
    )


# -- children's checkpoints (prefecture, center) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    child: str
    flagged_us: int
    reason: str
    acknowledged_us: int | None
    acknowledged_by: str
    rebased_us: int | None

    @property
    def active(self) -> bool:
        return self.acknowledged_us is None

    @property
    def rebase_pending(self) -> bool:
        return self.acknowledged_us is not None and self.rebased_us is None


@dataclass(frozen=True, slots=True)
class ChildState:
    witnessed: Position  # the latest checkpoint witnessed for the child (genesis when none)
    alert: Alert | None  # the child's latest alert
    replay: SignedCheckpoint | None  # this very checkpoint, already witnessed (a retry after a lost answer)


def _alert(row: Any) -> Alert:
    return Alert(
        int(row.id),
        row.child,
        int(row.flagged_us),
        row.reason,
        None if row.acknowledged_us is None else int(row.acknowledged_us),
        row.acknowledged_by or "",
        None if row.rebased_us is None else int(row.rebased_us),
    )


def latest_alert(conn: Connection, child: str) -> Alert | None:
    query = select(audit_alert).where(audit_alert.c.child == child).order_by(audit_alert.c.id.desc()).limit(1)
    row = conn.execute(query).first()
    return _alert(row) if row else None


def child_state(conn: Connection, child: str, checkpoint: Checkpoint, signature: bytes) -> ChildState:
    w = audit_witnessed.c
    latest = conn.execute(select(w.size, w.head).where(w.child == child).order_by(w.id.desc()).limit(1)).first()
    replay_row = conn.execute(
        select(audit_witnessed)
        .where(
            w.child == child,
            w.size == checkpoint.size,
            w.head == checkpoint.head,
            w.at_us == checkpoint.at_us,
            w.signature == signature,
        )
        .limit(1)
    ).first()
    return ChildState(
        witnessed=Position(int(latest.size), bytes(latest.head)) if latest else Position(0, GENESIS),
        alert=latest_alert(conn, child),
        replay=_signed(replay_row, "child") if replay_row else None,
    )


def insert_witnessed(conn: Connection, signed: SignedCheckpoint, *, rebased: bool) -> None:
    cp = signed.checkpoint
    conn.execute(
        insert(audit_witnessed).values(
            child=cp.node,
            size=cp.size,
            head=cp.head,
            at_us=cp.at_us,
            signature=signed.signature,
            signer_cert=signed.signer_cert,
            witness=signed.witness,
            witnessed_us=signed.witnessed_us,
            countersignature=signed.countersignature,
            witness_cert=signed.witness_cert,
            rebased=rebased,
        )
    )


def witnessed_of(conn: Connection, child: str) -> tuple[list[SignedCheckpoint], int]:
    """The child's witnessed checkpoints since its latest acknowledged rebase, and how many come before it."""
    w = audit_witnessed.c
    rows = list(conn.execute(select(audit_witnessed).where(w.child == child).order_by(w.id)))
    start = max((i for i, r in enumerate(rows) if r.rebased), default=0)
    return [_signed(r, "child") for r in rows[start:]], start


def insert_alert(conn: Connection, child: str, reason: str, now_us: int) -> None:
    conn.execute(insert(audit_alert).values(child=child, flagged_us=now_us, reason=reason[:500], acknowledged_by=""))


def acknowledge(conn: Connection, child: str, by: str, note: str, now_us: int) -> Alert | None:
    """Acknowledges the child's active alert; None when it has none."""
    alert = latest_alert(conn, child)
    if alert is None or not alert.active:
        return None
    conn.execute(
        update(audit_alert)
        .where(audit_alert.c.id == alert.id)
        .values(acknowledged_us=now_us, acknowledged_by=by[:200], note=note[:200])
    )
    return alert


def mark_rebased(conn: Connection, alert_id: int, now_us: int) -> None:
    conn.execute(update(audit_alert).where(audit_alert.c.id == alert_id).values(rebased_us=now_us))


def active_alerts(conn: Connection) -> int:
    query = select(func.count()).select_from(audit_alert).where(audit_alert.c.acknowledged_us.is_(None))
    return int(conn.execute(query).scalar() or 0)
