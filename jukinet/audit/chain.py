"""The access log's hash chain: a canonical byte encoding of one entry and the chain step.

    d_n = SHA-256(canonical(entry_n))          the entry digest (what a parent is sent: no personal data)
    h_n = SHA-256(h_{n-1} || d_n)              the chain head after n entries; h_0 = 32 zero bytes

`canonical` is a fixed, versioned, length-prefixed layout of the stored column values, so the same bytes
come back from SQLite and PostgreSQL and no dict ordering or JSON escaping can change them:

    0x01                                       version
    at_us                                      8 bytes, big-endian, signed
    request_id, direction, peer, method,       each: 4-byte big-endian length, then UTF-8 bytes
    purpose, subjects, outcome
"""

from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256

VERSION = b"\x01"
DIGEST_SIZE = 32
GENESIS = bytes(DIGEST_SIZE)

# (at_us, request_id, direction, peer, method, purpose, subjects, outcome): the stored column values.
EntryValues = tuple[int, str, str, str, str, str, str, str]
ENTRY_COLUMNS = ("at_us", "request_id", "direction", "peer", "method", "purpose", "subjects", "outcome")


def canonical(values: EntryValues) -> bytes:
    """The canonical bytes of one entry (see the module docstring)."""
    at_us, request_id, direction, peer, method, purpose, subjects, outcome = values
    parts = [VERSION, at_us.to_bytes(8, "big", signed=True)]
    for text in (request_id, direction, peer, method, purpose, subjects, outcome):
        data = text.encode("utf-8")
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    return b"".join(parts)


def entry_digest(values: EntryValues) -> bytes:
    return sha256(canonical(values)).digest()


def step(head: bytes, digest: bytes) -> bytes:
    """One chain step: the head after appending the entry whose digest is given."""
    return sha256(head + digest).digest()


def append(head: bytes, values: EntryValues) -> bytes:
    """The head after appending one entry (what the writer stores as the row's entry_hash)."""
    return sha256(head + sha256(canonical(values)).digest()).digest()


def split_digests(packed: bytes) -> list[bytes]:
    """Concatenated 32-byte digests (the wire form) as a list. Raises ValueError on a bad length."""
    if len(packed) % DIGEST_SIZE:
        raise ValueError(f"{len(packed)} bytes is not a whole number of {DIGEST_SIZE}-byte digests")
    return [packed[i : i + DIGEST_SIZE] for i in range(0, len(packed), DIGEST_SIZE)]


def run(head: bytes, digests: Iterable[bytes]) -> bytes:
    for digest in digests:
        head = sha256(head + digest).digest()
    return head


@dataclass(frozen=True, slots=True)
class Position:
    """A point of a chain: its size (entries so far) and head."""

    size: int
    head: bytes


GENESIS_POSITION = Position(0, GENESIS)


@dataclass(frozen=True, slots=True)
class Extension:
    """The verdict on a submitted checkpoint: None problem means it extends the witnessed one."""

    problem: str | None = None
    resend_from_genesis: bool = False

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_extension(witnessed: Position, base: Position, digests: list[bytes], new: Position) -> Extension:
    """Does `new` extend `witnessed`? The child sends the digests of its entries base.size+1 .. new.size;
    the chain is recomputed from base.head and must pass through witnessed.head at witnessed.size and end
    at new.head. A base past what was witnessed cannot be checked: the child must resend from genesis.

    A problem names what is wrong in words an operator can act on (a consistency failure, not a bad message;
    callers validate sizes, lengths and the base's genesis head before)."""
    if new.size < witnessed.size:
        return Extension(
            f"the log shrank: {new.size} entries now, {witnessed.size} already witnessed (truncated or restored?)"
        )
    if base.size > witnessed.size:
        return Extension(
            f"base {base.size} is past the last witnessed checkpoint ({witnessed.size}); resend from genesis",
            resend_from_genesis=True,
        )
    if len(digests) != new.size - base.size:
        raise ValueError(f"{len(digests)} digests for entries {base.size + 1}..{new.size}")
    head = base.head
    if base.size == witnessed.size and head != witnessed.head:
        return Extension(f"the log at size {base.size} no longer has the witnessed head {witnessed.head.hex()[:16]}…")
    for offset, digest in enumerate(digests, start=base.size + 1):
        head = sha256(head + digest).digest()
        if offset == witnessed.size and head != witnessed.head:
            return Extension(
                f"the log no longer extends the checkpoint witnessed at size {witnessed.size}"
                f" (head {witnessed.head.hex()[:16]}…): its history was rewritten"
            )
    if head != new.head:
        return Extension(
            f"the entries {base.size + 1}..{new.size} do not lead to the signed head {new.head.hex()[:16]}…"
        )
    return Extension()
