"""Hostile values, hypothesis strategies and raw wire encodings for tests/fuzz.

Strategies start from a valid message and replace some fields with hostile values, so that a generated
request gets past the first check often enough to reach the deeper paths (storage, relay, provision)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TypeVar

import grpc
from hypothesis import strategies as st

from jukinet.codes import resident_code_from_body
from jukinet.wire.v1 import register_pb2, types_pb2

T = TypeVar("T")

# Refusals by rule; anything else (INTERNAL, UNKNOWN, UNAVAILABLE after a dropped connection, ...) is a bug.
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
MEGABYTE = "x" * (1 << 20)

SQL = [
    "Robert'); DROP TABLE event;--",
    "' OR '1'='1",
    '"; DELETE FROM registration; --',
    "1; DROP TABLE access_log",
    "%",
    "_%_",
    "\\",
    "山田'--",
]
DATES = [
    "0000-00-00",
    "2100-02-29",
    "1980-02-30",
    "1980-13-01",
    "1849-12-31",
    "9999-12-31",
    "1980-4-1",
    "１９８０-０４-０１",
    "١٩٨٠-٠٤-٠١",
    "1980-04-01\n",
    "1980-04-01T00:00:00",
    "-001-01-01",
    "",
]
CONTROL = [
    "\x00",
    "a\x00b",
    "\x1b[31m",
    "\u202e",
    "\ufeff",
    "\u200b",
    "\r\n",
    "\x7f",
    "\ue000",
    "\U000e0001",
    "\U0010ffff",
    "\u2028",
    " leading",
    "trailing\u3000",
]
LONG = ["x" * 101, "名" * 201, "x" * 65, MEGABYTE]
EXPANDING = ["ß" * 100, "\ufdfa" * 100, "㍻" * 100]  # NFKC/casefold make their search keys longer
DIGITS = ["²" * 11, "١" * 11, "9" * 19, "9" * 20, "-1", "0x10", "1e9", "00000000000"]
POOL = [*SQL, *DATES, *CONTROL, *LONG, *EXPANDING, *DIGITS]

ascii_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
hostile_text = st.one_of(st.text(max_size=40), ascii_text, st.sampled_from(POOL))
hostile_int32 = st.one_of(st.integers(*INT32), st.sampled_from([*INT32, -1, 0, 1, 15, 99]))
hostile_int64 = st.one_of(st.integers(*INT64), st.sampled_from([*INT64, -1, 0, 1, 2**31, 2**53 + 1]))
hostile_date = st.one_of(st.sampled_from(DATES), hostile_text)
# Sizes for repeated fields: small, at and past the 5,000-per-message limit, and 10,000.
big_count = st.sampled_from([5000, 5001, 6000, 10_000])


def code(body: int) -> str:
    return resident_code_from_body(f"{body:010d}")


SEEDED = [code(3000000000 + i) for i in range(1, 4)]  # recorded by the fixture at municipality 132080
UNKNOWN_CODES = [code(9000000000 + i) for i in range(1, 4)]  # never recorded anywhere
RELAYED_CODES = [code(7000000000 + i) for i in range(1, 4)]  # what the fuzzed relay batches carry
VALID_NAME = "山田\u3000太郎"
VALID_ADDRESS = "東京都調布市小島町2丁目35番1号"
PURPOSES = ["pension-benefit", "pension-proof-of-life", "passport-issue", ""]


def maybe(valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Mostly valid, sometimes hostile: a request gets through the first checks often enough."""
    return st.one_of(valid, valid, hostile)


resident_codes = st.one_of(st.sampled_from([*SEEDED, *UNKNOWN_CODES]), hostile_text)
purposes = st.one_of(st.sampled_from(PURPOSES), hostile_text)


def repeated(values: Sequence[T], size: int) -> list[T]:
    """`values` cycled to `size` elements (10,000-element fields without generating 10,000 values)."""
    return [values[i % len(values)] for i in range(size)] if values else []


@st.composite
def identity_items(draw: st.DrawFn) -> types_pb2.IdentityItems:
    return types_pb2.IdentityItems(
        name=draw(maybe(st.sampled_from([VALID_NAME, *SQL]), hostile_text)),
        alias=draw(maybe(st.just(""), hostile_text)),
        birth_date=draw(maybe(st.just("1980-04-01"), hostile_date)),
        sex=draw(maybe(st.sampled_from([1, 2]), hostile_int32)),  # type: ignore[arg-type]
        address=draw(maybe(st.just(VALID_ADDRESS), hostile_text)),
    )


@st.composite
def register_changes(draw: st.DrawFn) -> register_pb2.RegisterChange:
    """A change from the register system; the default is an ex-officio record (the node assigns a code)."""
    pb = register_pb2.RegisterChange(
        request_id=draw(maybe(st.uuids().map(lambda u: u.hex), hostile_text)),
        reason=draw(maybe(st.sampled_from([5, 10, 11, 14]), hostile_int32)),  # type: ignore[arg-type]
        resident_code=draw(maybe(st.sampled_from(["", *SEEDED]), resident_codes)),
        effective_date=draw(maybe(st.just("2026-11-01"), hostile_date)),
    )
    if draw(st.integers(0, 5)):
        pb.items.CopyFrom(draw(identity_items()))
    return pb


@st.composite
def change_events(draw: st.DrawFn, seq: int) -> types_pb2.ChangeEvent:
    """A relayed event, consecutive (seq) unless the draw says otherwise."""
    pb = types_pb2.ChangeEvent(
        seq=draw(maybe(st.just(seq), hostile_int64)),
        resident_code=draw(maybe(st.sampled_from(RELAYED_CODES), resident_codes)),
        previous_code=draw(maybe(st.just(""), resident_codes)),
        reason=draw(maybe(st.sampled_from([5, 10, 14]), hostile_int32)),  # type: ignore[arg-type]
        effective_date=draw(maybe(st.just("2026-11-01"), hostile_date)),
    )
    if draw(st.integers(0, 7)):
        pb.items.CopyFrom(draw(identity_items()))
    if draw(st.integers(0, 7)):
        seconds = draw(maybe(st.just(int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())), hostile_int64))
        pb.recorded_time.seconds = seconds
        pb.recorded_time.nanos = draw(maybe(st.just(0), hostile_int32))
    return pb


# -- raw wire bytes (what protobuf itself would never encode) ------------------------------------------


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


INVALID_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80"]
