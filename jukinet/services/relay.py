"""Receiving side of the relay (prefecture and center): apply a batch idempotently on (origin, seq)."""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from jukinet.domain.errors import InvalidField, ReplayMismatch, SequenceGap
from jukinet.domain.model import EventRow
from jukinet.domain.registry_state import latest_registration_rows
from jukinet.services.ports import AccessEntry, RelayTx

PUSH_METHOD = "/jukinet.wire.v1.RelayService/PushEvents"


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who made the call being served and under which request id."""

    peer: str
    request_id: str
    method: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    acked_seq: int
    applied: int
    duplicates: int


def apply_batch(tx: RelayTx, origin: str, events: Sequence[EventRow], call: CallInfo, now: dt.datetime) -> BatchOutcome:
    """Applies the events past the receiver's cursor; replays are acknowledged without effect.

    Raises SequenceGap if the first new event does not continue the cursor, InvalidField if the batch
    is not consecutive or names another origin, ReplayMismatch if a replayed event is not the one stored.
    Writes events (the next hop's outbox and history), registrations and one access-log entry, all in the
    caller's transaction."""
    cursor = tx.head_seq(origin)
    fresh = [e for e in events if e.seq > cursor]
    for event in events:
        if event.origin != origin:
            raise InvalidField("events", f"event {event.origin}#{event.seq} is not from batch origin {origin}")
    for before, after in pairwise(events):  # the whole batch, replayed part included: a sender's outbox order
        if after.seq != before.seq + 1:
            raise InvalidField("events", f"seq {after.seq} does not follow {before.seq}; send consecutive events")
    if fresh and fresh[0].seq != cursor + 1:
        raise SequenceGap(origin, cursor + 1, fresh[0].seq)
    replayed = [e for e in events if e.seq <= cursor]
    if replayed:  # acknowledged without effect only if it is the very event applied before
        stored = tx.event_rows_at(origin, [e.seq for e in replayed])
        for event in replayed:
            if stored.get(event.seq) != event:
                raise ReplayMismatch(
                    f"event {origin}#{event.seq} differs from the one this node applied under that number; the "
                    "sender's log and this node's diverge: an operator must reconcile them (nothing of this "
                    "batch was applied)"
                )
    if fresh:
        tx.insert_event_rows(fresh)
        tx.upsert_registration_rows(latest_registration_rows(fresh))
    tx.append_access(
        [
            AccessEntry(
                at=now,
                request_id=call.request_id,
                peer=call.peer,
                method=call.method,
                outcome="OK",
                subjects=tuple(e.resident_code for e in events),
            )
        ]
    )
    acked = fresh[-1].seq if fresh else cursor
    return BatchOutcome(acked_seq=acked, applied=len(fresh), duplicates=len(events) - len(fresh))
