"""`jukinet audit verify`'s logic: recompute a node's chain from its rows, check every checkpoint and
countersignature, and compare with the checkpoints its parent witnessed. Stops at the first problem."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography import x509

from jukinet.audit.chain import GENESIS, EntryValues, canonical
from jukinet.audit.checkpoint import SignatureProblem, SignedCheckpoint


@dataclass(frozen=True, slots=True)
class LogRow:
    id: int
    values: EntryValues
    prev_hash: bytes
    entry_hash: bytes


@dataclass
class Report:
    node: str
    entries: int = 0
    checkpoints: int = 0
    countersigned: int = 0
    witnessed: int = 0
    problem: str | None = None
    bad_entry_id: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"BAD: {self.problem}"
        parts = [f"{self.entries} entries", f"{self.checkpoints} checkpoints ({self.countersigned} countersigned)"]
        if self.witnessed:
            parts.append(f"{self.witnessed} checkpoints witnessed by the parent")
        return f"OK: {self.node or 'log'}: " + ", ".join(parts)


def _hex(data: bytes) -> str:
    return data.hex()[:16] + "…"


def verify_log(
    rows: Iterable[LogRow],
    own: Sequence[SignedCheckpoint],
    witnessed: Sequence[SignedCheckpoint] = (),
    *,
    node: str = "",
    ca: x509.Certificate | None = None,
) -> Report:
    """Checks, in order: every row's prev_hash and entry_hash against the recomputed chain (the first bad
    row is reported), then each own checkpoint (signature, countersignature, head at its size), then each
    checkpoint the parent witnessed (both signatures, head at its size)."""
    node = node or (own[0].checkpoint.node if own else "")
    report = Report(node)
    needed = {c.checkpoint.size for c in (*own, *witnessed)}
    heads = {0: GENESIS}
    head = GENESIS
    position = 0
    for row in rows:
        position += 1
        if row.prev_hash != head:
            report.entries, report.bad_entry_id = position, row.id
            report.problem = (
                f"entry id {row.id} (position {position}): its prev_hash {_hex(row.prev_hash)} is not the hash of"
                f" the entry before it ({_hex(head)}): an entry was deleted, inserted or reordered here"
            )
            return report
        head = sha256(head + sha256(canonical(row.values)).digest()).digest()
        if row.entry_hash != head:
            report.entries, report.bad_entry_id = position, row.id
            report.problem = (
                f"entry id {row.id} (position {position}): its content does not match its hash: the entry was changed"
            )
            return report
        if position in needed:
            heads[position] = head
    report.entries = position

    def check(cp: SignedCheckpoint, what: str) -> str | None:
        c = cp.checkpoint
        if node and c.node != node:
            return f"{what} at size {c.size} is of {c.node}, not of {node}"
        try:
            cp.check_signature(ca)
            if cp.countersigned:
                cp.check_countersignature(ca)
        except SignatureProblem as problem:
            return f"{what} at size {c.size}: {problem}"
        if c.size > position:
            return f"{what} at size {c.size}: the log has only {position} entries: its tail was truncated"
        if heads[c.size] != c.head:
            return (
                f"{what} at size {c.size}: the log's head there is {_hex(heads[c.size])}, the signed one"
                f" {_hex(c.head)}: the history before it was rewritten"
            )
        return None

    for cp in own:
        report.problem = check(cp, "checkpoint")
        if report.problem:
            return report
        report.checkpoints += 1
        report.countersigned += 1 if cp.countersigned else 0
    for cp in witnessed:
        if not cp.countersigned:
            report.problem = f"the parent's checkpoint at size {cp.checkpoint.size} carries no countersignature"
            return report
        report.problem = check(cp, f"checkpoint witnessed by {cp.witness}")
        if report.problem:
            return report
        report.witnessed += 1
    last = max((c.checkpoint.size for c in (*own, *witnessed) if c.countersigned), default=0)
    if position > last:
        report.notes.append(f"{position - last} entries after the last countersigned checkpoint are not witnessed yet")
    return report
